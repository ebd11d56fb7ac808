"""OpenTelemetry traces of decisions: one span per decision call, with child spans for the
enforcement adapter, authentication, trust signals, evaluation and recording.

Off by default (`[tracing] enabled`). Off, nothing here runs: the decision path holds
`no_span`, which hands back one shared do-nothing context manager, and OpenTelemetry is never
imported (bench/tracing.py measures the cost of each setting in one run). On, the root span of a
decision call continues the caller's W3C trace context (`traceparent`, from AuthZEN and
forward-auth request headers or the headers of Envoy's CheckRequest) and is sampled by the
rule of `ParentBased(TraceIdRatioBased(sample_ratio))`: a caller's sampled flag decides for its
own trace, `sample_ratio` for new ones, decided before any span is made, so an unsampled
decision makes no span object. While the decision is answered its trace id is in
`model.TRACE_ID`, where the ledger record, the answer's `X-Trustplane-Trace-Id` header and the
log lines (telemetry/logs.py) read it; an unsampled trace still has an id, so records and logs
join the caller's trace either way. Spans leave through a batching processor to an OTLP/HTTP
endpoint.

Names follow the semantic conventions: the root span is named like an HTTP server span
(`POST /access/v1/evaluation`, with `http.request.method`, `http.route`, `url.path`,
`client.address`, `http.response.status_code`) or an RPC server span
(`envoy.service.auth.v3.Authorization/Check`, with `rpc.system`, `rpc.service`, `rpc.method`);
what has no convention is under `trustplane.*` (decision id, answer, revision, PEP).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from trustplane.model import TRACE_ID, Decision

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from trustplane.config import TracingSettings

TRACE_HEADER = "X-Trustplane-Trace-Id"
CONTEXT_HEADERS = ("traceparent", "tracestate")


class _NoSpan:
    """The span of a decision when tracing is off: enters and leaves, and is always the same."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()
_RECORDING: ContextVar[bool] = ContextVar("trace_recording", default=False)


class _Unsampled:
    """A decision call whose trace is not sampled: its trace id, and no span."""

    __slots__ = ("_token", "_trace_id")

    def __init__(self, trace_id: str) -> None:
        self._trace_id = trace_id

    def __enter__(self) -> None:
        self._token = TRACE_ID.set(self._trace_id)

    def __exit__(self, *exc: object) -> None:
        TRACE_ID.reset(self._token)


def no_span(name: str) -> contextlib.AbstractContextManager[Any]:
    """What the decision path calls for a child span when tracing is off."""
    return _NO_SPAN


def annotate(span: Span | None, decision: Decision) -> None:
    """The decision's own attributes on `span` (the evaluation's, or the root's)."""
    if span is None:
        return
    span.set_attributes(
        {
            "trustplane.decision.id": decision.decision_id,
            "trustplane.decision": decision.effect.value,
            "trustplane.revision": decision.revision or "",
            "trustplane.cached": decision.cached,
        }
    )
    if decision.errors:
        span.set_attribute("error.type", "evaluation_error")


def _otlp_exporter(endpoint: str) -> SpanExporter:
    """The OTLP/HTTP exporter, or a ConfigError saying why it cannot be loaded: xds-protos (for
    Envoy's types) ships an older copy of opentelemetry-proto's modules, and whichever package
    pip installed last wins; scripts/bootstrap.sh puts opentelemetry-proto's back."""
    from trustplane.config import ConfigError

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled: the OTLP exporter cannot be loaded ({exc}); xds-protos may have "
            "overwritten opentelemetry-proto's modules: reinstall them with `pip install "
            "--force-reinstall --no-deps opentelemetry-proto==VERSION` (scripts/bootstrap.sh "
            "does), or turn tracing off"
        ) from None
    return OTLPSpanExporter(endpoint=endpoint, timeout=5)


class Tracing:
    """The tracer provider of one serving process, its sampler and its exporter."""

    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace import SpanKind, get_current_span
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        import trustplane

        if exporter is None:
            exporter = _otlp_exporter(settings.endpoint)
        version = getattr(trustplane, "__version__", "0")
        self._provider = TracerProvider(
            resource=Resource.create(
                {"service.name": settings.service_name, "service.version": version}
            ),
            # `decision` has already decided: a span is only made for a sampled trace.
            sampler=ALWAYS_ON,
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_interval_ms)
        )
        self._tracer = self._provider.get_tracer("trustplane", version)
        self._ratio = settings.sample_ratio
        self._get_span = get_current_span
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER

    def decision(
        self, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Span | None]:
        """The root span of one decision call, continuing the trace `carrier` (the caller's
        headers, lower-case names) names in `traceparent`, if any; the trace id is in
        `TRACE_ID` meanwhile. An unsampled decision gets no span at all (None), only its trace
        id: the sampling decision is taken here, before any span object, because making
        non-recording spans for the 99% cost each decision tens of µs (bench/tracing.py)."""
        parent = None
        if "traceparent" in carrier:
            parent = self._propagator.extract(carrier)
            context = self._get_span(parent).get_span_context()
            if not context.is_valid:
                parent = None  # a malformed header starts a new trace, as the spec says
            elif not context.trace_flags.sampled:
                return _Unsampled(format(context.trace_id, "032x"))
        if parent is None and self._ratio < 1.0 and random.random() >= self._ratio:
            return _Unsampled(format(random.getrandbits(128) or 1, "032x"))
        return self._sampled(name, parent, attributes)

    @contextlib.contextmanager
    def _sampled(self, name: str, parent: Any, attributes: dict[str, Any]) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            name, context=parent, kind=self._server, attributes=attributes
        ) as span:
            token = TRACE_ID.set(format(span.get_span_context().trace_id, "032x"))
            recording = _RECORDING.set(True)
            try:
                yield span
            finally:
                _RECORDING.reset(recording)
                TRACE_ID.reset(token)

    def span(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A child of the current span (`with tracing.span("trustplane.evaluate") as span`);
        nothing (and None) outside a sampled decision."""
        if not _RECORDING.get():
            return _NO_SPAN
        return self._tracer.start_as_current_span(name)

    def shutdown(self) -> None:
        """Send what is batched and stop (at the serving process's stop)."""
        self._provider.shutdown()


def trace_carrier(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace-context headers of a request's headers (names lower-case)."""
    return {name: headers[name] for name in CONTEXT_HEADERS if name in headers}
