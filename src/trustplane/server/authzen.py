"""OpenID AuthZEN Authorization API 1.0 over HTTP: evaluation, evaluations, the three searches
(subject, resource, action; answered by outcomes/search.py over the known universe), metadata.

Mapping: subject{type,id,properties} → principal `type::"id"`; action{name} → `Action::"name"`;
resource{type,id,properties} → resource; context → Cedar context. Decision details (id, reasons,
shadow, errors, revision) go in the response `context`.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from enum import StrEnum
from typing import Any, TypeGuard

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from trustplane.decision.requests import RequestError, check_values
from trustplane.model import AccessRequest, Decision, EntityRef
from trustplane.outcomes.search import Query, SearchError, search
from trustplane.problems import Problem, json_response, parse_model, read_body, too_large
from trustplane.telemetry.ledger import search_entry

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


class PageRequest(_Strict):
    """AuthZEN's paginated request: `token` (a previous response's `next_token`), `limit`,
    implementation-specific `properties` (none are read here)."""

    token: StrictStr | None = Field(None, max_length=4096)
    limit: int | None = Field(None, ge=1, le=1000)
    properties: dict[str, Any] | None = None


class SearchSubject(_Strict):
    """A search's subject: the type is required; the id, when the subject is searched for,
    may be omitted and is ignored."""

    type: StrictStr = Field(min_length=1, max_length=256)
    id: StrictStr | None = Field(None, min_length=1, max_length=1024)
    properties: dict[str, Any] | None = None


class SubjectSearchRequest(_Strict):
    subject: SearchSubject
    action: Action
    resource: Resource
    context: dict[str, Any] | None = None
    page: PageRequest | None = None


class ResourceSearchRequest(_Strict):
    subject: Subject
    action: Action
    resource: SearchSubject
    context: dict[str, Any] | None = None
    page: PageRequest | None = None


class ActionSearchRequest(_Strict):
    subject: Subject
    resource: Resource
    context: dict[str, Any] | None = None
    page: PageRequest | None = None


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


_BODY_KEYS = frozenset({"subject", "action", "resource", "context"})
_ENTITY_KEYS = frozenset({"type", "id", "properties"})
_ACTION_KEYS = frozenset({"name", "properties"})
# Integers orjson would read as floats (beyond 64 bits) while pydantic keeps them exact.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
# Far below pydantic's nesting limit (about 200), so no body it refuses as too deep passes here.
_MAX_CONTAINERS = 64


def plain_evaluation(body: bytes) -> AccessRequest | None:
    """The request of an evaluation body in the everyday shape, read without pydantic: None
    when anything about the body needs `EvaluationRequest`'s validation (a missing or unknown
    member, a wrong type or length, an integer a decision cannot record, deep nesting, text
    orjson refuses ...), which then answers exactly as it always did. Accepts only bodies that
    validation accepts, and builds the same request from them."""
    if (
        body.count(b"{") + body.count(b"[") > _MAX_CONTAINERS
        or _LONG_DIGITS.search(body) is not None
    ):
        return None
    try:
        document = orjson.loads(body)
        # check_recordable's own test: every integer within 53 bits, every string UTF-8.
        orjson.dumps(document, option=orjson.OPT_STRICT_INTEGER)
    except (ValueError, TypeError):
        return None
    if type(document) is not dict or not document.keys() <= _BODY_KEYS:
        return None
    subject = _plain_entity(document.get("subject"))
    resource = _plain_entity(document.get("resource"))
    action = document.get("action")
    context = document.get("context")
    if (
        subject is None
        or resource is None
        or type(action) is not dict
        or not action.keys() <= _ACTION_KEYS
        or not _plain_text(action.get("name"), 256)
        or not _object_or_none(action.get("properties"))
        or not _object_or_none(context)
    ):
        return None
    return AccessRequest(
        principal=subject,
        action=EntityRef("Action", action["name"]),
        resource=resource,
        context=context or {},
    )


def _plain_entity(value: Any) -> EntityRef | None:
    if type(value) is not dict or not value.keys() <= _ENTITY_KEYS:
        return None
    kind, name, properties = value.get("type"), value.get("id"), value.get("properties")
    if not _plain_text(kind, 256) or not _plain_text(name, 1024):
        return None
    if not _object_or_none(properties):
        return None
    return EntityRef(kind, name, properties)


def _plain_text(value: Any, limit: int) -> TypeGuard[str]:
    return type(value) is str and 0 < len(value) <= limit


def _object_or_none(value: Any) -> bool:
    return value is None or type(value) is dict


def decision_body(decision: Decision) -> dict[str, Any]:
    details = decision.as_dict()
    allowed = details.pop("decision") == "allow"
    return {"decision": allowed, "context": details}


class AuthZenApi:
    def __init__(self, pdp: Any, max_body_bytes: int, universe: Any = None) -> None:
        """`universe`: outcomes/universe.KnownUniverse, what searches enumerate (searches are
        not offered without one)."""
        self._pdp = pdp
        self._limit = max_body_bytes
        self._universe = universe
        self.evaluation_app = EvaluationApp(pdp, max_body_bytes)

    async def search_subject(self, request: Request) -> Response:
        body = parse_model(SubjectSearchRequest, await read_body(request, self._limit))
        subject = EntityRef(body.subject.type, body.subject.id or "*", body.subject.properties)
        resource = EntityRef(body.resource.type, body.resource.id, body.resource.properties)
        check_recordable("", None, body.action, None, body.context)
        query = Query("subject", subject, body.action.name, resource, body.context or {})
        return await self._search(request, query, body.page)

    async def search_resource(self, request: Request) -> Response:
        body = parse_model(ResourceSearchRequest, await read_body(request, self._limit))
        subject = EntityRef(body.subject.type, body.subject.id, body.subject.properties)
        resource = EntityRef(body.resource.type, body.resource.id or "*", body.resource.properties)
        check_recordable("", body.subject, body.action, None, body.context)
        query = Query("resource", subject, body.action.name, resource, body.context or {})
        return await self._search(request, query, body.page)

    async def search_action(self, request: Request) -> Response:
        body = parse_model(ActionSearchRequest, await read_body(request, self._limit))
        subject = EntityRef(body.subject.type, body.subject.id, body.subject.properties)
        resource = EntityRef(body.resource.type, body.resource.id, body.resource.properties)
        check_recordable("", body.subject, None, body.resource, body.context)
        query = Query("action", subject, None, resource, body.context or {})
        return await self._search(request, query, body.page)

    async def _search(self, request: Request, query: Query, page: PageRequest | None) -> Response:
        """Evaluate the page's candidates off the event loop, record the page, answer it."""
        if self._universe is None:
            raise Problem(404, "not-found", "Not found", "search is not offered by this PDP")
        pdp = self._pdp
        started = time.perf_counter_ns()

        def run() -> Any:
            universe = self._universe.current()
            return search(
                query,
                universe,
                lambda r: pdp.evaluate(r, observe=False),
                page.limit if page else None,
                page.token if page else None,
            )

        try:
            # Thread, not loop: a page may evaluate thousands of candidates.
            answered = await asyncio.to_thread(contextvars.copy_context().run, run)
        except SearchError as exc:
            raise Problem(400, "invalid-request", "Invalid request", str(exc)) from None
        bundle = pdp.active_bundle()
        asked = query.request_for("*")  # the searched member, whatever was sent, is `*`
        await pdp.record_entry(
            search_entry(
                query.kind,
                asked,
                pdp.masker,
                answered.results,
                answered.next_token,
                answered.evaluated,
                bundle.revision if bundle is not None else None,
                (time.perf_counter_ns() - started) // 1000,
            )
        )
        return json_response(answered.body(), headers=_echo_request_id(request))

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
                **(
                    {
                        f"search_{kind}_endpoint": f"{base}/access/v1/search/{kind}"
                        for kind in ("subject", "resource", "action")
                    }
                    if self._universe is not None
                    else {}
                ),
            }
        )


