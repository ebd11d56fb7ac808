"""Fuzzing a running `trustplane serve` from its own API description (issue 13, standing suites).

Shared by the bounded suite (tests/fuzz/) and the long run on demand (bench/fuzz.py). Every HTTP
operation of the served OpenAPI document is driven by schemathesis (cases that fit the schema
and cases that break it); the Envoy gRPC Check (raw bytes, and well-typed but hostile
CheckRequests, on every transport the server was started with) and the Kubernetes
AdmissionReview are driven by hypothesis strategies written here. Nothing stops at the first
finding: each case is tallied (status codes) and checked, and what breaks an invariant becomes a
`Violation` with a reproduction. The invariants:

- no 5xx (and, on gRPC, no INTERNAL/UNKNOWN/UNAVAILABLE: the front or the process broke);
- no allow for input that is not a valid request (an AuthZEN body that fails the schema, a
  Check with no credential, a hostile pod however it is wrapped, an admin call without a valid
  token, a token or attestation for a fuzzed credential);
- the server is healthy afterwards (/healthz, /readyz, and a known-good request answered as
  before), and every counted decision is recorded (/metrics decision count == ledger rows).

A violation that is one of issue 13's known defects is attributed to it (`Violation.defect`),
so the bounded suite can expect it until the fix lands; anything else is a new finding.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import jsonschema_rs
import requests
import schemathesis
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.generation import GenerationMode
from sqlalchemy import create_engine, text

from trustplane.server.openapi import openapi_document

# Issue 13's defects that other branches fix; a violation they explain is expected until then.
KNOWN_DEFECTS: dict[int, str] = {
    1: "issue 13 defect 1 (a NUL byte stalls the PostgreSQL ledger), fixed on branch h-ledger",
    2: "issue 13 defect 2 (integers outside 64 bits: 500 and unrecorded decisions), "
    "fixed on branch h-ledger",
    5: "issue 13 defect 5 (admission fails open on malformed objects), fixed on branch h-admission",
    6: "issue 13 defect 6 (admin routes authorized by a prefix guess), fixed on branch h-gate",
}

CHECK = "/envoy.service.auth.v3.Authorization/Check"
CHECKOUT = "spiffe://shop.example/ns/storefront/sa/checkout"
INT64 = (-(2**63), 2**63 - 1)
# gRPC codes that mean the server (or the front) broke rather than answered.
GRPC_BROKEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.DATA_LOSS,
}
ALLOW_REQUEST = {
    "subject": {"type": "User", "id": "erin"},
    "action": {"name": "payments:refund"},
    "resource": {"type": "Api", "id": "payments.refund"},
    "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10, "amount_cents": 4999},
}
DENY_REQUEST = {**ALLOW_REQUEST, "subject": {"type": "User", "id": "fuzz-nobody"}}


# Leave NUL bytes out of every case (bench/fuzz.py --exclude-nul): on PostgreSQL before defect
# 1's fix one NUL stalls the ledger for good, and every admin write after it waits 10 s for a 503.
EXCLUDE_NUL = False

# Progress of long runs (bench/fuzz.py sets it): called every PROGRESS_EVERY cases of a tally.
progress: Callable[[Tally], None] | None = None
PROGRESS_EVERY = 250


@dataclass
class Target:
    """A running server under test and what the harness learned about it."""

    url: str
    token: str
    backend: str  # sqlite | postgres
    database_url: str
    grpc_ports: dict[str, int] = field(default_factory=dict)  # transport -> port
    tainted: set[int] = field(default_factory=set)  # known defects triggered so far
    # Counted minus recorded decisions at the last check: a later check reports only a change,
    # so one lost record is charged to the endpoint that lost it, not to every one after it.
    gap: int = 0

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@dataclass
class Violation:
    endpoint: str
    check: str
    detail: str
    reproduction: str
    defect: int | None = None  # a known defect of issue 13, or None: a new finding

    def __str__(self) -> str:
        known = f" [known: defect {self.defect}]" if self.defect else " [NEW]"
        return f"{self.endpoint}: {self.check}: {self.detail}{known}\n    {self.reproduction}"


@dataclass
class Tally:
    """Per endpoint: cases sent, status codes seen, invariants broken."""

    endpoint: str
    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)

    def case(self) -> None:
        """One more case sent; long runs hear of it every PROGRESS_EVERY cases."""
        self.cases += 1
        if progress is not None and self.cases % PROGRESS_EVERY == 0:
            progress(self)

    def add(self, other: Tally) -> None:
        self.cases += other.cases
        self.statuses.update(other.statuses)
        self.violations.extend(other.violations)


def run_settings(examples: int) -> settings:
    """Generation only (no shrinking, no example database): every case is tallied, none
    stops the run, and a long run is not spent minimising one finding."""
    return settings(
        max_examples=max(1, examples),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


def drive(strategy: st.SearchStrategy[Any], examples: int, each: Callable[[Any], None]) -> None:
    @run_settings(examples)
    @given(strategy)
    def run(value: Any) -> None:
        each(value)

    run()


# -- classification ------------------------------------------------------------------------


def _has_nul(sent: bytes | str | None) -> bool:
    if sent is None:
        return False
    data = sent.encode("utf-8", "surrogatepass") if isinstance(sent, str) else sent
    return b"\x00" in data or b"\\u0000" in data or b"%00" in data


def _big_ints(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not INT64[0] <= value <= INT64[1]
    if isinstance(value, dict):
        return any(_big_ints(v) for v in value.values())
    if isinstance(value, list):
        return any(_big_ints(v) for v in value)
    if isinstance(value, str):
        return bool(re.fullmatch(r"-?\d+", value.strip())) and _big_ints(int(value))
    return False


def _sent_json(body: bytes | str | None) -> Any:
    if body is None:
        return None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        return json.loads(body)
    return None


def classify_failure(target: Target, sent: list[bytes | str | None], parsed: Any) -> int | None:
    """The known defect that explains a 5xx (or a broken invariant) on `target`, if any."""
    if target.backend == "postgres" and (1 in target.tainted or any(_has_nul(s) for s in sent)):
        target.tainted.add(1)
        return 1
    if _big_ints(parsed):
        target.tainted.add(2)
        return 2
    return None


def note_sent(target: Target, sent: list[bytes | str | None]) -> None:
    """Taint a PostgreSQL target that was sent a NUL byte (defect 1 stalls its ledger)."""
    if target.backend == "postgres" and any(_has_nul(s) for s in sent):
        target.tainted.add(1)


# -- HTTP, from the OpenAPI document --------------------------------------------------------


def load_schema() -> Any:
    schema = schemathesis.openapi.from_dict(openapi_document())
    if EXCLUDE_NUL:
        schema.config.generation.update(allow_x00=False)
    return schema


def _case_has_nul(case: Any) -> bool:
    body = case.body if isinstance(case.body, bytes | str) else json.dumps(case.body, default=str)
    parts = [case.path_parameters, case.query, dict(case.headers or {}), case.cookies]
    return _has_nul(body) or _has_nul(json.dumps(parts, default=str))


def operations() -> list[Any]:
    """Every operation of the served document (the schema the server publishes at
    /openapi.json is this one)."""
    return [result.ok() for result in load_schema().get_all_operations()]


def is_admin(operation: Any) -> bool:
    return any("adminToken" in s for s in operation.definition.raw.get("security", []))


def _validator(operation: Any) -> Any:
    """A JSON Schema validator of the operation's JSON body, or None."""
    content = operation.definition.raw.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    document = {**schema, "components": openapi_document()["components"]}
    return jsonschema_rs.validator_for(document)


