"""Workload integrity: whether a SPIFFE workload calling was attested by this trust domain's
Workload API, and whether the image it runs carries a recorded attestation.

Both answers come from memory other planes keep current through the change feed, injected as
callables so the trust plane imports neither (server/runtime.py wires them):

- `drift(spiffe_id)`: identity/service.py's drift check — None when a registration entry names
  the ID (the Workload API issues it only to a process whose kernel-attested selectors match
  that entry), `unregistered` (no entry names it: minted elsewhere, or its entry was deleted
  while its SVIDs live on) or `foreign_trust_domain`;
- `digests(spiffe_id)`: the image digests the entries naming the ID pin in their selectors
  (`…@sha256:<hex>`, `…:sha256:<hex>`; `unix:sha256:` is an executable's hash and counts too);
- `attested(digest)`: the signers of the verified attestations of a digest
  (posture/image_attestations.py's `AttestationIndex`).

`workload_integrity` is 1 for a workload the Workload API did not attest, `unattested_image`
(0.5) when it is attested but no digest it runs has an attestation by an allowed signer (or no
entry pins a digest, unless `require_image` is 0), 0 otherwise. People have no workload: 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from trustplane.trust.signals import Signal, TrustInputs, constant_signal

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})$")


def selector_digests(selectors: Sequence[str]) -> tuple[str, ...]:
    """The sha256 digests registration-entry selectors pin (`k8s:image:repo@sha256:…`,
    `docker:image_id:sha256:…`, `unix:sha256:…`), as `sha256:<hex>`."""
    found = []
    for selector in selectors:
        match = _DIGEST.search(selector)
        if match is not None:
            found.append(f"sha256:{match.group(1)}")
    return tuple(dict.fromkeys(found))


def _allowed(signer: str, patterns: Sequence[str]) -> bool:
    if not patterns:
        return True
    return any(signer.startswith(p[:-1]) if p.endswith("*") else signer == p for p in patterns)


class WorkloadSignals:
    names: tuple[str, ...] = ("workload_integrity",)
    params: Mapping[str, Mapping[str, Any]] = {
        "workload_integrity": {"unattested_image": 0.5, "require_image": 1, "signers": []}
    }
    fractions: Mapping[str, tuple[str, ...]] = {
        "workload_integrity": ("unattested_image", "require_image")
    }

    def __init__(
        self,
        drift: Callable[[str], str | None] | None,
        digests: Callable[[str], tuple[str, ...]] | None,
        attested: Callable[[str], tuple[str, ...]] | None,
    ) -> None:
        """All None: this server runs no identity plane, so it attests nothing."""
        self._drift = drift
        self._digests = digests
        self._attested = attested

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterator[Signal]:
        if "workload_integrity" not in wanted:
            return
        name = "workload_integrity"
        if not inputs.workload:
            yield constant_signal(name, 0.0, "not a workload", inputs.source)
            return
        spiffe_id = inputs.subject
        if not spiffe_id or not spiffe_id.startswith("spiffe://"):
            yield Signal(name, 1.0, None, "a workload without a SPIFFE ID", inputs.source)
            return
        source = "identity"
        if self._drift is None:
            yield Signal(
                name,
                1.0,
                {"spiffe_id": spiffe_id},
                "not attested: this server runs no Workload API (identity plane not configured)",
                source,
            )
            return
        drift = self._drift(spiffe_id)
        if drift is not None:
            why = (
                "no registration entry names it: the Workload API did not attest it"
                if drift == "unregistered"
                else "of another trust domain: not attested here"
            )
            yield Signal(name, 1.0, {"spiffe_id": spiffe_id, "drift": drift}, why, source)
            return
        digests = self._digests(spiffe_id) if self._digests is not None else ()
        signers = [str(s) for s in inputs.param(name, "signers", [])]
        partial = min(1.0, float(inputs.param(name, "unattested_image", 0.5)))
        observed: dict[str, Any] = {"spiffe_id": spiffe_id, "digests": list(digests)}
        if not digests:
            required = bool(inputs.param(name, "require_image", 1))
            yield Signal(
                name,
                partial if required else 0.0,
                observed,
                "attested by the Workload API; no entry pins an image digest",
                source,
            )
            return
        for digest in digests:
            found = self._attested(digest) if self._attested is not None else ()
            by = [s for s in found if _allowed(s, signers)]
            if by:
                observed["attested_by"] = sorted(set(by))
                yield Signal(
                    name,
                    0.0,
                    observed,
                    f"attested by the Workload API; {digest[:19]}… attested by {by[0]}",
                    source,
                )
                return
        yield Signal(
            name,
            partial,
            observed,
            f"attested by the Workload API; no recorded attestation of {digests[0][:19]}…"
            + (f" by {', '.join(signers)}" if signers else ""),
            source,
        )
