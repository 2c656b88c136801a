"""OpenTelemetry spans and metrics for each stream, when ``opentelemetry-api`` is installed.

:func:`otel_observer` returns a :class:`~._metrics.StreamObserver` (or ``None`` when the
``opentelemetry`` package cannot be imported: then nothing else happens). It uses the OTel
*API* only (``trace.get_tracer("llmpipe")``, ``metrics.get_meter("llmpipe")``, or the providers
given in :class:`~._context.ServerConfig`): without an SDK configured by the application every
call is a no-op, the usual pattern for an instrumented library.

Per stream (recorded at its start and its end only, never per token):

* a span ``llmpipe.stream`` (kind ``INTERNAL``; a child of the current span, if any) with the
  attributes ``llmpipe.route``, ``llmpipe.stream.kind``, ``llmpipe.provider``,
  ``llmpipe.model`` (when known) and, at the end, ``llmpipe.reason`` (``done``, ``error``,
  ``cancelled``, ``consumer_gone``), ``llmpipe.events``, ``llmpipe.text_chars``,
  ``llmpipe.time_to_first_token_s`` (when there was text) and ``llmpipe.error.kind``; its
  status is ``ERROR`` for an error ending;
* the metrics ``llmpipe.streams`` (counter, attributes route and reason),
  ``llmpipe.time_to_first_token`` (histogram, seconds), ``llmpipe.text_chars`` (counter) and
  ``llmpipe.errors`` (counter, attribute ``kind``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._metrics import StreamRecord

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.trace import Tracer

__all__ = ["INSTRUMENTATION_NAME", "SPAN_NAME", "OTelStreams", "otel_observer"]

INSTRUMENTATION_NAME: Final = "llmpipe"
SPAN_NAME: Final = "llmpipe.stream"


def otel_observer(tracer_provider: Any = None, meter_provider: Any = None) -> OTelStreams | None:
    """The OpenTelemetry observer, or ``None`` when ``opentelemetry`` is not importable.

    ``tracer_provider``/``meter_provider``: OTel SDK (or API) providers to use instead of the
    global ones (``None``: the global providers, resolved at each use by the API's proxies).
    """
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return None
    tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
    meter = metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
    return OTelStreams(
        tracer,
        streams=meter.create_counter(
            "llmpipe.streams", unit="{stream}", description="Streams served, by route and reason."
        ),
        time_to_first_token=meter.create_histogram(
            "llmpipe.time_to_first_token",
            unit="s",
            description="From the request to the first text delta.",
        ),
        text_chars=meter.create_counter(
            "llmpipe.text_chars", unit="{char}", description="Characters of text streamed."
        ),
        errors=meter.create_counter(
            "llmpipe.errors", unit="{stream}", description="Streams that ended with an error."
        ),
    )


class OTelStreams:
    """A :class:`~._metrics.StreamObserver` that records spans and metrics (see the module)."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        streams: Counter,
        time_to_first_token: Histogram,
        text_chars: Counter,
        errors: Counter,
    ) -> None:
        from opentelemetry.trace import Span, Status, StatusCode

        self._tracer = tracer
        self._streams = streams
        self._ttft = time_to_first_token
        self._text_chars = text_chars
        self._errors = errors
        self._span_type = Span
        self._status = Status
        self._error_code = StatusCode.ERROR

    def stream_started(self, record: StreamRecord) -> object:
        attributes: dict[str, str] = {
            "llmpipe.route": record.route,
            "llmpipe.stream.kind": record.kind,
        }
        if record.provider is not None:
            attributes["llmpipe.provider"] = record.provider
        if record.model is not None:
            attributes["llmpipe.model"] = record.model
        return self._tracer.start_span(SPAN_NAME, attributes=attributes)

    def stream_ended(self, record: StreamRecord, token: object) -> None:
        reason = record.reason or "done"
        common = {"llmpipe.route": record.route}
        if record.provider is not None:
            common["llmpipe.provider"] = record.provider
        self._streams.add(1, {**common, "llmpipe.reason": reason})
        if record.text_chars:
            self._text_chars.add(record.text_chars, common)
        if record.time_to_first_token is not None:
            self._ttft.record(record.time_to_first_token, common)
        if reason == "error":
            self._errors.add(1, {**common, "kind": record.error_kind or "unknown"})
        if not isinstance(token, self._span_type):
            return
        span = token
        if span.is_recording():
            span.set_attributes(
                {
                    "llmpipe.reason": reason,
                    "llmpipe.events": record.events,
                    "llmpipe.text_chars": record.text_chars,
                }
            )
            if record.time_to_first_token is not None:
                span.set_attribute("llmpipe.time_to_first_token_s", record.time_to_first_token)
            if reason == "error":
                kind = record.error_kind or "unknown"
                span.set_attribute("llmpipe.error.kind", kind)
                span.set_status(self._status(self._error_code, kind))
        span.end()
