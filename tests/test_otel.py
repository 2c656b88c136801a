"""OpenTelemetry spans and metrics per stream (``sinks/server/_otel.py``), on a real server.

Each test gets its own SDK providers (an in-memory span exporter and metric reader), passed to
the app through ``ServerConfig``: the process's global providers are never touched. The SDK is a
dev dependency: without it this module fails to import (a failure, not a skip).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import attrs
import httpx
import pytest
import trio
from http_kit import eventually, factory_of, running
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pipeline import Done, Event, Producer, ProducerConnectionError, TextDelta
from pipeline.testing import CountingProducer, ScriptedProducer, Step
from sinks.server import ServerConfig, create_app, get_runtime
from sinks.server._otel import SPAN_NAME, otel_observer

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "model": "m1"}
TEXT = "Hello there, streaming world"


@attrs.define(eq=False)
class OTel:
    """SDK providers that keep everything in memory."""

    spans: InMemorySpanExporter = attrs.Factory(InMemorySpanExporter)
    reader: InMemoryMetricReader = attrs.Factory(InMemoryMetricReader)
    tracer_provider: TracerProvider = attrs.Factory(TracerProvider)
    meter_provider: MeterProvider = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def config(self, **kwargs: Any) -> ServerConfig:
        return ServerConfig(
            otel_tracer_provider=self.tracer_provider,
            otel_meter_provider=self.meter_provider,
            **kwargs,
        )

    def stream_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == SPAN_NAME]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def total(self, name: str, **attributes: str) -> float:
        """The sum of counter ``name`` over the points that have ``attributes``."""
        return float(
            sum(
                p.value
                for p in self.points(name)
                if all(p.attributes.get(k) == v for k, v in attributes.items())
            )
        )


@pytest.fixture
def otel() -> OTel:
    return OTel()


async def test_live_stream_span_and_metrics(otel: OTel) -> None:
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text(TEXT)), otel.config())
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + "/v1/stream", json=BODY)
        assert resp.status_code == 200
        await eventually(lambda: len(otel.stream_spans()) == 1)
    (span,) = otel.stream_spans()
    attrs_ = dict(span.attributes or {})
    assert attrs_["llmpipe.route"] == "/v1/stream"
    assert attrs_["llmpipe.provider"] == "default"
    assert attrs_["llmpipe.model"] == "m1"
    assert attrs_["llmpipe.reason"] == "done"
    assert attrs_["llmpipe.text_chars"] == len(TEXT)
    # the events written to the client: deltas (merged while the client lagged) and ``done``
    events = attrs_["llmpipe.events"]
    assert isinstance(events, int)
    assert 2 <= events <= len(TEXT.split()) + 1
    ttft = attrs_["llmpipe.time_to_first_token_s"]
    assert isinstance(ttft, float)
    assert 0 < ttft < 5
    assert "llmpipe.error.kind" not in attrs_
    assert span.status.status_code is StatusCode.UNSET
    assert otel.total("llmpipe.streams", **{"llmpipe.reason": "done"}) == 1
    assert otel.total("llmpipe.text_chars", **{"llmpipe.route": "/v1/stream"}) == len(TEXT)
    (hist,) = otel.points("llmpipe.time_to_first_token")
    assert hist.count == 1
    assert otel.points("llmpipe.errors") == []
    # Prometheus goes on as before, through the same interface.
    text = get_runtime(app).metrics.render().decode()
    assert 'llmpipe_streams_total{kind="live"} 1.0' in text


async def test_live_error_stream(otel: OTel) -> None:
    steps: list[Step | Event] = [
        TextDelta("partial "),
        Step(raise_=ProducerConnectionError("reset by peer")),
    ]
    app = create_app(factory_of(lambda r: ScriptedProducer(steps)), otel.config())
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + "/v1/stream", json=BODY)
        assert resp.status_code == 200
        assert "event: error" in resp.text
        await eventually(lambda: len(otel.stream_spans()) == 1)
    (span,) = otel.stream_spans()
    attrs_ = dict(span.attributes or {})
    assert attrs_["llmpipe.reason"] == "error"
    assert attrs_["llmpipe.error.kind"] == "connection"
    assert attrs_["llmpipe.text_chars"] == len("partial ")
    assert span.status.status_code is StatusCode.ERROR
    assert otel.total("llmpipe.errors", kind="connection") == 1
    assert otel.total("llmpipe.streams", **{"llmpipe.reason": "error"}) == 1
    text = get_runtime(app).metrics.render().decode()
    assert 'llmpipe_errors_total{kind="connection"} 1.0' in text


async def test_failure_before_first_event(otel: OTel) -> None:
    steps = [Step(raise_=ProducerConnectionError("refused"))]
    app = create_app(factory_of(lambda r: ScriptedProducer(steps)), otel.config())
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + "/v1/stream", json=BODY)
        assert resp.status_code == 503
        await eventually(lambda: len(otel.stream_spans()) == 1)
    (span,) = otel.stream_spans()
    assert span.attributes is not None
    assert span.attributes["llmpipe.reason"] == "error"
    assert span.attributes["llmpipe.error.kind"] == "connection"
    assert "llmpipe.time_to_first_token_s" not in span.attributes
    assert span.status.status_code is StatusCode.ERROR
    assert otel.points("llmpipe.time_to_first_token") == []


async def test_client_gone(otel: OTel) -> None:
    steps: list[Step | Event] = [TextDelta("a"), Step(TextDelta("b"), delay=30), Done()]
    app = create_app(factory_of(lambda r: ScriptedProducer(steps)), otel.config())
    async with running(app) as url, httpx.AsyncClient() as client:
        async with client.stream("POST", url + "/v1/stream", json=BODY) as resp:
            async for chunk in resp.aiter_raw():
                if b'"text":"a"' in chunk:
                    break
        await eventually(lambda: len(otel.stream_spans()) == 1)
    (span,) = otel.stream_spans()
    assert span.attributes is not None
    assert span.attributes["llmpipe.reason"] == "consumer_gone"
    assert span.status.status_code is StatusCode.UNSET


async def test_resumable_generation(otel: OTel) -> None:
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text(TEXT)), otel.config())
    async with running(app) as url, httpx.AsyncClient() as client:
        created = (await client.post(url + "/v1/streams", json=BODY)).json()
        body = (await client.get(url + created["events_url"])).text
        assert "event: done" in body
        await eventually(lambda: len(otel.stream_spans()) == 1)
    (span,) = otel.stream_spans()
    attrs_ = dict(span.attributes or {})
    assert attrs_["llmpipe.route"] == "/v1/streams"
    assert attrs_["llmpipe.stream.kind"] == "generation"
    assert attrs_["llmpipe.reason"] == "done"
    assert attrs_["llmpipe.text_chars"] == len(TEXT)
    assert attrs_["llmpipe.events"] == len(TEXT.split()) + 1
    assert isinstance(attrs_["llmpipe.time_to_first_token_s"], float)
    assert otel.total("llmpipe.streams", **{"llmpipe.route": "/v1/streams"}) == 1


async def test_resumable_error_and_cancel(otel: OTel) -> None:
    failing: list[Step | Event] = [TextDelta("x"), Step(raise_=ProducerConnectionError("reset"))]
    producers: list[Producer] = [ScriptedProducer(failing), CountingProducer(delay=0.005)]
    app = create_app(factory_of(lambda r: producers.pop(0)), otel.config())
    async with running(app) as url, httpx.AsyncClient() as client:
        await client.post(url + "/v1/streams", json=BODY)
        await eventually(lambda: len(otel.stream_spans()) == 1)
        created = (await client.post(url + "/v1/streams", json=BODY)).json()
        await trio.sleep(0.05)
        assert (await client.delete(url + f"/v1/streams/{created['id']}")).status_code == 202
        await eventually(lambda: len(otel.stream_spans()) == 2)
    failed, cancelled = otel.stream_spans()
    assert failed.attributes is not None
    assert failed.attributes["llmpipe.reason"] == "error"
    assert failed.attributes["llmpipe.error.kind"] == "connection"
    assert failed.status.status_code is StatusCode.ERROR
    assert cancelled.attributes is not None
    assert cancelled.attributes["llmpipe.reason"] == "cancelled"
    events = cancelled.attributes["llmpipe.events"]
    assert isinstance(events, int)
    assert events > 0
    assert otel.total("llmpipe.errors", kind="connection") == 1
    assert otel.total("llmpipe.streams", **{"llmpipe.reason": "cancelled"}) == 1


async def test_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``opentelemetry`` package: no observer, and the app streams as usual."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import raises ImportError
    assert otel_observer() is None
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text(TEXT)))
    assert get_runtime(app).metrics.observers == []
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + "/v1/stream", json=BODY)
    last = [line for line in resp.text.splitlines() if line.startswith("data:")][-1]
    assert json.loads(last.removeprefix("data:"))["type"] == "done"


async def test_websocket_turn_span(otel: OTel) -> None:
    from httpx_ws import aconnect_ws

    app = create_app(factory_of(lambda r: ScriptedProducer.from_text(TEXT)), otel.config())
    async with running(app) as url, httpx.AsyncClient() as client:
        async with aconnect_ws(url + "/v1/ws", client) as ws:
            await ws.send_json({"type": "request", **BODY})
            while (await ws.receive_json())["type"] != "done":
                pass
        await eventually(lambda: len(otel.stream_spans()) == 1)
    (span,) = otel.stream_spans()
    attrs_ = dict(span.attributes or {})
    assert attrs_["llmpipe.route"] == "/v1/ws"
    assert attrs_["llmpipe.reason"] == "done"
    assert attrs_["llmpipe.text_chars"] == len(TEXT)
    assert otel.total("llmpipe.streams", **{"llmpipe.route": "/v1/ws"}) == 1
