"""Resumable streams: a generation that writes into the store, and readers that follow it.

A *generation* runs in the app's lifespan nursery (not in a request), so it outlives the
request that started it. Its pipeline has one sink, :class:`~pipeline.stores.StoreSink` with
policy ``spill``: a slow store never slows the model and nothing is lost. A watcher polls the
store every :data:`CANCEL_POLL_INTERVAL` s (or more often for a short ``idle_cancel_after``) and
cancels the generation when a cancel was requested (``DELETE``, possibly from another server
process) or when no reader touched the stream for ``config.idle_cancel_after`` s. A local
``DELETE`` also cancels it directly. On cancellation the ``StoreSink`` appends a terminal
``Error`` (kind ``"cancelled"``) so readers learn the end.

A *reader* (``GET /v1/streams/{id}/events``) never touches the generation: it replays the store
from ``after`` (the ``Last-Event-ID``) in pieces of :data:`READ_LIMIT` events, then follows it
live with ``wait``. Each frame's ``id`` is the event's ``seq`` and ``after`` advances to the last
one written, so a client that reconnects with the last id it saw gets every event exactly once.
While following, a task touches the store every second or so, so the watcher sees a reader.

``on_disconnect`` (per request): ``"continue"`` (the default) keeps generating into the store
while nobody reads, for a later resume (``idle_cancel_after`` still bounds a generation nobody
has read for that long); ``"cancel"`` cancels it once it has had a reader and no reader has
touched it for two touch intervals (its readers left, on whichever process they were). A
cancelled generation's events stay readable; its final ``cancelled`` error carries the number
of characters stored before it in ``partial_chars``.


Crashes: the stream is created with an owner lease (``config.owner_lease``) that the watcher
renews; the generation's :class:`~pipeline.stores.StoreSink` retries an unreachable store for
``config.store_retry_for`` s and then ends the stream with a retryable ``store`` error once the
store answers. If the owning process dies (or stays cut off), the lease runs out and the next
reader that finds nothing to send, or a ``DELETE``, ends the stream (:func:`end_orphan`), in
whichever process it runs: readers never get heartbeats forever.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Final

import attrs
import trio

from pipeline import (
    Emit,
    Error,
    Event,
    Pipeline,
    PipelineStatistics,
    Producer,
    Route,
    RunningPipeline,
    TextDelta,
    error_event,
    is_terminal,
)
from pipeline.stores import StoreError, StoreSink, StreamInfo, StreamNotFound, StreamStore

from ._context import StreamRequest
from ._metrics import StreamRecord
from ._runtime import AppRuntime, Generation
from ._stream import StreamWriter, begin_stream

__all__ = [
    "CANCEL_POLL_INTERVAL",
    "READ_LIMIT",
    "end_orphan",
    "follow_stream",
    "orphaned_end",
    "run_generation",
]

log = logging.getLogger("llmpipe.http")

READ_LIMIT: Final = 256
CANCEL_POLL_INTERVAL: Final = 0.25
END_TIMEOUT: Final = 5.0
MAX_SPILL_BYTES: Final = 64 * 1024 * 1024
"""A generation may run this far ahead of a slow store (spilled to a temporary file) before
the model is made to wait."""


@attrs.define(eq=False)
class _ErrorsAsEvents:
    """Wraps a producer so that a failure, even before its first event, becomes an ``Error``
    event (which the store keeps) instead of an exception that cancels the pipeline."""

    inner: Producer

    async def stream(self, emit: Emit, /) -> None:
        try:
            await self.inner.stream(emit)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise  # the pipeline ended (after a terminal event): nothing more to say
        except Exception as exc:
            await emit(error_event(exc))


def _poll_interval(idle_cancel_after: float) -> float:
    return max(0.01, min(CANCEL_POLL_INTERVAL, idle_cancel_after / 4))


def touch_interval(idle_cancel_after: float) -> float:
    """How often a reader touches the stream: well within ``idle_cancel_after``, and at least
    once a second (a generation with ``on_disconnect: "cancel"`` counts its readers as gone two
    intervals after their last touch)."""
    return max(0.01, min(1.0, idle_cancel_after / 4))


async def _watch(
    runtime: AppRuntime, store: StreamStore, gen: Generation, started_wall: float
) -> None:
    """Renew the owner lease; cancel ``gen`` on a cancel request or when nobody reads; return
    once the stream ended."""
    idle_after = runtime.config.idle_cancel_after
    lease = runtime.config.owner_lease
    interval = min(_poll_interval(idle_after), lease / 3)
    renewed_at = trio.current_time()
    while True:
        await trio.sleep(interval)
        try:
            if trio.current_time() - renewed_at >= lease / 3:
                await store.renew_lease(gen.stream_id, lease)
                renewed_at = trio.current_time()
            info = await store.info(gen.stream_id)
        except StreamNotFound:
            gen.cancel("deleted")
            return
        except StoreError as exc:  # e.g. Redis unreachable for a moment: try again later
            log.warning("stream %s: store info failed: %r", gen.stream_id, exc)
            continue
        if info.ended:
            return
        if info.cancel_requested:
            gen.cancel("cancelled")
            return
        if (
            gen.on_disconnect == "cancel"
            and info.last_reader_at is not None
            and time.time() - info.last_reader_at > 2 * touch_interval(idle_after)
        ):
            log.info("stream %s: its readers left, cancelling", gen.stream_id)
            gen.cancel("disconnected")
            return
        last = info.last_reader_at if info.last_reader_at is not None else started_wall
        if time.time() - last > idle_after:
            gen.cancel("idle")
            return


async def run_generation(
    runtime: AppRuntime,
    store: StreamStore,
    stream_id: str,
    request: StreamRequest,
    client: str = "unknown",
    *,
    task_status: trio.TaskStatus[Generation] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one generation into ``store`` (the stream must exist). Runs in the lifespan nursery;
    never raises (failures are stored as the stream's ``Error`` event). Cancelled by its
    :class:`Generation` (``DELETE``, idle) or by the lifespan ending (shutdown)."""
    gen = Generation(stream_id, client, request.on_disconnect or "continue")
    runtime.generations[stream_id] = gen
    runtime.metrics.generations_active.inc()
    record = begin_stream(runtime, "generation", "/v1/streams", request)
    started_wall = time.time()
    task_status.started(gen)
    try:
        await _generate(runtime, store, gen, request, started_wall, record)
    except Exception:  # never let one generation take the lifespan nursery down
        log.exception("stream %s: generation failed", stream_id)
        record.fail("internal")
    finally:
        # Telemetry: a generation that did not finish (no reason recorded) was cancelled.
        runtime.metrics.end_stream(record, "cancelled")
        with trio.CancelScope(shield=True):
            # Normally the stream has ended already (its terminal event, or the StoreSink's
            # "cancelled" end); if not, readers must still learn the end.
            if gen.reason is not None:
                end = _cancelled(gen)
                runtime.metrics.expected_end(gen.reason, "generation", id=stream_id, client=client)
            else:
                end = Error(kind="incomplete", message="the generation stopped before its end")
            await _end_stream(store, stream_id, end)
            runtime.generations.pop(stream_id, None)
            runtime.metrics.generations_active.dec()


