"""Python client SDK for asking a trustplane PDP, sync (`Client`) and async (`AsyncClient`).

- One pooled connection per client (httpx), a timeout on every call.
- Retries only where a retry cannot turn one question into two recorded answers: when the
  connection could not be made, or the PDP said 503 (not ready, ledger unavailable) and so
  answered nothing. A read timeout is not retried.
- A local answer cache honouring the `ttl_seconds` the PDP returns with each decision (0: never
  reused: Tier 0, high risk, volatile signals; see decision/risk_cache.py), which learns of
  revocations, activations and grant changes within moments: once it holds an answer, the
  client long-polls the PDP's cache epoch (`GET /access/v1/epoch?after=N`) and drops every
  cached answer when it moves. While that watch is broken the cache is not served (each check
  asks the PDP); a PDP without the endpoint leaves the TTL and the epoch in each answer.
- Fail closed: when no answer can be had, the result is a deny with the error. A caller may ask
  for fail-open per call (`fail_open=True`, for a route that must stay up); every fail-open is
  logged and counted (`trustplane_sdk_fail_open_total{route}`), so it cannot hide.

    with Client("http://127.0.0.1:8181") as pdp:
        answer = pdp.check(("User", "alice"), "ops:read-logs", ("Service", "checkout"),
                           {"mfa": True, "auth_age_seconds": 60})
        if not answer.allowed: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from trustplane.retry import Backoff, Retry

log = logging.getLogger("trustplane.sdk")

EVALUATION_PATH = "/access/v1/evaluation"
EPOCH_PATH = "/access/v1/epoch"
EPOCH_WAIT_SECONDS = 20.0  # one long-poll; the PDP answers at once when the epoch moves
_UNSUPPORTED = frozenset({404, 405})  # a PDP from before the epoch endpoint
_RETRY_STATUSES = frozenset({503})
_UNANSWERED = (httpx.ConnectError, httpx.ConnectTimeout)  # the request never reached the PDP
_JSON = {"content-type": "application/json"}
_BACKOFF = Backoff(first=0.1, cap=0.5)


def _unanswered_status(response: httpx.Response) -> bool:
    return response.status_code in _RETRY_STATUSES


@functools.lru_cache(maxsize=16)
def _retries(retries: int) -> Retry:
    """Retry only while the question was certainly not answered: no connection, or a 503 (not
    ready, ledger unavailable). A read timeout is not retried: the PDP may have answered and
    recorded it. Waits of 0.1 s, 0.2 s, 0.4 s, then 0.5 s."""
    return Retry(
        _BACKOFF,
        retry_on=_UNANSWERED,
        retry_result=_unanswered_status,
        attempts=retries + 1,
    )


def send_with_retries(send: Callable[[], httpx.Response], retries: int) -> httpx.Response:
    """Call `send`, again (up to `retries` times, with backoff) only while the question was
    certainly not answered (see `_retries`); the last answer is returned as it is."""
    return _retries(retries).call(send)


async def asend_with_retries(
    send: Callable[[], Awaitable[httpx.Response]], retries: int
) -> httpx.Response:
    """`send_with_retries` for asyncio."""
    return await _retries(retries).acall(send)


@dataclass(frozen=True)
class Answer:
    """The PDP's answer as an enforcement point uses it."""

    allowed: bool
    decision_id: str | None = None
    reasons: tuple[str, ...] = ()  # determining policy ids
    errors: tuple[str, ...] = ()
    ttl_seconds: int = 0
    revocation_epoch: int = 0  # the PDP's revocation list version when it answered
    cache_epoch: int = 0  # the PDP's cache epoch when it answered (decision/epoch.py)
    cached: bool = False  # served from this client's cache, not asked again
    failed_open: bool = False  # the PDP could not answer and the caller chose to let it through
    error: str | None = None  # why there is no real answer (fail-closed or fail-open)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


class SdkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.fail_open = Counter(
            "trustplane_sdk_fail_open",
            "Requests let through without a PDP answer because the caller chose fail-open.",
            ["route"],
            registry=registry if registry is not None else REGISTRY,
        )


_default_metrics: SdkMetrics | None = None
_metrics_lock = threading.Lock()


def default_sdk_metrics() -> SdkMetrics:
    global _default_metrics
    with _metrics_lock:
        if _default_metrics is None:
            _default_metrics = SdkMetrics()
        return _default_metrics


def evaluation_body(
    subject: tuple[str, str],
    action: str,
    resource: tuple[str, str],
    context: Mapping[str, Any] | None,
    subject_properties: Mapping[str, Any] | None = None,
    resource_properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": {"type": subject[0], "id": subject[1]},
        "action": {"name": action},
        "resource": {"type": resource[0], "id": resource[1]},
        "context": dict(context or {}),
    }
    if subject_properties:
        body["subject"]["properties"] = dict(subject_properties)
    if resource_properties:
        body["resource"]["properties"] = dict(resource_properties)
    return body


