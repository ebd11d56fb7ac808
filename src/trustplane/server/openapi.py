"""The OpenAPI 3.1 document, built from the same pydantic models that validate requests."""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from trustplane import __version__
from trustplane.server.admin.bundle import ActivateBody, RollbackBody
from trustplane.server.admin.governance import (
    AccessRequestBody,
    BreakGlassBody,
    CommentBody,
    ExceptionBody,
    ReasonBody,
    ReviewBody,
)
from trustplane.server.admin.identity import EntryBody, RotateBody
from trustplane.server.admin.ledger import CHECKPOINT_PARAMS, DECISION_PARAMS, PAGE_PARAMS
from trustplane.server.admin.revocations import LiftBody, RevokeBody
from trustplane.server.admin.rollout import LabelBody
from trustplane.server.admin_gate import admin_route
from trustplane.server.authzen import EvaluationRequest, EvaluationsRequest
from trustplane.server.image_attestations import AttestBody

_REF = "#/components/schemas/{model}"


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}},
    }


_PROBLEM = {
    "description": "RFC 9457 problem details",
    "content": {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}},
}


def _admin(
    summary: str,
    *,
    body: str | None = None,
    params: list[str] | None = None,
    method: str = "get",
    tag: str = "admin",
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "security": [{"adminToken": []}],
        "responses": {"200": {"description": "OK"}, "401": _PROBLEM, "4XX": _PROBLEM},
    }
    if body:
        operation["requestBody"] = {
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body)}}}
        }
    if params:
        operation["parameters"] = [
            {"name": p, "in": "query", "schema": {"type": "string"}} for p in params
        ]
    return {method: operation}


