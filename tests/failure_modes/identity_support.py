"""Helpers for the identity failure modes (F1, F3, F4, F6, F8): a real `trustplane serve` with
the identity plane on, a registration entry for the test process, and what a verifier outside
trustplane does with the published bundle."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.conftest import SHOP
from tests.support import Server, running_server
from trustplane.identity.kek import new_kek

TRUST_DOMAIN = "example.test"


@contextlib.contextmanager
def identity_server(state: Path, database_url: str, **settings: Any) -> Iterator[Server]:
    """`trustplane serve` of the shop with the identity plane (and a Workload API socket when
    `identity__workload_socket` is given)."""
    state.mkdir(parents=True, exist_ok=True)
    kek = state.parent / f"{state.name}.kek"
    if not kek.exists():
        kek.write_text(new_kek())
        kek.chmod(0o600)
    with running_server(
        state,
        database_url,
        SHOP,
        policy__watch="false",
        identity__trust_domain=TRUST_DOMAIN,
        identity__kek_file=kek,
        **settings,
    ) as server:
        yield server


def register_this_process(server: Server, path: str, owner: str = "team-tests") -> dict[str, Any]:
    """A registration entry that the test process (its uid) matches."""
    response = server.client.post(
        "/v1/identity/entries",
        json={
            "spiffe_id": f"spiffe://{TRUST_DOMAIN}{path}",
            "selectors": [f"unix:uid:{os.getuid()}"],
            "owner": owner,
        },
        headers=server.admin,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def published_authorities(server: Server) -> list[x509.Certificate]:
    """The X.509 authorities in the trust domain's SPIFFE bundle, as a verifier fetches them."""
    bundle = server.client.get("/v1/identity/bundle").json()
    return [
        x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
        for key in bundle["keys"]
        if key["use"] == "x509-svid"
    ]


def chains_to(leaf: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    """Whether `leaf` was signed by one of `authorities` (what a TLS peer checks)."""
    for authority in authorities:
        try:
            leaf.verify_directly_issued_by(authority)
        except Exception:
            continue
        return True
    return False


def metric_samples(server: Server, name: str) -> dict[str, float]:
    """The samples of one metric in `/metrics`, by their label text (`{kind="ca"}` → value)."""
    samples: dict[str, float] = {}
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line[len(name) :].rpartition(" ")
            samples[labels.strip()] = float(value)
    return samples