def answer_from(body: Mapping[str, Any]) -> Answer:
    details = body.get("context") or {}
    return Answer(
        allowed=body.get("decision") is True,
        decision_id=details.get("decision_id"),
        reasons=tuple(r.get("policy", "") for r in details.get("reasons", [])),
        errors=tuple(details.get("errors", [])),
        ttl_seconds=int(details.get("ttl_seconds") or 0),
        revocation_epoch=int(details.get("revocation_epoch") or 0),
        cache_epoch=int(details.get("cache_epoch") or details.get("revocation_epoch") or 0),
        raw=body,
    )


class _AnswerCache:
    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, tuple[float, Answer]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Answer | None:
        if not self._size:
            return None
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            expires, answer = hit
            if time.monotonic() >= expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return answer

    def put(self, key: bytes, answer: Answer) -> None:
        if not self._size or answer.ttl_seconds <= 0 or answer.errors:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + answer.ttl_seconds, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class _Watch:
    """What the client knows of the PDP's cache epoch and of its watch on it."""

    OFF = "off"  # not started: nothing cached yet
    LIVE = "live"  # the last long-poll answered: cached answers may be served
    BROKEN = "broken"  # the last long-poll failed: the cache is not served until one answers
    UNSUPPORTED = "unsupported"  # the PDP has no epoch endpoint: TTL and answers' epochs only


