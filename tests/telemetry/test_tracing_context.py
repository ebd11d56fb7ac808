"""`Tracing.decision` against any `traceparent` a caller may send: it never fails, always names
a trace (32 lower-case hex digits, not all zero), continues a valid header's trace, makes a
span exactly when that header (or, without one, the sample ratio) says sampled, and leaves no
trace id behind. Spans go to OpenTelemetry's in-memory exporter."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trustplane.config import TracingSettings
from trustplane.model import TRACE_ID
from trustplane.telemetry.tracing import Tracing

HEX = "0123456789abcdef"
TRACE = re.compile(r"[0-9a-f]{32}")

valid_headers = st.builds(
    lambda trace, span, flags: f"00-{trace}-{span}-{flags}",
    st.text(HEX, min_size=32, max_size=32).filter(lambda t: t != "0" * 32),
    st.text(HEX, min_size=16, max_size=16).filter(lambda s: s != "0" * 16),
    st.sampled_from(["00", "01"]),
)
any_headers = st.one_of(valid_headers, st.text(max_size=80))


def tracing(ratio: float, exporter: InMemorySpanExporter) -> Tracing:
    return Tracing(TracingSettings(enabled=True, sample_ratio=ratio), exporter=exporter)


EXPORTER = InMemorySpanExporter()
NEVER, ALWAYS = tracing(0.0, EXPORTER), tracing(1.0, EXPORTER)


@settings(max_examples=200, deadline=None)
@given(header=any_headers, always=st.booleans())
def test_any_traceparent_is_answered_with_a_trace(header: str, always: bool) -> None:
    subject = ALWAYS if always else NEVER
    with subject.decision("POST /access/v1/evaluation", {"traceparent": header}, {}) as span:
        trace_id = TRACE_ID.get()
        with subject.span("trustplane.evaluate") as child:
            assert (child is None) == (span is None)
    assert TRACE_ID.get() is None
    assert trace_id is not None and TRACE.fullmatch(trace_id) and trace_id != "0" * 32
    valid = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])", header)
    if valid is not None and valid.group(1) != "0" * 32 and valid.group(2) != "0" * 16:
        assert trace_id == valid.group(1)  # the caller's trace continues
        assert (span is not None) == (valid.group(3) == "01")  # its sampled flag decides
    else:  # no usable parent: a new trace, sampled by the ratio
        assert (span is not None) == always


def test_sampled_spans_are_exported_under_their_parent() -> None:
    exporter = InMemorySpanExporter()
    subject = tracing(0.0, exporter)
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with (
        subject.decision("GET /v1/forward-auth", {"traceparent": header}, {"a": 1}),
        subject.span("trustplane.authenticate"),
    ):
        pass
    subject.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root, child = spans["GET /v1/forward-auth"], spans["trustplane.authenticate"]
    assert format(root.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert root.parent is not None and format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert child.parent is not None and child.parent.span_id == root.context.span_id


def test_an_exporter_that_cannot_load_is_a_configuration_error(monkeypatch: Any) -> None:
    """xds-protos ships an older copy of opentelemetry-proto's modules: if it won the install,
    tracing on is refused with a line that says what to reinstall, not a traceback."""
    import sys

    from trustplane.config import ConfigError

    module = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    with pytest.raises(ConfigError, match=r"tracing\.enabled: .*opentelemetry-proto"):
        Tracing(TracingSettings(enabled=True))
