"""OpenID AuthZEN Authorization API 1.0 over HTTP: evaluation, evaluations, metadata.

Mapping: subject{type,id,properties} → principal `type::"id"`; action{name} → `Action::"name"`;
resource{type,id,properties} → resource; context → Cedar context. Decision details (id, reasons,
shadow, errors, revision) go in the response `context`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.requests import Request
from starlette.responses import Response

from trustplane.decision.requests import RequestError, check_values
from trustplane.model import AccessRequest, Decision, EntityRef
from trustplane.problems import Problem, json_response, parse_model, read_body

MAX_EVALUATIONS = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Subject(_Strict):
    type: StrictStr = Field(min_length=1, max_length=256)
    id: StrictStr = Field(min_length=1, max_length=1024)
    properties: dict[str, Any] | None = None


class Resource(_Strict):
    type: StrictStr = Field(min_length=1, max_length=256)
    id: StrictStr = Field(min_length=1, max_length=1024)
    properties: dict[str, Any] | None = None


class Action(_Strict):
    name: StrictStr = Field(min_length=1, max_length=256)
    properties: dict[str, Any] | None = None


class EvaluationRequest(_Strict):
    subject: Subject
    action: Action
    resource: Resource
    context: dict[str, Any] | None = None


class Semantic(StrEnum):
    EXECUTE_ALL = "execute_all"
    DENY_ON_FIRST_DENY = "deny_on_first_deny"
    PERMIT_ON_FIRST_PERMIT = "permit_on_first_permit"


class EvaluationsOptions(_Strict):
    evaluations_semantic: Semantic = Semantic.EXECUTE_ALL


class EvaluationItem(_Strict):
    subject: Subject | None = None
    action: Action | None = None
    resource: Resource | None = None
    context: dict[str, Any] | None = None


class EvaluationsRequest(_Strict):
    subject: Subject | None = None
    action: Action | None = None
    resource: Resource | None = None
    context: dict[str, Any] | None = None
    evaluations: list[EvaluationItem] | None = Field(None, max_length=MAX_EVALUATIONS)
    options: EvaluationsOptions | None = None


def to_access_request(
    subject: Subject, action: Action, resource: Resource, context: dict[str, Any] | None
) -> AccessRequest:
    return AccessRequest(
        principal=EntityRef(subject.type, subject.id, subject.properties),
        action=EntityRef("Action", action.name),
        resource=EntityRef(resource.type, resource.id, resource.properties),
        context=context or {},
    )


def check_recordable(
    where: str,
    subject: Subject | None,
    action: Action | None,
    resource: Resource | None,
    context: dict[str, Any] | None,
) -> None:
    """A 422 naming the member (`context.n`, pointer `/context/n`) of any value a decision could
    not be recorded with (an integer beyond 64 bits); called while parsing, before anything is
    evaluated, so a refused batch is refused whole and nothing of it is counted or recorded."""
    prefix = where + "." if where else ""
    parts: list[tuple[str, Any]] = [
        ("subject", subject.properties if subject else None),
        ("action", action.properties if action else None),
        ("resource", resource.properties if resource else None),
    ]
    try:
        for name, properties in parts:
            if properties:
                check_values(
                    properties, f"{prefix}{name}.properties", f"{_ptr(where)}/{name}/properties"
                )
        if context:
            check_values(context, f"{prefix}context", f"{_ptr(where)}/context")
    except RequestError as exc:
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            str(exc),
            [{"pointer": exc.pointer or "", "detail": exc.message, "code": "unrecordable_value"}],
        ) from None


def _ptr(where: str) -> str:
    """`evaluations[2]` → `/evaluations/2`."""
    return "".join("/" + part.rstrip("]") for part in where.replace("[", ".").split(".") if part)


def decision_body(decision: Decision) -> dict[str, Any]:
    details = decision.as_dict()
    allowed = details.pop("decision") == "allow"
    return {"decision": allowed, "context": details}


class AuthZenApi:
    def __init__(self, pdp: Any, max_body_bytes: int) -> None:
        self._pdp = pdp
        self._limit = max_body_bytes

    async def evaluation(self, request: Request) -> Response:
        body = parse_model(EvaluationRequest, await read_body(request, self._limit))
        check_recordable("", body.subject, body.action, body.resource, body.context)
        decision = await self._pdp.decide(
            to_access_request(body.subject, body.action, body.resource, body.context)
        )
        return json_response(decision_body(decision), headers=_echo_request_id(request))

    async def evaluations(self, request: Request) -> Response:
        body = parse_model(EvaluationsRequest, await read_body(request, self._limit))
        items = body.evaluations or [EvaluationItem()]
        semantic = body.options.evaluations_semantic if body.options else Semantic.EXECUTE_ALL
        check_recordable("", body.subject, body.action, body.resource, body.context)
        requests = []
        for index, item in enumerate(items):  # resolve defaults first: all-or-nothing on errors
            if body.evaluations:
                where = f"evaluations[{index}]"
                check_recordable(where, item.subject, item.action, item.resource, item.context)
            subject = item.subject or body.subject
            action = item.action or body.action
            resource = item.resource or body.resource
            missing = [
                name
                for name, value in (
                    ("subject", subject),
                    ("action", action),
                    ("resource", resource),
                )
                if value is None
            ]
            if missing:
                pointer = f"/evaluations/{index}/{missing[0]}"
                raise Problem(
                    422,
                    "invalid-request",
                    "Invalid request",
                    f"{pointer}: field required (no top-level default either)",
                    [{"pointer": pointer, "detail": "field required", "code": "missing"}],
                )
            assert subject is not None and action is not None and resource is not None
            context = item.context if item.context is not None else body.context
            requests.append(to_access_request(subject, action, resource, context))
        results = []
        for access_request in requests:
            decision = await self._pdp.decide(access_request)
            results.append(decision_body(decision))
            if semantic is Semantic.DENY_ON_FIRST_DENY and not decision.allowed:
                break
            if semantic is Semantic.PERMIT_ON_FIRST_PERMIT and decision.allowed:
                break
        return json_response({"evaluations": results}, headers=_echo_request_id(request))

    async def configuration(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return json_response(
            {
                "policy_decision_point": base,
                "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
                "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
            }
        )


def _echo_request_id(request: Request) -> dict[str, str] | None:
    request_id = request.headers.get("x-request-id")
    return {"X-Request-ID": request_id[:200]} if request_id else None