class _Base:
    def __init__(
        self,
        retries: int,
        cache_size: int,
        metrics: SdkMetrics | None,
        watch_epoch: bool,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._retries = retries
        self._cache = _AnswerCache(cache_size)
        self._metrics = metrics
        self._epoch = 0
        self._epoch_lock = threading.Lock()
        self._watching = bool(cache_size) and watch_epoch
        self.watch_state = _Watch.OFF

    @property
    def epoch(self) -> int:
        """The newest cache epoch this client has seen (answers and long-polls)."""
        return self._epoch

    def clear_cache(self) -> None:
        self._cache.clear()

    def _lookup(self, body: dict[str, Any]) -> tuple[bytes, Answer | None]:
        key = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        if self.watch_state == _Watch.BROKEN:
            return key, None  # a revocation may be missed: ask
        known = self._cache.get(key)
        return key, None if known is None else dataclasses.replace(known, cached=True)

    def _complete(self, key: bytes, response: httpx.Response) -> Answer:
        answer = self._parse(response)
        self._advance(answer.cache_epoch)
        if answer.cache_epoch >= self._epoch:  # not an answer older than a change heard of
            self._cache.put(key, answer)
        return answer

    def _advance(self, epoch: int) -> bool:
        """Move to `epoch` if it is newer; then no cached answer is trusted."""
        with self._epoch_lock:
            if epoch <= self._epoch:
                return False
            self._epoch = epoch
            self._cache.clear()
            return True

    def _heard(self, response: httpx.Response) -> bool:
        """Read a long-poll's answer; False when the PDP has no epoch endpoint."""
        if response.status_code in _UNSUPPORTED:
            log.warning(
                "the PDP has no %s (status %d): cached answers end by their TTL only",
                EPOCH_PATH,
                response.status_code,
            )
            self.watch_state = _Watch.UNSUPPORTED
            return False
        if response.status_code != 200:
            raise _Unanswered(f"epoch: PDP answered {response.status_code}")
        try:
            epoch = int(orjson.loads(response.content)["epoch"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise _Unanswered(f"epoch: not an epoch answer: {exc}") from None
        self._advance(epoch)
        self.watch_state = _Watch.LIVE
        return True

    def _lost_watch(self, error: BaseException) -> None:
        if self.watch_state != _Watch.BROKEN:
            log.warning("trustplane epoch watch lost (%s): not serving cached answers", error)
        self.watch_state = _Watch.BROKEN
        self._cache.clear()

    def _epoch_params(self) -> dict[str, str]:
        return {"after": str(self._epoch), "wait": str(EPOCH_WAIT_SECONDS)}

    def _failure(self, error: str, fail_open: bool, route: str) -> Answer:
        if fail_open:
            (self._metrics or default_sdk_metrics()).fail_open.labels(route).inc()
            log.warning("trustplane unreachable, failing OPEN for %s: %s", route, error)
            return Answer(allowed=True, failed_open=True, error=error)
        log.warning("trustplane unreachable, denying %s: %s", route, error)
        return Answer(allowed=False, error=error)

    @staticmethod
    def _parse(response: httpx.Response) -> Answer:
        if response.status_code != 200:
            raise _Unanswered(f"PDP answered {response.status_code}: {response.text[:200]}")
        try:
            return answer_from(orjson.loads(response.content))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise _Unanswered(f"PDP answer is not an AuthZEN response: {exc}") from None


class _Unanswered(Exception):
    pass


class Client(_Base):
    """Blocking client; thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        cache_size: int = 10_000,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        metrics: SdkMetrics | None = None,
        watch_epoch: bool = True,
    ) -> None:
        """`watch_epoch` False: no long-poll; cached answers end by their TTL and by the
        epoch later answers carry."""
        super().__init__(retries, cache_size, metrics, watch_epoch)
        self._http = httpx.Client(
            base_url=url, timeout=timeout, headers=dict(headers or {}), transport=transport
        )
        self._timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Returns at once: a long-poll in flight cannot be interrupted from here, so the
        watch thread (a daemon) ends when the PDP answers it, at most `EPOCH_WAIT_SECONDS`."""
        self._stop.set()
        self._http.close()

    def _start_watch(self) -> None:
        if self._watching and self.watch_state == _Watch.OFF and not self._stop.is_set():
            self.watch_state = _Watch.LIVE
            self._thread = threading.Thread(
                target=self._watch, name="trustplane-epoch", daemon=True
            )
            self._thread.start()

    def _watch(self) -> None:
        timeout = httpx.Timeout(self._timeout, read=EPOCH_WAIT_SECONDS + 5)
        failures = 0
        while not self._stop.is_set():
            try:
                response = self._http.get(EPOCH_PATH, params=self._epoch_params(), timeout=timeout)
                if not self._heard(response):
                    return
                failures = 0
            except (_Unanswered, httpx.HTTPError, RuntimeError) as exc:
                if self._stop.is_set():
                    return
                self._lost_watch(exc)
                failures += 1
                self._stop.wait(_BACKOFF.delay(failures))

    def check(
        self,
        subject: tuple[str, str],
        action: str,
        resource: tuple[str, str],
        context: Mapping[str, Any] | None = None,
        *,
        subject_properties: Mapping[str, Any] | None = None,
        resource_properties: Mapping[str, Any] | None = None,
        fail_open: bool = False,
        route: str = "",
    ) -> Answer:
        body = evaluation_body(
            subject, action, resource, context, subject_properties, resource_properties
        )
        key, known = self._lookup(body)
        if known is not None:
            return known
        try:
            answer = self._complete(key, self._post(key))
        except (_Unanswered, httpx.HTTPError) as exc:
            return self._failure(str(exc) or type(exc).__name__, fail_open, route or action)
        if answer.ttl_seconds > 0:
            self._start_watch()
        return answer

    def _post(self, body: bytes) -> httpx.Response:
        return send_with_retries(
            lambda: self._http.post(EVALUATION_PATH, content=body, headers=_JSON), self._retries
        )


class AsyncClient(_Base):
    """asyncio client; one per event loop."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        cache_size: int = 10_000,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: SdkMetrics | None = None,
        watch_epoch: bool = True,
    ) -> None:
        super().__init__(retries, cache_size, metrics, watch_epoch)
        self._http = httpx.AsyncClient(
            base_url=url, timeout=timeout, headers=dict(headers or {}), transport=transport
        )
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()

    def _start_watch(self) -> None:
        if self._watching and self.watch_state == _Watch.OFF and not self._closed:
            self.watch_state = _Watch.LIVE
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        timeout = httpx.Timeout(self._timeout, read=EPOCH_WAIT_SECONDS + 5)
        failures = 0
        while not self._closed:
            try:
                response = await self._http.get(
                    EPOCH_PATH, params=self._epoch_params(), timeout=timeout
                )
                if not self._heard(response):
                    return
                failures = 0
            except (_Unanswered, httpx.HTTPError, RuntimeError) as exc:
                if self._closed:
                    return
                self._lost_watch(exc)
                failures += 1
                await asyncio.sleep(_BACKOFF.delay(failures))

    async def check(
        self,
        subject: tuple[str, str],
        action: str,
        resource: tuple[str, str],
        context: Mapping[str, Any] | None = None,
        *,
        subject_properties: Mapping[str, Any] | None = None,
        resource_properties: Mapping[str, Any] | None = None,
        fail_open: bool = False,
        route: str = "",
    ) -> Answer:
        body = evaluation_body(
            subject, action, resource, context, subject_properties, resource_properties
        )
        key, known = self._lookup(body)
        if known is not None:
            return known
        try:
            answer = self._complete(key, await self._post(key))
        except (_Unanswered, httpx.HTTPError) as exc:
            return self._failure(str(exc) or type(exc).__name__, fail_open, route or action)
        if answer.ttl_seconds > 0:
            self._start_watch()
        return answer

    async def _post(self, body: bytes) -> httpx.Response:
        return await asend_with_retries(
            lambda: self._http.post(EVALUATION_PATH, content=body, headers=_JSON), self._retries
        )