class HttpFuzzer:
    """One operation, positive and negative cases, anonymous or with the admin token."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def fuzz(self, operation: Any, examples: int, *, admin: bool) -> Tally:
        label = f"{operation.method.upper()} {operation.path}" + (" (admin)" if admin else "")
        tally = Tally(label)
        validator = _validator(operation)
        headers = {"authorization": f"Bearer {self.target.token}"} if admin else None
        modes = [GenerationMode.POSITIVE]
        if operation.definition.raw.get("requestBody") or operation.definition.raw.get(
            "parameters"
        ):
            modes.append(GenerationMode.NEGATIVE)
        share = max(1, examples // len(modes))
        for mode in modes:
            try:
                drive(
                    operation.as_strategy(mode),
                    share,
                    lambda case, m=mode: self._one(
                        operation, case, tally, headers, validator, admin, m
                    ),
                )
            except Unsatisfiable:
                # Nothing to break: e.g. a lone string path parameter, which any string fits.
                if mode is not GenerationMode.NEGATIVE:
                    raise
        return tally

    def _one(
        self,
        operation: Any,
        case: Any,
        tally: Tally,
        headers: dict[str, str] | None,
        validator: Any,
        admin: bool,
        mode: GenerationMode,
    ) -> None:
        if EXCLUDE_NUL and _case_has_nul(case):
            return
        tally.case()
        if headers is not None:  # authenticated fuzz: the token replaces any generated one
            kept = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
            case.headers = {**kept, **headers}
        reproduction = _curl(case, self.target.url, self.target.token)
        try:
            response = case.call(base_url=self.target.url, session=self.session, timeout=30)
        except requests.RequestException as exc:
            tally.statuses["no answer"] += 1
            tally.violations.append(
                Violation(tally.endpoint, "no answer", f"{type(exc).__name__}", reproduction)
            )
            return
        request = response.request
        body = request.body
        sent: list[bytes | str | None] = [body, request.url]
        note_sent(self.target, sent)
        status = response.status_code
        tally.statuses[str(status)] += 1

        def violation(check: str, detail: str, defect: int | None = None) -> None:
            tally.violations.append(Violation(tally.endpoint, check, detail, reproduction, defect))

        parsed = _sent_json(body)
        if status >= 500:
            query = dict(case.query or {})
            defect = classify_failure(self.target, sent, [parsed, query, case.path_parameters])
            violation("5xx", f"{status} {response.text[:200]!r} ({mode.value} case)", defect)
            return
        path = operation.path
        if is_admin(operation) and not admin and status < 400:
            violation("admin without a valid token", f"answered {status}")
        if path.startswith("/access/v1/evaluation") and status == 200 and validator is not None:
            allowed = _allowed_evaluations(response)
            if allowed and (parsed is None or not validator.is_valid(parsed)):
                errors = [] if parsed is None else [str(e) for e in validator.iter_errors(parsed)]
                violation(
                    "allow for an invalid request",
                    f"decision=true for a body that fails the schema: {errors[:1]}",
                )
        if path == "/v1/token" and status == 200:
            violation("token for a fuzzed credential", response.text[:200])
        if path == "/v1/attestations" and operation.method.lower() == "post" and status < 300:
            violation("attestation without a valid JWT-SVID", f"answered {status}")
        if path.startswith(("/v1/forward-auth", "/v1/envoy/http")) and status == 200:
            violation("allow without a credential", f"answered {status}")


def _allowed_evaluations(response: Any) -> bool:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        answer = response.json()
        if "evaluations" in answer:
            return any(e.get("decision") is True for e in answer["evaluations"])
        return answer.get("decision") is True
    return False


def _curl(case: Any, base_url: str, token: str) -> str:
    try:
        command = case.as_curl_command(base_url=base_url)
    except Exception as exc:  # reproduction is best effort; the finding still counts
        command = f"{case!r} ({type(exc).__name__} building curl)"
    return command.replace(token, "<admin token>")[:1500]


# -- gRPC ext_authz Check --------------------------------------------------------------------

_ctx = attribute_context_pb2.AttributeContext
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=64)
_hostile_text = st.one_of(
    _text,
    st.sampled_from(["", "\x00", "/x\x00y", "..", "%00", "/" * 300, "é" * 70, "\u202e"]),
    _text.map(lambda s: "/" + s),
)


def _check_request(
    method: str,
    path: str,
    host: str,
    headers: dict[str, str],
    principal: str,
    scheme: str,
    body: str,
) -> external_auth_pb2.CheckRequest:
    return external_auth_pb2.CheckRequest(
        attributes=_ctx(
            source=_ctx.Peer(principal=principal),
            request=_ctx.Request(
                http=_ctx.HttpRequest(
                    method=method,
                    path=path,
                    host=host,
                    headers=headers,
                    scheme=scheme,
                    body=body,
                )
            ),
        )
    )


typed_checks = st.builds(
    _check_request,
    method=st.one_of(st.sampled_from(["GET", "POST", "HEAD", "DELETE"]), _hostile_text),
    path=st.one_of(
        st.sampled_from(["/payments/v1/refunds", "/inventory/v1/stock/1", "/admin/x"]),
        _hostile_text,
    ),
    host=_hostile_text,
    headers=st.dictionaries(
        st.one_of(st.sampled_from(["authorization", "x-forwarded-for", "cookie"]), _text),
        st.one_of(_hostile_text, st.just("Bearer e30.e30."), _text.map(lambda s: "Bearer " + s)),
        max_size=4,
    ),
    principal=st.one_of(
        _hostile_text,
        st.just(CHECKOUT + "\x00"),
        st.just("spiffe://shop.example/ns/storefront/sa/unknown"),
        _text.map(lambda s: "spiffe://" + s),
    ),
    scheme=_hostile_text,
    body=_text,
)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer)


_VALID = _check_request(
    "POST", "/payments/v1/charges", "shop.example", {}, CHECKOUT, "https", ""
).SerializeToString()
raw_checks = st.one_of(
    st.binary(max_size=512),
    st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: _mutate(_VALID, edits)
    ),
)


class GrpcFuzzer:
    """The Check service on one transport: raw frames and hostile CheckRequests."""

    def __init__(self, target: Target, transport: str) -> None:
        self.target = target
        self.transport = transport
        self.channel = grpc.insecure_channel(f"127.0.0.1:{target.grpc_ports[transport]}")
        grpc.channel_ready_future(self.channel).result(timeout=15)
        self.call = self.channel.unary_unary(CHECK)

    def close(self) -> None:
        self.channel.close()

    def fuzz_raw(self, examples: int) -> Tally:
        tally = Tally(f"gRPC Check raw bytes ({self.transport})")
        drive(raw_checks, examples, lambda data: self._one(tally, data, None))
        return tally

    def fuzz_typed(self, examples: int) -> Tally:
        tally = Tally(f"gRPC Check hostile CheckRequest ({self.transport})")
        drive(
            typed_checks,
            examples,
            lambda request: self._one(tally, request.SerializeToString(), request),
        )
        return tally

    def _one(
        self, tally: Tally, data: bytes, request: external_auth_pb2.CheckRequest | None
    ) -> None:
        if EXCLUDE_NUL and _has_nul(data):
            return
        tally.case()
        reproduction = f"grpc {CHECK} bytes={data[:300]!r}"
        note_sent(self.target, [data])
        try:
            answer_bytes = self.call(data, timeout=30)
        except grpc.RpcError as exc:
            code = exc.code()
            tally.statuses[code.name] += 1
            if code in GRPC_BROKEN:
                defect = classify_failure(self.target, [data], None)
                tally.violations.append(
                    Violation(
                        tally.endpoint,
                        "broken",
                        f"{code.name}: {exc.details()}",
                        reproduction,
                        defect,
                    )
                )
            return
        answer = external_auth_pb2.CheckResponse.FromString(answer_bytes)
        name = code_pb2.Code.Name(answer.status.code)
        tally.statuses[name] += 1
        if answer.status.code == code_pb2.UNAVAILABLE:
            defect = classify_failure(self.target, [data], None)
            tally.violations.append(
                Violation(tally.endpoint, "broken", "UNAVAILABLE answer", reproduction, defect)
            )
        if answer.status.code != code_pb2.OK:
            return
        parsed = request
        if parsed is None:
            try:
                parsed = external_auth_pb2.CheckRequest.FromString(data)
            except DecodeError:
                tally.violations.append(
                    Violation(
                        tally.endpoint,
                        "allow for bytes that are not a CheckRequest",
                        "OK",
                        reproduction,
                    )
                )
                return
        http = parsed.attributes.request.http
        if parsed.attributes.source.principal != CHECKOUT and not any(
            k.lower() == "authorization" for k in http.headers
        ):
            tally.violations.append(
                Violation(
                    tally.endpoint,
                    "allow without a credential",
                    f"principal={parsed.attributes.source.principal!r} path={http.path!r}",
                    reproduction,
                )
            )


# -- forward-auth and Envoy HTTP: the proxy's headers ------------------------------------------

# The OpenAPI document declares no headers for these (the proxy's vary), so schemathesis has
# little to vary: the headers a proxy sends come from here. Header values are what HTTP/1.1 can
# carry (visible ASCII and obs-text); identity comes only from a credential, never a header.
_field = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
).map(str.strip)
_paths = st.one_of(
    st.sampled_from(["/payments/v1/refunds", "/admin/x", "/ops/services/a/logs", "/%00", "//"]),
    _field.map(lambda s: "/" + s),
)
_methods = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "DELETE", "TRACE"]), _field)
proxy_headers = st.fixed_dictionaries(
    {},
    optional={
        "x-original-uri": _paths,
        "x-original-method": _methods,
        "x-forwarded-uri": _paths,
        "x-forwarded-method": _methods,
        "x-forwarded-host": _field,
        "x-forwarded-proto": st.sampled_from(["https", "http", "", "HTTPS "]),
        "x-forwarded-for": _field,
        "x-real-ip": _field,
        "x-forwarded-user": st.sampled_from(["erin", "alice", "admin"]),
        "authorization": st.one_of(_field, _field.map(lambda s: "Bearer " + s)),
        "x-forwarded-client-cert": st.one_of(
            _field, st.just("By=spiffe://evil.example/x;URI=spiffe://evil.example/y")
        ),
        "cookie": _field,
    },
)
proxy_requests = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    st.one_of(st.just(""), _paths),
    proxy_headers,
)


class ProxyFuzzer:
    """Forward-auth (nginx, Traefik, Caddy) and Envoy's HTTP mode, as a trusted proxy calls
    them: never an allow without a credential."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.client = httpx.Client(base_url=target.url, timeout=30)

    def close(self) -> None:
        self.client.close()

    def fuzz(self, endpoint: str, examples: int) -> Tally:
        tally = Tally(f"{endpoint} proxy headers")
        drive(proxy_requests, examples, lambda request: self._one(tally, endpoint, *request))
        return tally

    def _one(
        self, tally: Tally, endpoint: str, method: str, suffix: str, headers: dict[str, str]
    ) -> None:
        url = endpoint + (suffix if endpoint == "/v1/envoy/http" else "")
        if EXCLUDE_NUL and _has_nul(json.dumps([url, headers])):
            return
        encoded = {k: v.encode("latin-1") for k, v in headers.items()}
        reproduction = f"curl -X {method} '{self.target.url}{url}' " + " ".join(
            f"-H {json.dumps(f'{k}: {v}')}" for k, v in headers.items()
        )
        try:
            response = self.client.request(method, url, headers=encoded)
        except httpx.LocalProtocolError:
            return  # not something HTTP/1.1 can carry: not a case
        except httpx.HTTPError as exc:
            tally.case()
            tally.statuses["no answer"] += 1
            tally.violations.append(
                Violation(tally.endpoint, "no answer", type(exc).__name__, reproduction)
            )
            return
        tally.case()
        sent: list[bytes | str | None] = [url, *headers.values()]
        note_sent(self.target, sent)
        status = response.status_code
        tally.statuses[str(status)] += 1
        if status >= 500:
            defect = classify_failure(self.target, sent, None)
            tally.violations.append(
                Violation(
                    tally.endpoint, "5xx", f"{status} {response.text[:200]!r}", reproduction, defect
                )
            )
        elif status == 200:
            tally.violations.append(
                Violation(
                    tally.endpoint, "allow without a credential", "answered 200", reproduction
                )
            )