class EvaluationApp:
    """`POST /access/v1/evaluation` as a bare ASGI app: the busiest endpoint, answered without
    Starlette's request and response objects and, for bodies in the everyday shape, without
    pydantic (see `plain_evaluation`). Same answers, headers and errors as `AuthZenApi
    .evaluation`: problems raised here reach the app's exception handlers as from any route."""

    def __init__(self, pdp: Any, max_body_bytes: int) -> None:
        self._pdp = pdp
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(scope, receive, self._limit)
        request = plain_evaluation(body)
        if request is None:
            parsed = parse_model(EvaluationRequest, body)
            check_recordable("", parsed.subject, parsed.action, parsed.resource, parsed.context)
            request = to_access_request(
                parsed.subject, parsed.action, parsed.resource, parsed.context
            )
        decision = await self._pdp.decide(request)
        content = orjson.dumps(decision_body(decision))
        headers = [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json"),
        ]
        for name, value in scope["headers"]:
            if name == b"x-request-id":  # echoed, as _echo_request_id does
                if value:
                    headers.insert(0, (b"x-request-id", value[:200]))
                break
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """`problems.read_body` over ASGI messages: 413 beyond `limit` without reading past it."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value.decode("latin-1")
            if declared.isdigit() and int(declared) > limit:
                raise too_large(limit)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _echo_request_id(request: Request) -> dict[str, str] | None:
    request_id = request.headers.get("x-request-id")
    return {"X-Request-ID": request_id[:200]} if request_id else None


class EpochApi:
    """`GET /access/v1/epoch?after=N&wait=S`: the cache epoch (decision/epoch.py), answered as
    soon as it exceeds N, or after S seconds (at most `max_wait`) with the epoch unchanged.
    Without `after`, at once. Enforcement points long-poll it to drop cached answers within
    moments of a revocation, an activation or a grant's change, on whichever replica."""

    def __init__(self, epoch: Any, max_wait: float) -> None:
        self._epoch = epoch
        self._max_wait = max_wait

    async def handle(self, request: Request) -> Response:
        after = _number(request, "after", int, -1)
        wait = _number(request, "wait", float, self._max_wait)
        if after < -1:
            raise _bad_query("after", "must be a whole number >= 0")
        if not wait >= 0:  # NaN too
            raise _bad_query("wait", "must be a number of seconds >= 0")
        value = self._epoch.value
        if after >= 0 and value <= after:
            value = await self._epoch.wait_past(after, min(wait, self._max_wait))
        body = {"epoch": value, "parts": self._epoch.parts()}
        return json_response(body, headers={"Cache-Control": "no-store"})


def _number(request: Request, name: str, kind: type[int] | type[float], default: Any) -> Any:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise _bad_query(name, f"must be a {'whole number' if kind is int else 'number'}") from None
    if kind is float and value != value:  # NaN
        raise _bad_query(name, "must be a number")
    return value


def _bad_query(name: str, detail: str) -> Problem:
    return Problem(
        422,
        "invalid-request",
        "Invalid request",
        f"{name}: {detail}",
        [{"pointer": "", "parameter": name, "detail": detail, "code": "invalid"}],
    )
