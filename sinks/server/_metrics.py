"""Prometheus metrics of one HTTP app, in a registry of its own (never the global one).

Counters and histograms are updated by the stream tasks as things happen; the buffer gauges and
the producer-blocked counter are computed at scrape time (and the text sent, kept as plain
counts) from the live streams' channel
statistics (:class:`LiveStreams`), so they are exact at every scrape and cost nothing between
scrapes. Everything runs in the app's trio thread: no locking is needed, and a scrape never
blocks the event loop for longer than one pass over the live streams.

Per-stream telemetry goes through one small interface, :class:`StreamObserver`: a stream route
calls :meth:`Metrics.begin_stream` when it starts and :meth:`Metrics.end_stream` when it ends
(never per token), with a :class:`StreamRecord` it fills in meanwhile. :class:`Metrics` is the
Prometheus observer; others (OpenTelemetry, see ``_otel.py``) are added to
:attr:`Metrics.observers`. An observer that raises is logged and never breaks a stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Final, Literal, Protocol

import attrs
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline import EventReceiver

from ..speech import Speaker, SpeakerStatistics

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "LiveStreams",
    "Metrics",
    "StreamKind",
    "StreamObserver",
    "StreamReason",
    "StreamRecord",
]

log = logging.getLogger("llmpipe.http")

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_RTF_BUCKETS: Final = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


StreamKind = Literal["live", "generation"]
StreamReason = Literal["done", "error", "cancelled", "consumer_gone"]


@attrs.define(eq=False)
class StreamRecord:
    """One stream as the observers see it: created at its start, filled in by the route while
    it runs (plain attribute updates), read by the observers at its end.

    ``time_to_first_token`` is in seconds from ``started_at`` (the request; a
    ``trio.current_time()`` value) to the first text delta (handed to the client for ``live``,
    emitted by the producer for ``generation``). ``reason`` is ``None`` until the end.
    """

    kind: StreamKind
    route: str
    provider: str | None
    model: str | None
    started_at: float
    reason: StreamReason | None = None
    events: int = 0
    text_chars: int = 0
    time_to_first_token: float | None = None
    error_kind: str | None = None
    ended: bool = False
    tokens: list[tuple[StreamObserver, object]] = attrs.Factory(list)

    def fail(self, kind: str) -> None:
        """Record an error ending of kind ``kind`` (the first one wins)."""
        if self.reason is None:
            self.reason = "error"
            self.error_kind = kind


class StreamObserver(Protocol):
    """Something told about each stream at its start and at its end (never in between).

    ``stream_started`` returns a token (e.g. a span) that is handed back to ``stream_ended``.
    """

    def stream_started(self, record: StreamRecord) -> object: ...

    def stream_ended(self, record: StreamRecord, token: object) -> None: ...


@attrs.define(eq=False)
class LiveStreams:
    """The channels of the streams being served now, plus totals of the ones that ended."""

    channels: set[EventReceiver] = attrs.Factory(set)
    blocked_seconds_done: float = 0.0
    coalesced_done: int = 0
    direct_done: int = 0
    speakers: set[Speaker] = attrs.Factory(set)  # the speech turns playing now

    def add(self, receiver: EventReceiver) -> None:
        self.channels.add(receiver)

    def remove(self, receiver: EventReceiver) -> None:
        """Forget ``receiver``, folding its counters into the totals. Idempotent."""
        if receiver in self.channels:
            self.channels.discard(receiver)
            st = receiver.statistics()
            self.blocked_seconds_done += st.blocked_seconds
            self.coalesced_done += st.items_coalesced
            self.direct_done += st.items_direct


class _LiveCollector(Collector):
    def __init__(self, live: LiveStreams) -> None:
        self._live = live

    def collect(self) -> Iterable[Metric]:
        stats = [r.statistics() for r in self._live.channels]
        yield GaugeMetricFamily(
            "llmpipe_buffer_bytes",
            "Bytes of text queued for the clients of live streams (sum over streams).",
            value=sum(s.bytes_queued for s in stats),
        )
        yield GaugeMetricFamily(
            "llmpipe_buffer_items",
            "Events queued for the clients of live streams (sum over streams).",
            value=sum(s.items_queued for s in stats),
        )
        yield GaugeMetricFamily(
            "llmpipe_buffer_fill_ratio_max",
            "The fullest live stream's buffer, 0 to 1.",
            value=max((s.fill_ratio for s in stats), default=0.0),
        )
        yield CounterMetricFamily(
            "llmpipe_producer_blocked_seconds",
            "Seconds pipelines waited for a slow client (backpressure), ended and live streams.",
            value=self._live.blocked_seconds_done + sum(s.blocked_seconds for s in stats),
        )
        yield GaugeMetricFamily(
            "llmpipe_speech_seconds_ahead",
            "Seconds of audio synthesised and not yet played, summed over live speech turns.",
            value=sum(sp.statistics().seconds_ahead for sp in self._live.speakers),
        )
        yield CounterMetricFamily(
            "llmpipe_deltas_coalesced",
            "Text deltas merged into a queued delta because the client lagged.",
            value=self._live.coalesced_done + sum(s.items_coalesced for s in stats),
        )
        yield CounterMetricFamily(
            "llmpipe_events_written_directly",
            "Events of live streams written by the producer's task itself (the client kept up: "
            "no hop through the stream's buffer).",
            value=self._live.direct_done + sum(s.items_direct for s in stats),
        )


class _SentCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        yield CounterMetricFamily(
            "llmpipe_text_deltas",
            "Text deltas sent to clients (after coalescing).",
            value=m.text_deltas,
        )
        yield CounterMetricFamily(
            "llmpipe_text_chars", "Characters of text sent to clients.", value=m.text_chars
        )


@attrs.define(eq=False, init=False)
class Metrics:
    """The app's metrics. Build one per app; :meth:`render` gives the exposition text."""

    registry: CollectorRegistry
    live: LiveStreams
    streams_active: Gauge
    streams_total: Counter
    generations_active: Gauge
    time_to_first_token: Histogram
    text_deltas: int
    """Text deltas sent to clients (after coalescing): a plain count, exported at scrape time
    (``llmpipe_text_deltas``): a Prometheus counter's lock per token costs more."""
    text_chars: int
    """Characters of text sent to clients (``llmpipe_text_chars``), like :attr:`text_deltas`."""
    disconnects: Counter
    frozen_clients: Counter
    errors: Counter
    requests_rejected: Counter
    expected_ends: Counter
    speech_time_to_first_audio: Histogram
    speech_realtime_factor: Histogram
    speech_underruns: Counter
    speech_chars: Counter
    speech_audio_seconds: Counter
    observers: list[StreamObserver]

    def __init__(self) -> None:
        self.observers = []
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.live = LiveStreams()
        r.register(_LiveCollector(self.live))
        self.streams_active = Gauge(
            "llmpipe_streams_active", "Event streams being served now.", registry=r
        )
        self.streams_total = Counter(
            "llmpipe_streams", "Event streams served.", ["kind"], registry=r
        )
        self.generations_active = Gauge(
            "llmpipe_generations_active",
            "Resumable generations running in this process.",
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "llmpipe_time_to_first_token_seconds",
            "From the request to the first text delta handed to the client.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.text_deltas = self.text_chars = 0
        r.register(_SentCollector(self))
        self.disconnects = Counter(
            "llmpipe_client_disconnects",
            "Clients that went away before their stream ended.",
            registry=r,
        )
        self.frozen_clients = Counter(
            "llmpipe_frozen_clients",
            "Streams given up on because their client, still connected, read nothing for the "
            "send deadline (send_timeout).",
            registry=r,
        )
        self.errors = Counter(
            "llmpipe_errors", "Streams that ended with an error, by kind.", ["kind"], registry=r
        )
        self.requests_rejected = Counter(
            "llmpipe_requests_rejected",
            "Requests refused before streaming, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.expected_ends = Counter(
            "llmpipe_expected_ends",
            "Streams and connections that ended early for an expected reason (the client left, "
            "an interrupt, shutdown, idle cancel, a connection closed for its client's "
            "behaviour), by reason.",
            ["reason"],
            registry=r,
        )

        self.speech_time_to_first_audio = Histogram(
            "llmpipe_speech_time_to_first_audio_seconds",
            "Speech turns: from the request to the first audio at the player.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.speech_realtime_factor = Histogram(
            "llmpipe_speech_realtime_factor",
            "Speech turns: the engine's synthesis time per second of audio.",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.speech_underruns = Counter(
            "llmpipe_speech_underruns",
            "Times playback ran dry before the end of a speech turn.",
            registry=r,
        )
        self.speech_chars = Counter(
            "llmpipe_speech_chars", "Characters given to speech engines.", registry=r
        )
        self.speech_audio_seconds = Counter(
            "llmpipe_speech_audio_seconds", "Seconds of speech played to clients.", registry=r
        )

    def speech_ended(self, record: StreamRecord, stats: SpeakerStatistics) -> None:
        """Count a finished (or interrupted) speech turn. The audio queued ahead of live turns
        is the ``llmpipe_speech_seconds_ahead`` gauge (:attr:`live`)."""
        if stats.first_audio_at is not None:
            self.speech_time_to_first_audio.observe(stats.first_audio_at - record.started_at)
        if stats.realtime_factor is not None:
            self.speech_realtime_factor.observe(stats.realtime_factor)
        self.speech_underruns.inc(stats.underruns)
        self.speech_chars.inc(stats.chars_spoken)
        self.speech_audio_seconds.inc(stats.played_seconds)

    def expected_end(self, reason: str, what: str, **fields: object) -> None:
        """Count an expected early end (``llmpipe_expected_ends``) and log it as one line at
        info level: ``<what> ended: reason=<reason> k=v ...`` (the fields also go to the
        record's ``extra``, for a JSON log format). Never a traceback: these are not bugs."""
        self.expected_ends.labels(reason).inc()
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        log.info(
            "%s ended: reason=%s%s",
            what,
            reason,
            f" {text}" if text else "",
            extra={"llmpipe": {"event": f"{what}_ended", "reason": reason, **fields}},
        )

    # -- StreamObserver (Prometheus) ---------------------------------------------------------

    def stream_started(self, record: StreamRecord) -> object:
        return None  # ``streams_active`` is kept by the app's admission (``AppRuntime.admit``)

    def stream_ended(self, record: StreamRecord, token: object) -> None:
        self.streams_total.labels(record.kind).inc()
        if record.reason == "error":
            self.errors.labels(record.error_kind or "unknown").inc()

    # -- per write -----------------------------------------------------------------------------

    def sent(self, record: StreamRecord, events: int, deltas: int, chars: int) -> None:
        """Count one write to a client: ``events`` events, of which ``deltas`` text deltas
        holding ``chars`` characters. The first text of ``record`` also gives its time to
        first token (the Prometheus histogram and ``record``). Call it per write, not per
        event: with coalescing one write holds many deltas."""
        record.events += events
        if deltas:
            record.text_chars += chars
            self.text_deltas += deltas
            self.text_chars += chars
            if record.time_to_first_token is None:
                ttft = trio.current_time() - record.started_at
                record.time_to_first_token = ttft
                self.time_to_first_token.observe(ttft)

    # -- dispatch ----------------------------------------------------------------------------

    def begin_stream(
        self, kind: StreamKind, route: str, provider: str | None, model: str | None
    ) -> StreamRecord:
        """Start the record of a stream and tell every observer (this one first)."""
        record = StreamRecord(kind, route, provider, model, trio.current_time())
        for observer in (self, *self.observers):
            try:
                token = observer.stream_started(record)
            except Exception:
                log.exception("stream observer %r failed at the start", observer)
                continue
            record.tokens.append((observer, token))
        return record

    def end_stream(self, record: StreamRecord, reason: StreamReason = "done") -> None:
        """End ``record`` (``reason`` unless one was recorded) and tell the observers that saw
        its start. Idempotent."""
        if record.ended:
            return
        record.ended = True
        if record.reason is None:
            record.reason = reason
        for observer, token in record.tokens:
            try:
                observer.stream_ended(record, token)
            except Exception:
                log.exception("stream observer %r failed at the end", observer)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def names(self) -> Iterator[str]:
        """The metric family names (for tests and docs)."""
        for family in self.registry.collect():
            yield family.name
