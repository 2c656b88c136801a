"""Prometheus metrics of one HTTP app, in a registry of its own (never the global one).

Counters and histograms are updated by the stream tasks as things happen; the buffer gauges and
the producer-blocked counter are computed at scrape time from the live streams' channel
statistics (:class:`LiveStreams`), so they are exact at every scrape and cost nothing between
scrapes. Everything runs in the app's trio thread: no locking is needed, and a scrape never
blocks the event loop for longer than one pass over the live streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline import EventReceiver

__all__ = ["PROMETHEUS_CONTENT_TYPE", "LiveStreams", "Metrics"]

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@attrs.define(eq=False)
class LiveStreams:
    """The channels of the streams being served now, plus totals of the ones that ended."""

    channels: set[EventReceiver] = attrs.Factory(set)
    blocked_seconds_done: float = 0.0
    coalesced_done: int = 0

    def add(self, receiver: EventReceiver) -> None:
        self.channels.add(receiver)

    def remove(self, receiver: EventReceiver) -> None:
        """Forget ``receiver``, folding its counters into the totals. Idempotent."""
        if receiver in self.channels:
            self.channels.discard(receiver)
            st = receiver.statistics()
            self.blocked_seconds_done += st.blocked_seconds
            self.coalesced_done += st.items_coalesced


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
        yield CounterMetricFamily(
            "llmpipe_deltas_coalesced",
            "Text deltas merged into a queued delta because the client lagged.",
            value=self._live.coalesced_done + sum(s.items_coalesced for s in stats),
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
    text_deltas: Counter
    text_chars: Counter
    disconnects: Counter
    errors: Counter
    requests_rejected: Counter

    def __init__(self) -> None:
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
        self.text_deltas = Counter(
            "llmpipe_text_deltas", "Text deltas sent to clients (after coalescing).", registry=r
        )
        self.text_chars = Counter(
            "llmpipe_text_chars", "Characters of text sent to clients.", registry=r
        )
        self.disconnects = Counter(
            "llmpipe_client_disconnects",
            "Clients that went away before their stream ended.",
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

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def names(self) -> Iterator[str]:
        """The metric family names (for tests and docs)."""
        for family in self.registry.collect():
            yield family.name
