"""HTTP face of image attestations: CI states something about an image digest, admission
checks it.

- `POST /v1/attestations`: CI, authenticated with a JWT-SVID of this trust domain (from
  `POST /v1/token`) whose audience includes the server's identity issuer. The token is
  verified against the server's own JWT bundle: an expired, tampered, wrongly addressed or
  foreign token gets 401, a revoked one 403, each as problem+json naming the reason. The
  accepted attestation is countersigned (posture/image_attestations.py), stored, announced on
  the change feed and recorded in the ledger.
- `GET /v1/attestations`: the admin's view, each attestation re-verified as it is listed;
  `DELETE /v1/attestations/{id}` (with a reason) withdraws one, e.g. a build found compromised.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.decision.point import PolicyDecisionPoint
from trustplane.identity.dsse import sign_envelope
from trustplane.identity.service import IdentityService
from trustplane.identity.spiffe_id import SpiffeId, SpiffeIdError
from trustplane.identity.svid import SvidError, ValidatedJwt, validate_jwt_svid
from trustplane.model import AccessRequest, Decision, Effect, EntityRef, new_decision_id
from trustplane.posture.image_attestations import (
    PAYLOAD_TYPE,
    AttestationError,
    AttestationQuery,
    ImageRef,
    build_payload,
    check_predicate_type,
    is_digest,
    read_envelope,
    row_envelope,
    token_fingerprint,
)
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime

REALM = 'Bearer realm="trustplane-attestations"'
QUERY_PARAMS = ("image", "digest", "signer", "predicate_type", "limit")


class AttestBody(BaseModel):
    """An attestation as CI posts it (in-toto names: the statement's subject is `image`)."""

    model_config = ConfigDict(extra="forbid")
    image: StrictStr = Field(
        min_length=1, max_length=2048, description="The image pinned by digest: name@sha256:…"
    )
    predicate_type: StrictStr = Field(
        min_length=1,
        max_length=512,
        description="in-toto predicateType URI, e.g. https://slsa.dev/provenance/v1",
    )
    predicate: dict[str, Any] = Field(
        default_factory=dict, description="The in-toto predicate (e.g. SLSA provenance)."
    )

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        ImageRef.parse(value)
        return value

    @field_validator("predicate_type")
    @classmethod
    def _type_uri(cls, value: str) -> str:
        return check_predicate_type(value)


class AttestationsApi:
    def __init__(self, runtime: Runtime, pdp: PolicyDecisionPoint) -> None:
        self._runtime = runtime
        self._pdp = pdp
        self._limit = runtime.settings.server.max_body_bytes

    def _service(self) -> IdentityService:
        if self._runtime.identity is None:
            raise Problem(
                404,
                "identity-disabled",
                "Identity plane not configured",
                "attestations are signed with the trust domain's keys: set identity.kek_file "
                "(or TRUSTPLANE_IDENTITY__KEK) and run `trustplane init`",
            )
        return self._runtime.identity

    async def create(self, request: Request) -> Response:
        service = self._service()
        token = _bearer(request)
        caller = _verify(service, token)
        spiffe_id = str(caller.spiffe_id)
        jti = caller.claims.get("jti")
        token_id = jti if isinstance(jti, str) else None
        revoked = self._runtime.revocations.credential(token_id)
        if revoked is not None:
            reason = f"credential_revoked: {revoked.target} ({revoked.reason})"
            await self._pdp.refuse(_access(spiffe_id, "", {"token_id": token_id}), reason)
            raise Problem(403, "credential-revoked", "Credential revoked", reason)
        body = parse_model(AttestBody, await read_body(request, self._limit))
        ref = ImageRef.parse(body.image)
        signer = service.keys.jwt_signer
        if signer is None:  # pragma: no cover - load() refuses a trust domain without one
            raise Problem(503, "identity-unavailable", "No signing key", "no active JWT key")
        now = time.time()
        credential = {
            "jti": token_id,
            "sha256": token_fingerprint(token),
            "trust_rule": caller.claims.get("trust_rule"),
            "expires_at": caller.claims.get("exp"),
        }
        payload = build_payload(
            ref, body.predicate_type, body.predicate, spiffe_id, now, credential
        )
        envelope = sign_envelope(PAYLOAD_TYPE, payload, signer.kid, signer.private_key)
        decision = _accepted(now)
        attestation_id = await run_in_threadpool(
            self._runtime.attestation_store.add,
            ref,
            body.predicate_type,
            spiffe_id,
            now,
            decision.decision_id,
            envelope,
        )
        context = {
            "attestation_id": attestation_id,
            "digest": ref.digest,
            "predicate_type": body.predicate_type,
            "token_id": token_id,
            "trust_rule": caller.claims.get("trust_rule"),
        }
        await self._pdp.record(_access(spiffe_id, ref.image, context), decision)
        if self._runtime.attestations is not None:  # this node at once; others by the feed
            await run_in_threadpool(self._runtime.attestations.refresh)
        stored = read_envelope(
            attestation_id, decision.decision_id, envelope, {signer.kid: signer.public_key}
        )
        return json_response(
            stored.as_dict(), 201, headers={"Location": f"/v1/attestations?digest={ref.digest}"}
        )

    async def query(self, request: Request, call: AdminCall) -> Response:
        service = self._service()
        query = _query(request)
        store = self._runtime.attestation_store
        rows = await run_in_threadpool(store.rows, None, query)
        keys = await run_in_threadpool(service.key_store.jwt_verification_keys) if rows else {}
        items: list[dict[str, Any]] = []
        for row in rows:
            try:
                found = read_envelope(row.id, row.decision_id, row_envelope(row), keys)
                items.append({**found.as_dict(), "verified": True})
            except (AttestationError, ValueError) as exc:
                items.append(
                    {
                        "id": row.id,
                        "image": row.image,
                        "digest": row.digest,
                        "signer": row.signer,
                        "predicate_type": row.predicate_type,
                        "attested_at": row.created_at,
                        "decision_id": row.decision_id,
                        "verified": False,
                        "problem": str(exc),
                    }
                )
        return json_response({"attestations": items})

    async def withdraw(self, request: Request, call: AdminCall) -> Response:
        """Withdraw an attestation: its digest stops counting at every node once the change
        feed is heard (at once on this one). The withdrawal is a ledger record."""
        actor = call.caller.name
        self._service()
        body = parse_model(WithdrawBody, await read_body(request, self._limit))
        attestation_id = request.path_params["attestation_id"]
        store = self._runtime.attestation_store
        row = await run_in_threadpool(store.withdraw, attestation_id)
        if row is None:
            raise Problem(
                404, "not-found", "Attestation not found", f"no attestation {attestation_id}"
            )
        context = {"attestation_id": row.id, "signer": row.signer, "reason": body.reason}
        call.note(reason=body.reason, image=row.image, signer=row.signer)
        await self._pdp.record(
            AccessRequest(
                principal=EntityRef("Admin", actor),
                action=EntityRef("Action", "attestation:withdraw"),
                resource=EntityRef("Image", row.image),
                context=context,
            ),
            _accepted(time.time()),
        )
        if self._runtime.attestations is not None:
            await run_in_threadpool(self._runtime.attestations.refresh)
        return json_response(
            {"id": row.id, "image": row.image, "signer": row.signer, "withdrawn": True}
        )


class WithdrawBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: StrictStr = Field(min_length=1, max_length=2000)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "unauthenticated",
            "Authentication required",
            "send Authorization: Bearer <JWT-SVID> (from POST /v1/token, audience: this "
            "server's identity issuer)",
            headers={"WWW-Authenticate": REALM},
        )
    return token.strip()