@functools.cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (m, "validation")
            for m in (
                EvaluationRequest,
                EvaluationsRequest,
                ActivateBody,
                RollbackBody,
                RevokeBody,
                LiftBody,
                AttestBody,
                AccessRequestBody,
                CommentBody,
                ReasonBody,
                BreakGlassBody,
                ReviewBody,
                ExceptionBody,
                EntryBody,
                RotateBody,
                LabelBody,
            )
        ],
        ref_template=_REF.replace("{model}", "{model}"),
    )
    components = dict(schemas.get("$defs", {}))
    components["Problem"] = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "pointer": {"type": "string"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                    },
                },
            },
        },
    }
    components["EvaluationResponse"] = {
        "type": "object",
        "required": ["decision"],
        "properties": {"decision": {"type": "boolean"}, "context": {"type": "object"}},
    }
    components["EvaluationsResponse"] = {
        "type": "object",
        "properties": {
            "evaluations": {
                "type": "array",
                "items": {"$ref": _REF.format(model="EvaluationResponse")},
            }
        },
    }
    evaluation_body = {
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="EvaluationRequest")}}
        }
    }
    evaluations_body = {
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="EvaluationsRequest")}}
        }
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "trustplane",
            "version": __version__,
            "description": "Policy decisions (OpenID AuthZEN 1.0) and the admin API.",
        },
        "paths": {
            "/access/v1/evaluation": {
                "post": {
                    "summary": "Evaluate one access request (AuthZEN)",
                    "tags": ["authzen"],
                    "requestBody": evaluation_body,
                    "responses": {"200": _json("EvaluationResponse"), "4XX": _PROBLEM},
                }
            },
            "/access/v1/evaluations": {
                "post": {
                    "summary": "Evaluate several access requests (AuthZEN)",
                    "tags": ["authzen"],
                    "requestBody": evaluations_body,
                    "responses": {"200": _json("EvaluationsResponse"), "4XX": _PROBLEM},
                }
            },
            "/v1/forward-auth": {
                method: {
                    "summary": "Forward-auth for nginx, Traefik and Caddy",
                    "description": "Judges the original request the proxy describes in "
                    "X-Original-* or X-Forwarded-* headers (believed only from trusted "
                    "proxies). 200 allows, with X-Auth-Request-User and "
                    "X-Trustplane-Decision-Id; 401 carries WWW-Authenticate; 403 a JSON body "
                    "with the decision id and reason codes.",
                    "tags": ["enforcement"],
                    "responses": {
                        "200": {"description": "Allowed"},
                        "401": {"description": "No valid credential"},
                        "403": {"description": "Denied"},
                    },
                }
                for method in ("get", "post", "put", "patch", "delete", "head", "options")
            },
            **{
                path: {
                    method: {
                        "summary": "Envoy ext_authz, HTTP mode",
                        "description": "Envoy sends the held request's method, path (after "
                        "`path_prefix: /v1/envoy/http`) and headers. 200 allows (with "
                        "x-envoy-auth-headers-to-remove when pep.strip_credential is on); any "
                        "other status is the answer Envoy gives the client.",
                        "tags": ["enforcement"],
                        "responses": {
                            "200": {"description": "Allowed"},
                            "401": {"description": "No valid credential"},
                            "403": {"description": "Denied"},
                        },
                    }
                    for method in ("get", "post", "put", "patch", "delete", "options")
                }
                for path in ("/v1/envoy/http", "/v1/envoy/http/{path}")
            },
            "/v1/admission": {
                "post": {
                    "summary": "Kubernetes validating admission webhook",
                    "description": "admission.k8s.io/v1 AdmissionReview in and out (serve over "
                    "HTTPS: tls.cert_file, tls.key_file). The posture rule packs of the "
                    "request's namespace decide `allowed`; refusals carry status 403 listing "
                    "each failed rule, warn-mode findings come back as `warnings`. Every "
                    "review except a dry run is recorded in the decision ledger.",
                    "tags": ["enforcement"],
                    "responses": {
                        "200": {"description": "AdmissionReview with the response"},
                        "4XX": _PROBLEM,
                    },
                }
            },
            "/v1/attestations": {
                "post": {
                    "summary": "Attest an image digest (CI)",
                    "description": "Authorization: Bearer <JWT-SVID of this trust domain, "
                    "audience: the server's identity issuer>. The server countersigns the "
                    "in-toto statement (a DSSE envelope), stores it and records it in the "
                    "ledger; admission's zero-trust/image-attested admits the digest. 401 for "
                    "an invalid, expired, foreign or wrongly addressed token, 403 when revoked.",
                    "tags": ["attestations"],
                    "security": [{"jwtSvid": []}],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(model="AttestBody")}
                            }
                        }
                    },
                    "responses": {
                        "201": {"description": "The attestation with its envelope"},
                        "401": _PROBLEM,
                        "403": _PROBLEM,
                        "4XX": _PROBLEM,
                    },
                },
                **_admin(
                    "Recorded attestations, each re-verified",
                    params=["image", "digest", "signer", "predicate_type", "limit"],
                ),
            },
            "/v1/attestations/{attestation_id}": {
                "delete": {
                    **_admin('Withdraw an attestation (body: {"reason": …})')["get"],
                    "parameters": [
                        {
                            "name": "attestation_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                }
            },
            "/.well-known/authzen-configuration": {
                "get": {
                    "summary": "PDP metadata (AuthZEN)",
                    "tags": ["authzen"],
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "OK"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness (an active bundle)",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "OK"}},
                }
            },
            "/v1/bundle": _admin("Active bundle, its policies and the last load error"),
            "/v1/bundle/revisions": _admin("Activation history"),
            "/v1/bundle/reload": _admin("Reload the bundle directory", method="post"),
            "/v1/bundle/activate": _admin(
                "Activate a stored revision", body="ActivateBody", method="post"
            ),
            "/v1/bundle/rollback": _admin(
                "Return to the previous revision", body="RollbackBody", method="post"
            ),
            "/v1/decisions": _admin(
                "Query recorded decisions (newest first), each with its reason code and "
                'determining policies. principal, action, resource: Type::"id" or an id of '
                "any type; since, until: RFC 3339, a duration before now (15m, 2h, 7d) or a "
                "UNIX timestamp; kind: decision or admin",
                params=list(DECISION_PARAMS),
            ),
            "/v1/decisions/{decision_id}": {
                "get": {
                    **_admin("One recorded decision")["get"],
                    "parameters": [
                        {
                            "name": "decision_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                }
            },
            "/v1/ledger/checkpoint": _admin("Latest signed checkpoint"),
            "/v1/ledger/checkpoints": _admin(
                "Recent signed checkpoints; with from_size, a page in size order",
                params=list(CHECKPOINT_PARAMS),
            ),
            "/v1/ledger/records": _admin(
                "A page of stored records in ledger order (query columns, record and leaf "
                "hash in base64): what a remote audit verify checks",
                params=list(PAGE_PARAMS),
            ),
            "/v1/ledger/quarantine": _admin(
                "A page of quarantined records (refused by the store as rows; their leaves "
                "stay in the tree)",
                params=list(PAGE_PARAMS),
            ),
            "/v1/ledger/proof/inclusion": _admin(
                "RFC 9162 inclusion proof for a decision", params=["decision_id", "tree_size"]
            ),
            "/v1/ledger/proof/consistency": _admin(
                "RFC 9162 consistency proof", params=["first", "second"]
            ),
            "/v1/revocations": {
                **_admin(
                    "Revoke a principal, credential, certificate, grant, exception or session",
                    body="RevokeBody",
                    method="post",
                ),
                **_admin(
                    "Revocations in force (ended=true: lifted and expired ones too), with the "
                    "revocation epoch",
                    params=["ended"],
                ),
            },
            "/v1/revocations/{revocation_id}/lift": _admin(
                "Lift a revocation in force (by id or a unique id prefix)",
                body="LiftBody",
                method="post",
            ),
            "/v1/rollout/status": _admin(
                "Every observe-mode policy against its promotion gate (rollout.yaml): days "
                "observed, decisions, would-denies, labels, false-positive rate with its 95% "
                "Wilson interval, attributable share, and each reason the gate fails",
                tag="rollout",
            ),
            "/v1/rollout/policies/{policy_id}/queue": _admin(
                "Unlabelled would-denies of an observe-mode policy, stratified by principal "
                "and resource, each with its explanation",
                params=["limit"],
                tag="rollout",
            ),
            "/v1/rollout/labels": _admin(
                "Label would-denies true or false positives (by id or unique id prefix, or "
                "every unlabelled one of a principal); recorded in the ledger with the note",
                body="LabelBody",
                method="post",
                tag="rollout",
            ),
            "/v1/scorecard": _admin(
                "The month's Zero Trust scorecard (period YYYY-MM, default this month): each "
                "figure with its target, verdict, evidence and reproducing query, and a CISA "
                "ZTMM v2 stage per pillar; format json (default), md or html",
                params=["period", "format"],
                tag="scorecard",
            ),
            "/v1/scorecard/snapshots": _admin(
                "Compute a month's scorecard and store it as that month's snapshot (trends)",
                params=["period"],
                method="post",
                tag="scorecard",
            ),
            **_governance_paths(),
            **_identity_paths(),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "jwtSvid": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT-SVID"},
                "pepToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A PEP's token (trustplane pep add) or JWT-SVID (audience "
                    "pep.audience).",
                },
                "pepHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Trustplane-PEP-Authorization",
                    "description": "`Bearer <PEP token or JWT-SVID>` where Authorization is "
                    "the end user's (forward-auth, Envoy HTTP).",
                },
                "pepMtls": {
                    "type": "mutualTLS",
                    "description": "A client certificate of a registered SPIFFE ID.",
                },
            },
        },
    }
    _declare_path_parameters(document["paths"])
    _pep_security(document["paths"])
    _name_admin_actions(document["paths"])
    return document


def _pep_security(paths: dict[str, Any]) -> None:
    """The decision endpoints answer registered PEPs when pep.auth asks (`{}`: none needed
    when it is off); a refused PEP gets a 401 problem document."""
    for path, header in (
        ("/access/v1/evaluation", "pepToken"),
        ("/access/v1/evaluations", "pepToken"),
        ("/v1/admission", "pepToken"),
        ("/v1/forward-auth", "pepHeader"),
        ("/v1/envoy/http", "pepHeader"),
        ("/v1/envoy/http/{path}", "pepHeader"),
    ):
        for operation in paths[path].values():
            operation["security"] = [{}, {header: []}, {"pepMtls": []}]
            operation["responses"].setdefault("401", _PROBLEM)


def _name_admin_actions(paths: dict[str, Any]) -> None:
    """Each admin operation names the admin action the gate asks Cedar about, from the gate's
    own table (server/admin_gate.py), so the document and the gate cannot disagree."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            route = admin_route(method, path)
            if route is not None:
                operation["x-trustplane-admin-action"] = route.action


def _governance_paths() -> dict[str, Any]:
    """JIT access, break-glass and the exception register (server/admin/governance.py)."""

    def op(summary: str, **kwargs: Any) -> dict[str, Any]:
        return _admin(summary, tag="governance", **kwargs)

    return {
        "/v1/access/requests": {
            **op("Request a role for a while", body="AccessRequestBody", method="post"),
            **op("Access requests", params=["status"]),
        },
        "/v1/access/requests/{request_id}": op("One access request and its approvals"),
        "/v1/access/requests/{request_id}/approve": op(
            "Approve (never your own request)", body="CommentBody", method="post"
        ),
        "/v1/access/requests/{request_id}/deny": op(
            "Deny, with a reason", body="ReasonBody", method="post"
        ),
        "/v1/access/grants": op("Grants, active and past", params=["active"]),
        "/v1/access/grants/{grant_id}/revoke": op(
            "End a grant now", body="ReasonBody", method="post"
        ),
        "/v1/access/grants/{grant_id}/activity": op("Decisions made under a grant"),
        "/v1/break-glass": {
            **op("Open a break-glass session", body="BreakGlassBody", method="post"),
            **op("Break-glass sessions", params=["overdue"]),
        },
        "/v1/break-glass/{session_id}/review": op(
            "Close a session's review (not its opener)", body="ReviewBody", method="post"
        ),
        "/v1/exceptions": {
            **op("Propose an exception to one forbid policy", body="ExceptionBody", method="post"),
            **op("The exception register", params=["status", "expiring"]),
        },
        "/v1/exceptions/{exception_id}/approve": op(
            "Approve an exception", body="CommentBody", method="post"
        ),
        "/v1/exceptions/{exception_id}/revoke": op(
            "End an exception now", body="ReasonBody", method="post"
        ),
    }


def _identity_paths() -> dict[str, Any]:
    """The identity plane's HTTP surface (server/identity.py)."""

    def public(summary: str) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "tags": ["identity"],
                "responses": {"200": {"description": "OK"}},
            }
        }

    def op(summary: str, **kwargs: Any) -> dict[str, Any]:
        return _admin(summary, tag="identity", **kwargs)

    return {
        "/v1/identity/bundle": public(
            "The trust domain's SPIFFE bundle (JWKS with x509-svid keys)"
        ),
        "/.well-known/openid-configuration": public("OIDC discovery for JWT-SVID verifiers"),
        "/v1/identity/jwks": public("The JWT-SVID signing keys"),
        "/v1/token": {
            "post": {
                "summary": "RFC 8693 token exchange: a CI or workload token for a JWT-SVID",
                "tags": ["identity"],
                "requestBody": {
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["grant_type", "subject_token", "subject_token_type"],
                                "properties": {
                                    "grant_type": {"type": "string"},
                                    "subject_token": {"type": "string"},
                                    "subject_token_type": {"type": "string"},
                                    "audience": {"type": "string"},
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "200": {"description": "The issued token (RFC 8693 section 2.2.1)"},
                    "400": {"description": "RFC 6749 error: invalid_request, invalid_grant, …"},
                },
            }
        },
        "/v1/identity/entries": {
            **op("Register a workload (SPIFFE ID and selectors)", body="EntryBody", method="post"),
            **op("Registration entries"),
        },
        "/v1/identity/entries/{entry_id}": op("Remove a registration entry", method="delete"),
        "/v1/identity/keys": op("The CA and JWT keys and their rotation states"),
        "/v1/identity/rotate": op(
            "Prepare, activate or retire a key", body="RotateBody", method="post"
        ),
        "/v1/identity/inventory": op("Identities issued and seen, with flags"),
    }


def _declare_path_parameters(paths: dict[str, Any]) -> None:
    """Every `{name}` in a path is a required string parameter of each of its operations."""
    for path, operations in paths.items():
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        for operation in operations.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            missing = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in names
                if n not in declared
            ]
            if missing:
                operation["parameters"] = [*operation.get("parameters", []), *missing]