# -- Kubernetes AdmissionReview --------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)

HOSTILE_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "evil", "namespace": "default"},
    "spec": {
        "hostNetwork": True,
        "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}],
    },
}


def review(obj: Any, kind: str = "Pod", dry_run: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "fuzz",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "operation": "CREATE",
            "namespace": "default",
            "name": "evil",
            "object": obj,
            "dryRun": dry_run,
            **extra,
        },
    }


def _deployment(template_metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "evil", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "evil"}},
            "template": {"metadata": template_metadata, "spec": HOSTILE_POD["spec"]},
        },
    }


def _hostile_pod(where: str, value: Any, dry_run: bool) -> tuple[str, dict[str, Any]]:
    pod = copy.deepcopy(HOSTILE_POD)
    if where == "metadata":
        pod["metadata"] = value
    elif where == "object.kind":
        pod["kind"] = value
    elif where == "apiVersion":
        pod["apiVersion"] = value
    elif where == "extra field":
        pod["spec"]["x-fuzz"] = value
    elif where == "labels":
        pod["metadata"]["labels"] = value
    elif where == "template.metadata":
        return where, review(_deployment(value), kind="Deployment", dry_run=dry_run)
    return where, review(pod, dry_run=dry_run)


hostile_reviews = st.builds(
    _hostile_pod,
    st.sampled_from(
        ["metadata", "object.kind", "apiVersion", "extra field", "labels", "template.metadata"]
    ),
    _json_values,
    st.booleans(),
)
# Defect 5's surface: a malformed object the engine could not read completely.
_DEFECT_5 = {"metadata", "object.kind", "template.metadata", "apiVersion", "labels"}
random_reviews = st.one_of(
    _json_values,
    st.builds(review, _json_values, _text, st.booleans()),
    st.builds(
        lambda request: {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": request,
        },
        _json_values,
    ),
)