def _cancelled(gen: Generation) -> Error:
    """The stream's end when ``gen`` was cancelled: why, and (after a shutdown) retryable."""
    reason = gen.reason or "cancelled"
    return Error(
        kind="cancelled",
        message=f"the generation was cancelled ({reason})",
        retryable=reason == "shutdown",
    )


async def _generate(
    runtime: AppRuntime,
    store: StreamStore,
    gen: Generation,
    request: StreamRequest,
    started_wall: float,
    record: StreamRecord,
) -> None:
    stream_id = gen.stream_id
    with gen.scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, runtime, store, gen, started_wall)
            try:
                async with runtime.factory(request) as producer:
                    sink = StoreSink(
                        store,
                        stream_id,
                        cancel_event=lambda: _cancelled(gen),
                        retry_for=runtime.config.store_retry_for,
                    )
                    pipeline = Pipeline(
                        _ErrorsAsEvents(producer),
                        sinks=[
                            Route(
                                sink, policy="spill", max_spill_bytes=MAX_SPILL_BYTES, name="store"
                            )
                        ],
                    )
                    running: RunningPipeline | None = None
                    finished = False
                    try:
                        async with pipeline.open() as running:
                            pass
                        finished = True
                    finally:
                        if running is not None:
                            _record_stats(record, running.statistics(), finished=finished)
            except Exception as exc:
                # The factory failed (or the pipeline did): record it as the stream's end.
                log.warning("stream %s failed: %r", stream_id, exc)
                ev = error_event(exc)
                record.fail(ev.kind)
                await _end_stream(store, stream_id, ev)
            nursery.cancel_scope.cancel()


