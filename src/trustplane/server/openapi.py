"""The OpenAPI 3.1 document, built from the same pydantic models that validate requests."""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from trustplane import __version__
from trustplane.server.admin import ActivateBody, RollbackBody
from trustplane.server.attestations import AttestBody
from trustplane.server.authzen import EvaluationRequest, EvaluationsRequest

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
    summary: str, *, body: str | None = None, params: list[str] | None = None, method: str = "get"
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": ["admin"],
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
            for m in (EvaluationRequest, EvaluationsRequest, ActivateBody, RollbackBody, AttestBody)
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
    return {
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
            "/v1/admission": {
                "post": {
                    "summary": "Kubernetes validating admission webhook",
                    "description": "admission.k8s.io/v1 AdmissionReview in and out (serve over "
                    "HTTPS: tls_cert_file, tls_key_file). The posture rule packs of the "
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
                "Query recorded decisions",
                params=["principal", "decision", "policy", "shadow_mismatch", "since", "limit"],
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
            "/v1/ledger/checkpoints": _admin("Recent signed checkpoints", params=["limit"]),
            "/v1/ledger/proof/inclusion": _admin(
                "RFC 9162 inclusion proof for a decision", params=["decision_id", "tree_size"]
            ),
            "/v1/ledger/proof/consistency": _admin(
                "RFC 9162 consistency proof", params=["first", "second"]
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "jwtSvid": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT-SVID"},
            },
        },
    }