class AdmissionFuzzer:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.client = httpx.Client(base_url=target.url, timeout=30)

    def close(self) -> None:
        self.client.close()

    def fuzz_hostile(self, examples: int) -> Tally:
        tally = Tally("POST /v1/admission hostile pod")
        drive(hostile_reviews, examples, lambda pair: self._one(tally, pair[1], pair[0]))
        return tally

    def fuzz_random(self, examples: int) -> Tally:
        tally = Tally("POST /v1/admission random review")
        drive(random_reviews, examples, lambda body: self._one(tally, body, None))
        return tally

    def _one(self, tally: Tally, body: Any, hostile: str | None) -> None:
        data = json.dumps(body).encode()
        if EXCLUDE_NUL and _has_nul(data):
            return
        tally.case()
        reproduction = f"curl -X POST {self.target.url}/v1/admission -d '{data[:600].decode()}'"
        note_sent(self.target, [data])
        try:
            response = self.client.post(
                "/v1/admission", content=data, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            tally.statuses["no answer"] += 1
            tally.violations.append(
                Violation(tally.endpoint, "no answer", type(exc).__name__, reproduction)
            )
            return
        status = response.status_code
        tally.statuses[str(status)] += 1
        if status >= 500:
            defect = classify_failure(self.target, [data], body)
            tally.violations.append(
                Violation(
                    tally.endpoint, "5xx", f"{status} {response.text[:200]!r}", reproduction, defect
                )
            )
            return
        if hostile is not None and status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                if response.json()["response"]["allowed"] is True:
                    tally.violations.append(
                        Violation(
                            tally.endpoint,
                            "allow for a hostile pod",
                            f"malformed {hostile}: allowed",
                            reproduction,
                            5 if hostile in _DEFECT_5 else None,
                        )
                    )


# -- invariants afterwards -------------------------------------------------------------------


def counted_decisions(client: httpx.Client) -> int:
    """Enforced decisions counted by /metrics (every answered decision is counted once)."""
    exposition = client.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        if family.name == "trustplane_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("mode") == "enforced":
                    total += sample.value
    return int(total)


def recorded_decisions(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            count = connection.execute(
                text("SELECT count(*) FROM decisions WHERE kind = 'decision'")
            ).scalar_one()
        return int(count)
    finally:
        engine.dispose()


def check_invariants(target: Target, settle_seconds: float = 15) -> list[Violation]:
    """The server is healthy, answers a known-good request as before, and has recorded every
    decision it counted (waiting, boundedly, for the ledger writer to drain)."""
    found: list[Violation] = []
    broken = 1 if 1 in target.tainted else None

    def fail(check: str, detail: str, defect: int | None = broken) -> None:
        found.append(Violation("server afterwards", check, detail, "(after the fuzz run)", defect))

    with target.client() as client:
        for path in ("/healthz", "/readyz"):
            try:
                status = client.get(path).status_code
            except httpx.HTTPError as exc:
                fail(path, f"no answer: {type(exc).__name__}")
                return found
            if status != 200:
                fail(path, f"answered {status}")
        for body, expected in ((ALLOW_REQUEST, True), (DENY_REQUEST, False)):
            try:
                response = client.post("/access/v1/evaluation", json=body)
            except httpx.HTTPError as exc:
                fail("known-good request", f"no answer: {type(exc).__name__}")
                continue
            if response.status_code != 200 or response.json().get("decision") is not expected:
                fail(
                    "known-good request",
                    f"expected decision={expected}, got {response.status_code} "
                    f"{response.text[:200]!r}",
                )
        deadline = time.monotonic() + (1 if target.tainted & {1, 2} else settle_seconds)
        while True:
            counted = counted_decisions(client)
            recorded = recorded_decisions(target.database_url)
            if counted - recorded == target.gap or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if counted - recorded != target.gap:
            defect = broken or (2 if 2 in target.tainted else None)
            fail(
                "every counted decision recorded",
                f"/metrics counted {counted} decisions, the ledger holds {recorded} "
                f"({counted - recorded - target.gap:+d} unrecorded since the last check)",
                defect,
            )
            target.gap = counted - recorded
    return found


# -- reporting -------------------------------------------------------------------------------


def unexpected(violations: list[Violation]) -> list[Violation]:
    return [v for v in violations if v.defect is None]


def known_reasons(violations: list[Violation]) -> str:
    defects = sorted({v.defect for v in violations if v.defect is not None})
    return "; ".join(KNOWN_DEFECTS.get(d, f"issue 13 defect {d}") for d in defects)


def describe(violations: list[Violation], limit: int = 5) -> str:
    shown = "\n".join(str(v) for v in violations[:limit])
    more = f"\n… and {len(violations) - limit} more" if len(violations) > limit else ""
    return shown + more


@contextlib.contextmanager
def fuzzers(target: Target) -> Iterator[tuple[HttpFuzzer, AdmissionFuzzer]]:
    http, admission = HttpFuzzer(target), AdmissionFuzzer(target)
    try:
        yield http, admission
    finally:
        http.close()
        admission.close()