def _record_stats(record: StreamRecord, stats: PipelineStatistics, *, finished: bool) -> None:
    """Copy a generation's final statistics into its telemetry record. The reason only when the
    pipeline ``finished`` (a cancelled one is recorded as ``cancelled`` by its caller)."""
    record.events = stats.events_out
    record.text_chars = stats.text_chars_out
    if stats.time_to_first_text is not None:
        first_text_at = stats.started_at + stats.time_to_first_text
        record.time_to_first_token = first_text_at - record.started_at
    if not finished:
        return
    if stats.reason == "error":
        record.fail((stats.error or "unknown").split(":", 1)[0])
    elif stats.reason in ("done", "cancelled", "consumer_gone"):
        record.reason = stats.reason


async def _end_stream(store: StreamStore, stream_id: str, event: Error) -> None:
    """Append ``event`` as the stream's terminal event unless it has ended (best effort)."""
    with trio.move_on_after(END_TIMEOUT):
        try:
            info = await store.info(stream_id)
            if not info.ended:
                await store.append(stream_id, [attrs.evolve(event, seq=info.last_seq + 1)])
        except Exception as exc:  # best effort (a store that is down must not crash us)
            log.warning("stream %s: could not store its end: %r", stream_id, exc)


def orphaned_end(cancelled: bool = False, partial_chars: int = 0) -> Error:
    """The terminal event stored into an orphaned stream (see :func:`end_orphan`);
    ``partial_chars`` is the text the stream holds."""
    if cancelled:
        return Error(
            kind="cancelled",
            message="the generation was cancelled (it had no owner)",
            partial_chars=partial_chars,
        )
    return Error(
        kind="incomplete",
        message="the generation stopped: the process running it or the stream store failed",
        retryable=True,
        partial_chars=partial_chars,
    )


async def _stored_chars(store: StreamStore, stream_id: str) -> int:
    """The characters of text a stream holds, read back :data:`READ_LIMIT` events at a time (an
    orphan is ended once, by one reader: this rare read costs what one replay costs)."""
    chars, after = 0, 0
    while True:
        events = await store.read(stream_id, after, READ_LIMIT)
        if not events:
            return chars
        chars += sum(len(e.text) for e in events if isinstance(e, TextDelta))
        after = events[-1].seq


async def end_orphan(store: StreamStore, info: StreamInfo, *, cancelled: bool = False) -> bool:
    """End the stream of ``info`` if nobody owns it any more (its owner lease ran out): a
    reader or ``DELETE`` in any process calls this, and the store makes sure only one of them
    stores the end. ``True`` if the stream is ended now (by this call or before)."""
    if info.ended:
        return True
    if not info.orphaned:
        return False
    chars = await _stored_chars(store, info.stream_id)
    ended = await store.end_if_orphaned(info.stream_id, orphaned_end(cancelled, chars))
    if ended:
        log.warning("stream %s: no live owner, ended it", info.stream_id)
    return ended or (await store.info(info.stream_id)).ended


async def follow_stream(
    runtime: AppRuntime, store: StreamStore, stream_id: str, after: int, writer: StreamWriter
) -> None:
    """Write the stream's events after ``after`` to ``writer``: replay, then follow live, until
    the terminal event. Sends a heartbeat comment first and whenever idle for
    ``heartbeat_interval``. Cancel-safe: cancelling loses nothing in the store."""
    heartbeat = runtime.config.heartbeat_interval
    metrics = runtime.metrics
    await writer.write(writer.heartbeat())

    async def toucher() -> None:
        interval = touch_interval(runtime.config.idle_cancel_after)
        while True:
            try:
                await store.touch(stream_id)
            except StreamNotFound:
                return
            await trio.sleep(interval)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(toucher)
        while True:
            events: list[Event] = await store.read(stream_id, after, READ_LIMIT)
            if not events:
                events = await store.wait(stream_id, after, heartbeat, READ_LIMIT)
            if not events:
                info = await store.info(stream_id)
                if info.ended and info.last_seq <= after:
                    break  # the client has seen the end already
                if await end_orphan(store, info):
                    continue  # its end is stored now: read it
                await writer.write(writer.heartbeat())
                continue
            end = False
            frames = []
            for ev in events:
                frames.append(writer.frame(ev))
                if ev.type == "text":
                    metrics.text_deltas += 1
                if is_terminal(ev):
                    end = True
                    break
            await writer.write(b"".join(frames))
            after = events[-1].seq
            if end:
                break
        nursery.cancel_scope.cancel()


def parse_last_event_id(value: str | None) -> int:
    """``Last-Event-ID`` (or ``?last_event_id=``) as a non-negative seq; ``ValueError`` if not."""
    if value is None or not value.strip():
        return 0
    n = int(value.strip())
    if n < 0 or not math.isfinite(n):
        raise ValueError(value)
    return n
