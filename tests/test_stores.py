"""The StreamStore contract, run on every implementation; plus StoreSink and each store's own
behaviour (MemoryStore budgets and expiry under MockClock, RedisStore across clients).

Contract tests run on real time (RedisStore's ``wait`` is a server-side ``XREAD BLOCK``), with
short timeouts; MemoryStore-only tests use ``autojump_clock``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import pipeline
from pipeline import Done, Error, Event, Route, TextDelta
from pipeline.producers import ScriptedProducer, Step
from pipeline.stores import (
    ALLOCATOR_SLACK,
    MemoryStore,
    RedisStore,
    StoreError,
    StoreFull,
    StoreSink,
    StoreUnavailable,
    StreamEnded,
    StreamInfo,
    StreamNotFound,
    StreamStore,
    open_store,
    stored_nbytes,
)

OpenStore = Callable[..., AbstractAsyncContextManager[StreamStore]]

MAX_EVENTS = 20


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return ("redis", url)
    return ("memory", None)


@pytest.fixture
def open_store_(backend: tuple[str, str | None]) -> OpenStore:
    """``async with open_store_(**budgets) as store``: a fresh store of the backend under test
    (for Redis: its own client and key prefix, so tests never see each other's keys)."""
    kind, url = backend
    prefix = f"test-{uuid.uuid4().hex[:12]}:"

    @asynccontextmanager
    async def open_(*, shared_prefix: str | None = None, **kw: Any) -> AsyncIterator[StreamStore]:
        kw.setdefault("max_events_per_stream", MAX_EVENTS)
        if kind == "memory":
            async with MemoryStore(**kw) as mem:
                yield mem
        else:
            assert url is not None
            async with RedisStore(url, prefix=shared_prefix or prefix, **kw) as red:
                yield red

    return open_


@pytest.fixture
async def store(open_store_: OpenStore) -> AsyncIterator[StreamStore]:
    async with open_store_() as s:
        yield s


def sid() -> str:
    return uuid.uuid4().hex


def deltas(first: int, last: int) -> list[Event]:
    return [TextDelta(f"t{i} ", seq=i) for i in range(first, last + 1)]


# -- the contract ------------------------------------------------------------------------------


async def test_is_a_stream_store(store: StreamStore) -> None:
    assert isinstance(store, StreamStore)


async def test_append_and_read_in_pieces(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    assert await store.read(s, 0, 10) == []
    events = [*deltas(1, 9), Done("stop", seq=10)]
    await store.append(s, events[:4])
    await store.append(s, events[4:])
    got: list[Event] = []
    after = 0
    while piece := await store.read(s, after, 3):
        assert len(piece) <= 3
        got.extend(piece)
        after = piece[-1].seq
    assert got == events


async def test_read_after_n_and_gaps(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    # Coalescing channels leave gaps in seq; "after" still means seq > after.
    events: list[Event] = [TextDelta("a", seq=1), TextDelta("bc", seq=3), TextDelta("d", seq=7)]
    await store.append(s, events)
    assert await store.read(s, 0, 100) == events
    assert await store.read(s, 1, 100) == events[1:]
    assert await store.read(s, 2, 100) == events[1:]
    assert await store.read(s, 3, 1) == events[2:]
    assert await store.read(s, 7, 100) == []
    assert await store.read(s, 1000, 100) == []


async def test_all_event_types_round_trip(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    events: list[Event] = [
        pipeline.Metadata("p", "m", "r", seq=1),
        TextDelta("héllo ✓ \n", seq=2),
        pipeline.ToolCallStart(0, "c1", "f", seq=3),
        pipeline.ToolCallDelta(0, '{"a"', seq=4),
        pipeline.ToolCallEnd(0, "c1", "f", '{"a":1}', seq=5),
        pipeline.Heartbeat(seq=6),
        pipeline.Dropped(1, 2, 2, 3, 3, seq=7),
        pipeline.Usage(3, 4, seq=8),
        Error("timeout", "slow", retryable=True, partial_chars=5, partial_text="héllo", seq=9),
    ]
    await store.append(s, events)
    assert await store.read(s, 0, 100) == events


async def test_wait_wakes_on_append(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    got: list[Event] = []
    returned_at: list[float] = []

    async def reader() -> None:
        got.extend(await store.wait(s, 0, 10.0))
        returned_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.05)  # real time: Redis is blocked in XREAD by now
        assert not got
        appended_at = trio.current_time()
        await store.append(s, deltas(1, 2))
    assert got == deltas(1, 2)
    assert returned_at[0] - appended_at < 1.0


async def test_wait_returns_what_is_there_at_once(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, deltas(1, 5))
    with trio.fail_after(1):
        assert await store.wait(s, 2, 30.0) == deltas(3, 5)
        assert await store.wait(s, 0, 30.0, limit=2) == deltas(1, 2)


async def test_wait_returns_empty_on_timeout(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, deltas(1, 2))
    start = trio.current_time()
    assert await store.wait(s, 2, 0.1) == []
    assert 0.05 <= trio.current_time() - start < 2.0
    assert await store.wait(s, 2, 0) == []


async def test_wait_returns_at_once_on_ended_stream(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, [*deltas(1, 2), Done("stop", seq=3)])
    with trio.fail_after(1):
        assert await store.wait(s, 3, 30.0) == []
        assert await store.wait(s, 2, 30.0) == [Done("stop", seq=3)]


async def test_wait_wakes_when_the_stream_ends(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, deltas(1, 1))
    got: list[Event] = []

    async def reader() -> None:
        got.extend(await store.wait(s, 1, 10.0))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await store.append(s, [Error("connection", "reset", seq=2)])
    assert got == [Error("connection", "reset", seq=2)]


async def test_cancelling_a_wait_is_safe(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    with trio.move_on_after(0.1) as scope:
        await store.wait(s, 0, 10.0)
    assert scope.cancelled_caught
    await store.append(s, deltas(1, 1))
    with trio.fail_after(1):
        assert await store.wait(s, 0, 10.0) == deltas(1, 1)


@pytest.mark.parametrize("terminal", [Done("stop", seq=3), Error("status", "boom", seq=3)])
async def test_ended_after_terminal(store: StreamStore, terminal: Event) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, deltas(1, 2))
    info = await store.info(s)
    assert (info.ended, info.last_seq, info.events) == (False, 2, 2)
    await store.append(s, [terminal])
    info = await store.info(s)
    assert (info.ended, info.last_seq, info.events) == (True, 3, 3)
    with pytest.raises(StoreError, match="ended"):
        await store.append(s, [TextDelta("late", seq=4)])


async def test_info_of_a_new_stream(store: StreamStore) -> None:
    import time

    s = sid()
    before = time.time()
    await store.create(s)
    info = await store.info(s)
    assert isinstance(info, StreamInfo)
    assert info == StreamInfo(s, info.created_at, 0, False, False, None, 0)
    assert before - 1 <= info.created_at <= time.time() + 1


async def test_request_cancel_visible_in_info(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    assert not (await store.info(s)).cancel_requested
    await store.request_cancel(s)
    await store.request_cancel(s)  # idempotent
    assert (await store.info(s)).cancel_requested


async def test_touch_updates_last_reader_at(store: StreamStore) -> None:
    import time

    s = sid()
    await store.create(s)
    assert (await store.info(s)).last_reader_at is None
    before = time.time()
    await store.touch(s)
    first = (await store.info(s)).last_reader_at
    assert first is not None
    assert before <= first <= time.time()
    await trio.sleep(0.01)
    await store.touch(s)
    second = (await store.info(s)).last_reader_at
    assert second is not None
    assert second > first


async def test_create_twice_fails(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, deltas(1, 1))
    with pytest.raises(ValueError, match="exists"):
        await store.create(s)
    assert await store.read(s, 0, 10) == deltas(1, 1)  # untouched


async def test_unknown_id(store: StreamStore) -> None:
    s = sid()
    with pytest.raises(StreamNotFound):
        await store.info(s)
    with pytest.raises(StreamNotFound):
        await store.read(s, 0, 10)
    with pytest.raises(StreamNotFound):
        await store.wait(s, 0, 0.05)
    with pytest.raises(StreamNotFound):
        await store.append(s, deltas(1, 1))
    with pytest.raises(StreamNotFound):
        await store.touch(s)
    with pytest.raises(StreamNotFound):
        await store.request_cancel(s)
    with pytest.raises(StreamNotFound):  # touch/cancel never leave a partial stream behind
        await store.info(s)
    assert issubclass(StreamNotFound, LookupError)


async def test_owner_lease_orphan_and_end_if_orphaned(store: StreamStore) -> None:
    owned, free = sid(), sid()
    await store.create(owned, lease=0.3)
    await store.create(free)  # no lease: never orphaned
    await store.append(owned, deltas(1, 2))
    assert not (await store.info(owned)).orphaned
    end = Error("incomplete", "no owner", retryable=True)
    assert not await store.end_if_orphaned(owned, end)  # the owner is alive
    for _ in range(3):  # the owner renews: still alive after twice its lease
        await trio.sleep(0.2)
        await store.renew_lease(owned, 0.3)
    assert not (await store.info(owned)).orphaned
    await trio.sleep(0.4)  # it stopped renewing
    assert (await store.info(owned)).orphaned
    assert not (await store.info(free)).orphaned
    async with trio.open_nursery() as nursery:  # two readers see it: one ends it
        results: list[bool] = []

        async def end_it() -> None:
            results.append(await store.end_if_orphaned(owned, end))

        nursery.start_soon(end_it)
        nursery.start_soon(end_it)
    assert sorted(results) == [False, True]
    info = await store.info(owned)
    assert info.ended
    assert not info.orphaned
    assert info.last_seq == 3
    assert await store.read(owned, 2, 10) == [attrs.evolve(end, seq=3)]
    with pytest.raises(StreamEnded):  # an owner that comes back learns the stream has ended
        await store.append(owned, deltas(3, 3))
    await store.renew_lease(owned, 0.3)  # harmless on an ended stream
    assert not await store.end_if_orphaned(free, end)
    with pytest.raises(StreamNotFound):
        await store.renew_lease(sid(), 1.0)
    with pytest.raises(StreamNotFound):
        await store.end_if_orphaned(sid(), end)


async def test_store_sink_retries_an_unavailable_store(store: StreamStore) -> None:
    """Appends that fail (one after it was stored, as when Redis dies before it answers) are
    retried with the backoff; nothing is stored twice."""
    s = sid()
    await store.create(s)
    flaky = _Flaky(store, fail={2: "before", 4: "after"})
    sink = StoreSink(flaky, s, batch_max=1, backoff=pipeline.Backoff(initial=0.01))
    await pipeline.Pipeline(ScriptedProducer.from_deltas(["a", "b", "c", "d", "e"]),
                            sinks=[sink]).run()  # fmt: skip
    events = await store.read(s, 0, 100)
    assert "".join(getattr(e, "text", "") for e in events) == "abcde"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "done"
    assert flaky.failed == 2


async def test_store_sink_cancelled_in_an_append_the_store_took(store: StreamStore) -> None:
    """Cancelled while waiting for the answer to an append the store had taken: the end is
    numbered after that batch and counts its text (it was stored before the end with the same
    number was refused, and the stream was left for another end without ``partial_chars``)."""
    s = sid()
    await store.create(s)
    flaky = _Flaky(store, fail={2: "hang"})
    sink = StoreSink(flaky, s, batch_max=1)
    steps: list[Step | Event] = [Step(TextDelta("ab")), Step(TextDelta("cde"), delay=0.01),
                                 Step(TextDelta("f"), delay=30.0)]  # fmt: skip
    async with pipeline.Pipeline(ScriptedProducer(steps), sinks=[sink]).open() as running:
        assert [e.seq for e in await store.wait(s, 1, 5.0)] == [2]  # stored, not answered
        running.cancel()
    events = await store.read(s, 0, 10)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[-1] == Error("cancelled", "the generation was cancelled", partial_chars=5, seq=3)


async def test_store_sink_gives_up_after_retry_for(store: StreamStore) -> None:
    """Past ``retry_for`` the sink raises, and ends the stream (retryable) once the store is
    back."""
    s = sid()
    await store.create(s)
    flaky = _Flaky(store, fail={2: "down"})
    sink = StoreSink(flaky, s, batch_max=1, retry_for=0.2, backoff=pipeline.Backoff(0.01, 0.05))
    producer = ScriptedProducer.from_deltas(["a", "b", "c"])

    async def back_later() -> None:
        await trio.sleep(0.6)
        flaky.down = False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(back_later)
        with pytest.raises(StoreUnavailable):
            await pipeline.Pipeline(producer, sinks=[sink]).run()
    [first, end] = await store.read(s, 0, 100)
    assert first == TextDelta("a", seq=1)
    assert isinstance(end, Error)
    assert end.kind == "store"
    assert end.retryable
    assert (await store.info(s)).ended


async def test_store_sink_ends_a_stream_the_store_lost_events_of() -> None:
    """A store restarted without events it had acknowledged (Redis, AOF ``everysec``): the sink
    does not leave a silent gap, it ends the stream with a retryable ``store`` error numbered
    past anything a reader may have seen."""
    s = sid()
    flaky = _RestartsLosing(MemoryStore(), fail={}, at_call=5, lose=2)
    await flaky.inner.create(s)
    sink = StoreSink(flaky, s, batch_max=1, backoff=pipeline.Backoff(initial=0.01))
    producer = ScriptedProducer([*(Step(TextDelta(f"t{i} "), 0.01) for i in range(8)), Done()])
    with pytest.raises(StoreError, match=r"lost events 3\.\.4"):
        await pipeline.Pipeline(producer, sinks=[sink]).run()
    events = await flaky.inner.read(s, 0, 100)
    assert [e.seq for e in events] == [1, 2, 5]
    end = events[-1]
    assert isinstance(end, Error)
    assert (end.kind, end.retryable) == ("store", True)


@attrs.define
class _Flaky:
    """A store whose ``append`` number N fails with StoreUnavailable: ``before`` storing,
    ``after`` storing, or ``down`` (then every append and info, until ``down`` is cleared); or
    ``hang``s after storing, until cancelled (an answer that never comes)."""

    inner: StreamStore
    fail: dict[int, str]
    calls: int = 0
    failed: int = 0
    down: bool = False

    async def append(self, stream_id: str, events: Any) -> None:
        self.calls += 1
        how = self.fail.pop(self.calls, None)
        if how == "down":
            self.down = True
        if self.down or how == "before":
            self.failed += 1
            raise StoreUnavailable("connection refused")
        await self.inner.append(stream_id, events)
        if how == "hang":
            await trio.sleep_forever()
        if how == "after":
            self.failed += 1
            raise StoreUnavailable("connection reset")

    async def info(self, stream_id: str) -> StreamInfo:
        if self.down:
            raise StoreUnavailable("connection refused")
        return await self.inner.info(stream_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@attrs.define
class _RestartsLosing(_Flaky):
    """At append number ``at_call``, the store "restarts" without its last ``lose`` events
    (acknowledged, then lost) and the append fails."""

    at_call: int = 0
    lose: int = 0

    async def append(self, stream_id: str, events: Any) -> None:
        if self.calls + 1 == self.at_call:
            self.calls += 1
            kept = (await self.inner.read(stream_id, 0, 1000))[: -self.lose]
            self.inner = MemoryStore()
            await self.inner.create(stream_id)
            await self.inner.append(stream_id, kept)
            raise StoreUnavailable("connection reset")
        await super().append(stream_id, events)


async def test_delete(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, [*deltas(1, 2), Done(seq=3)])
    await store.delete(s)
    await store.delete(s)  # idempotent
    await store.delete(sid())
    with pytest.raises(StreamNotFound):
        await store.info(s)
    with pytest.raises(StreamNotFound):
        await store.read(s, 0, 10)
    await store.create(s)  # the id is free again, and the new stream is empty
    assert await store.read(s, 0, 10) == []


async def test_append_order_is_checked(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, deltas(1, 3))
    with pytest.raises(ValueError, match="seq"):
        await store.append(s, deltas(3, 4))
    with pytest.raises(ValueError, match="seq"):
        await store.append(s, [TextDelta("x", seq=5), TextDelta("y", seq=5)])
    with pytest.raises(ValueError, match="terminal"):
        await store.append(s, [Done(seq=4), TextDelta("x", seq=5)])
    assert (await store.info(s)).last_seq == 3
    assert await store.read(s, 0, 10) == deltas(1, 3)
    await store.append(s, [])
    assert (await store.info(s)).events == 3


async def test_event_budget_raises_store_full_and_stores_nothing(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    await store.append(s, deltas(1, MAX_EVENTS - 2))
    with pytest.raises(StoreFull):
        await store.append(s, deltas(MAX_EVENTS - 1, MAX_EVENTS + 1))
    assert (await store.info(s)).events == MAX_EVENTS - 2
    await store.append(s, deltas(MAX_EVENTS - 1, MAX_EVENTS))  # exactly the budget
    with pytest.raises(StoreFull):
        await store.append(s, deltas(MAX_EVENTS + 1, MAX_EVENTS + 1))
    # The terminal event is exempt: a full stream can still be ended.
    await store.append(s, [Error("overflow", "full", seq=MAX_EVENTS + 1)])
    info = await store.info(s)
    assert info.ended
    assert info.events == MAX_EVENTS + 1
    assert issubclass(StoreFull, StoreError)


async def test_methods_after_aclose(open_store_: OpenStore) -> None:
    async with open_store_() as store:
        s = sid()
        await store.create(s)
        await store.aclose()
        await store.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await store.info(s)


# -- StoreSink ---------------------------------------------------------------------------------


async def test_store_sink_end_to_end_in_a_pipeline(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    seen: list[Event] = []

    async def collect(events: pipeline.EventReceiver) -> None:
        async for ev in events:
            seen.append(ev)

    text = "The quick brown fox jumps over the lazy dog."
    sink = StoreSink(store, s)
    stats = await pipeline.Pipeline(
        ScriptedProducer.from_text(text),
        sinks=[Route(sink, policy="spill"), Route(collect)],
    ).run()
    assert stats.reason == "done"
    assert isinstance(seen[-1], Done)
    replay: list[Event] = []
    after = 0
    while piece := await store.read(s, after, 4):
        replay.extend(piece)
        after = piece[-1].seq
    assert replay == seen
    assert "".join(e.text for e in replay if isinstance(e, TextDelta)) == text
    info = await store.info(s)
    assert info.ended
    assert info.last_seq == seen[-1].seq
    assert sink.ended
    assert sink.events_stored == len(seen)


async def test_store_sink_batches_what_is_queued(store: StreamStore) -> None:
    s = sid()
    send, recv = pipeline.open_event_channel(max_items=64)
    events = [*deltas(1, 10), Done(seq=11)]
    for ev in events:
        send.send_nowait(ev)
    send.close()
    sink = StoreSink(store, s, batch_max=4, create=True)
    await sink.consume(recv)
    assert sink.batches == 3
    assert await store.read(s, 0, 100) == events


async def test_store_sink_ends_the_stream_when_cancelled(store: StreamStore) -> None:
    s = sid()
    steps: list[Step | Event] = [Step(TextDelta("a")), Step(TextDelta("b"), delay=30.0)]
    await store.create(s)
    sink = StoreSink(store, s)
    async with pipeline.Pipeline(
        ScriptedProducer(steps), sinks=[Route(sink, policy="spill")]
    ).open() as running:
        assert await store.wait(s, 0, 5.0) == [TextDelta("a", seq=1)]
        running.cancel()
    events = await store.read(s, 0, 10)
    assert events[0] == TextDelta("a", seq=1)
    assert events[-1] == Error("cancelled", "the generation was cancelled", partial_chars=1, seq=2)
    assert (await store.info(s)).ended


async def test_store_sink_cancel_event_says_why(store: StreamStore) -> None:
    s = sid()
    steps: list[Step | Event] = [Step(TextDelta("a")), Step(TextDelta("b"), delay=30.0)]
    await store.create(s)
    why = Error("cancelled", "the generation was cancelled (shutdown)", retryable=True)
    sink = StoreSink(store, s, cancel_event=lambda: why)
    async with pipeline.Pipeline(
        ScriptedProducer(steps), sinks=[Route(sink, policy="spill")]
    ).open() as running:
        assert await store.wait(s, 0, 5.0) == [TextDelta("a", seq=1)]
        running.cancel()
    assert (await store.read(s, 0, 10))[-1] == attrs.evolve(why, partial_chars=1, seq=2)


async def test_store_sink_deleted_stream_is_consumer_gone(store: StreamStore) -> None:
    s = sid()
    send, recv = pipeline.open_event_channel()
    send.send_nowait(TextDelta("a", seq=1))
    with pytest.raises(pipeline.ConsumerGone):
        await StoreSink(store, s).consume(recv)


async def test_store_sink_on_full_store_ends_with_overflow(store: StreamStore) -> None:
    s = sid()
    await store.create(s)
    send, recv = pipeline.open_event_channel(max_items=100)
    for ev in [*deltas(1, MAX_EVENTS + 5), Done(seq=MAX_EVENTS + 6)]:
        send.send_nowait(ev)
    send.close()
    with pytest.raises(StoreFull):
        await StoreSink(store, s, batch_max=MAX_EVENTS // 2).consume(recv)
    events = await store.read(s, 0, 1000)
    assert len(events) == MAX_EVENTS + 1
    last = events[-1]
    assert isinstance(last, Error)
    assert last.kind == "overflow"
    assert last.seq == MAX_EVENTS + 1


def test_store_sink_validates() -> None:
    with pytest.raises(pipeline.ConfigError):
        StoreSink(MemoryStore(), "x", batch_max=0)
    assert isinstance(StoreSink(MemoryStore(), "x"), pipeline.Sink)


# -- RedisStore across clients -----------------------------------------------------------------


async def test_two_redis_clients_share_a_stream(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    s = sid()
    async with (
        RedisStore(redis_url, prefix=prefix) as writer,
        RedisStore(redis_url, prefix=prefix) as reader,
    ):
        await writer.create(s)
        with pytest.raises(ValueError, match="exists"):
            await reader.create(s)
        got: list[Event] = []

        async def follow() -> None:
            after = 0
            while True:
                events = await reader.wait(s, after, 5.0)
                if not events:
                    return
                got.extend(events)
                after = events[-1].seq

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                await trio.testing.wait_all_tasks_blocked()
                for i in range(1, 6):
                    await writer.append(s, deltas(i, i))
                    await trio.sleep(0.01)
                await reader.request_cancel(s)
                assert (await writer.info(s)).cancel_requested
                await writer.append(s, [Done("stop", seq=6)])
        assert got == [*deltas(1, 5), Done("stop", seq=6)]
        await reader.touch(s)
        assert (await writer.info(s)).last_reader_at is not None


async def test_redis_key_layout_and_expiry(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    s = sid()
    async with RedisStore(redis_url, prefix=prefix, ttl_after_end=100, max_idle=1000) as store:
        info_key, events_key = store.keys(s)
        assert (info_key, events_key) == (f"{prefix}{{{s}}}:info", f"{prefix}{{{s}}}:events")
        await store.create(s)
        await store.append(s, deltas(1, 2))
        client = store.client
        entries = await client.xrange(events_key)
        assert [e.identifier for e in entries] == ["1-0", "2-0"]
        assert 900_000 < await client.pttl(info_key) <= 1_000_000
        await store.append(s, [Done(seq=3)])
        assert 90_000 < await client.pttl(info_key) <= 100_000
        assert 90_000 < await client.pttl(events_key) <= 100_000


async def test_redis_store_must_be_entered(redis_url: str) -> None:
    store = RedisStore(redis_url)
    with pytest.raises(RuntimeError, match="async with"):
        await store.info("x")
    await store.aclose()


# -- MemoryStore: budgets and expiry (MockClock) -----------------------------------------------


def _cost(event: Event) -> int:
    """What a MemoryStore counts for one event."""
    return int(stored_nbytes(event) * ALLOCATOR_SLACK)


async def test_memory_byte_budget_per_stream() -> None:
    one = _cost(TextDelta("x" * 400, seq=1))
    assert one > 400 + 100  # the objects, not just the text
    store = MemoryStore(max_bytes_per_stream=2 * one)
    await store.create("s")
    await store.append("s", [TextDelta("x" * 400, seq=1)])
    with pytest.raises(StoreFull, match="max_bytes_per_stream"):
        await store.append("s", [TextDelta("x" * 420, seq=2)])
    await store.append("s", [TextDelta("x" * 400, seq=2)])
    assert store.total_bytes == 2 * one
    await store.append("s", [Error("overflow", "", partial_text="y" * 5000, seq=3)])
    assert (await store.info("s")).ended


async def test_memory_total_budget_evicts_oldest_ended_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore(max_total_bytes=3 * _cost(TextDelta("x" * 900, seq=1)))
    for name in ("a", "b", "c"):
        await store.create(name)
        await store.append(name, [TextDelta("x" * 900, seq=1)])  # a third of the budget each
    await store.append("b", [Done(seq=2)])
    await trio.sleep(1)
    await store.append("a", [Done(seq=2)])
    await store.create("d")
    await store.append("d", [TextDelta("x" * 900, seq=1)])  # evicts b (ended first)
    with pytest.raises(StreamNotFound):
        await store.info("b")
    assert (await store.info("a")).ended
    await store.append("d", [TextDelta("x" * 900, seq=2)])  # evicts a
    with pytest.raises(StreamNotFound):
        await store.info("a")
    # Only streams being written remain: nothing may be evicted.
    with pytest.raises(StoreFull, match="max_total_bytes"):
        await store.append("d", [TextDelta("x", seq=3)])
    assert store.total_bytes == 3 * _cost(TextDelta("x" * 900, seq=1))


async def test_memory_max_streams(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore(max_streams=2)
    await store.create("a")
    await store.create("b")
    with pytest.raises(StoreFull, match="max_streams"):
        await store.create("c")
    await store.append("a", [Done(seq=1)])
    await store.create("c")  # evicts the ended stream a
    with pytest.raises(StreamNotFound):
        await store.info("a")
    assert len(store) == 2


async def test_memory_ttl_after_end_and_max_idle(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore(ttl_after_end=60, max_idle=600)
    await store.create("ended")
    await store.create("idle")
    await store.append("ended", [Done(seq=1)])
    await trio.sleep(59)
    assert (await store.info("ended")).ended
    await trio.sleep(1)
    with pytest.raises(StreamNotFound):
        await store.info("ended")
    await store.create("ended")  # an expired id is free again
    await store.append("idle", deltas(1, 1))
    await trio.sleep(599)
    assert (await store.info("idle")).events == 1
    await trio.sleep(1)
    with pytest.raises(StreamNotFound):
        await store.read("idle", 0, 10)
    with pytest.raises(StreamNotFound):  # re-created at the same time, never appended to
        await store.info("ended")
    assert len(store) == 0


async def test_memory_wait_uses_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    await store.create("s")
    start = trio.current_time()
    assert await store.wait("s", 0, 3600.0) == []
    assert trio.current_time() - start == pytest.approx(3600.0)


async def test_memory_wait_wakes_on_cancel_request_and_delete() -> None:
    store = MemoryStore()
    await store.create("s")
    results: list[object] = []

    async def waiter() -> None:
        try:
            results.append(await store.wait("s", 0, 3600.0))
        except StreamNotFound as exc:
            results.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await store.request_cancel("s")
        assert results == [[]]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await store.delete("s")
        assert isinstance(results[1], StreamNotFound)


async def test_memory_aclose_wakes_waiters() -> None:
    store = MemoryStore()
    await store.create("s")
    raised: list[BaseException] = []

    async def waiter() -> None:
        try:
            await store.wait("s", 0, 3600.0)
        except trio.ClosedResourceError as exc:
            raised.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await store.aclose()
    assert len(raised) == 1


def test_memory_store_validates_budgets() -> None:
    with pytest.raises(pipeline.ConfigError):
        MemoryStore(max_streams=0)
    with pytest.raises(pipeline.ConfigError):
        MemoryStore(ttl_after_end=0)
    with pytest.raises(TypeError):
        MemoryStore(max_total_bytes=1.5)  # type: ignore[arg-type]


# -- open_store --------------------------------------------------------------------------------


def test_open_store() -> None:
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    with pytest.raises(pipeline.ConfigError, match="'ftp'"):
        open_store("ftp://example.com")