def _verify(service: IdentityService, token: str) -> ValidatedJwt:
    """The caller's JWT-SVID, verified with this trust domain's JWT bundle for the audience
    `identity.issuer`; a 401 naming the reason otherwise."""
    try:
        return validate_jwt_svid(service.keys, token, service.issuer)
    except SvidError as exc:
        code, detail = exc.code, exc.detail
    if code == "token_unknown_key":
        foreign = _foreign_subject(token, service.trust_domain)
        if foreign is not None:
            code = "wrong_trust_domain"
            detail = (
                f"{foreign} is not in trust domain {service.trust_domain}: only JWT-SVIDs "
                "this trust domain issued can attest"
            )
    elif code == "token_alg_not_allowed":
        detail += "; present a JWT-SVID from POST /v1/token, not the pipeline's own token"
    elif code == "token_wrong_audience":
        detail += f" (ask POST /v1/token for audience {service.issuer}, or for none)"
    raise Problem(
        401,
        "invalid-credential",
        "Credential not accepted",
        f"{code}: {detail}",
        headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
    )


def _foreign_subject(token: str, trust_domain: str) -> str | None:
    """The subject a token claims, when it is a SPIFFE ID of another trust domain: used only to
    word the refusal (the token is refused either way)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        spiffe_id = SpiffeId.parse(str(claims.get("sub", "")))
    except (jwt.PyJWTError, SpiffeIdError):
        return None
    return None if spiffe_id.member_of(trust_domain) else str(spiffe_id)


def _query(request: Request) -> AttestationQuery:
    params = request.query_params
    unknown = sorted(set(params) - set(QUERY_PARAMS))
    if unknown:
        raise _bad_query(unknown[0], f"unknown parameter (known: {', '.join(QUERY_PARAMS)})")
    digest = params.get("digest")
    if "image" in params:
        try:
            digest = ImageRef.parse(params["image"]).digest
        except AttestationError as exc:
            raise _bad_query("image", str(exc)) from None
    if digest is not None and not is_digest(digest):
        raise _bad_query("digest", "must be sha256:<64 lowercase hex>")
    limit = 100
    if "limit" in params:
        if not params["limit"].isdigit() or not 1 <= int(params["limit"]) <= 1000:
            raise _bad_query("limit", "must be a whole number from 1 to 1000")
        limit = int(params["limit"])
    return AttestationQuery(
        digest=digest,
        signer=params.get("signer"),
        predicate_type=params.get("predicate_type"),
        limit=limit,
    )


def _bad_query(name: str, detail: str) -> Problem:
    return Problem(
        400,
        "invalid-query",
        "Invalid query",
        f"{name}: {detail}",
        [{"pointer": name, "detail": detail, "code": "invalid"}],
    )


def _access(spiffe_id: str, image: str, context: dict[str, Any]) -> AccessRequest:
    """The attestation as the ledger records it: a workload stating something about an image."""
    return AccessRequest(
        principal=EntityRef("Service", spiffe_id),
        action=EntityRef("Action", "attestation:create"),
        resource=EntityRef("Image", image or "unknown"),
        context=context,
    )


def _accepted(now: float) -> Decision:
    return Decision(
        decision_id=new_decision_id(),
        effect=Effect.ALLOW,
        reasons=(),
        shadow_effect=Effect.ALLOW,
        shadow_reasons=(),
        shadow_changes=(),
        errors=(),
        revision=None,
        eval_micros=0,
        timestamp=now,
    )


def attestation_routes(api: AttestationsApi, gate: AdminGate) -> list[Route]:
    """CI's own route (its JWT-SVID is checked here), then the admin ones behind the gate."""
    return [
        Route("/v1/attestations", api.create, methods=["POST"]),
        gate.route("GET", "/v1/attestations", api.query, action="attestation:read"),
        gate.route(
            "DELETE",
            "/v1/attestations/{attestation_id}",
            api.withdraw,
            action="attestation:write",
        ),
    ]
