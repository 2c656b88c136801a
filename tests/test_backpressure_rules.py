"""The ten backpressure rules of ../shared/backpressure_rules.md, as black-box tests of a pipeline.

"Pulled" is what the producer handed to ``emit``; "delivered" is what the sink read.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.lowlevel
import trio.testing

from pipeline import (
    ConfigError,
    Done,
    Error,
    EventReceiver,
    Pipeline,
    ProducerConnectionError,
    Route,
    TextDelta,
)
from pipeline.testing import CountingProducer, RecordingSink, ScriptedProducer, Step
from pipeline.text import AdaptiveChunker


class Gate:
    """A sink that reads only when told to."""

    def __init__(self) -> None:
        self.allowed = 0
        self.read: list[object] = []
        self.more = trio.Event()
        self.ended = False

    def allow(self, n: int) -> None:
        self.allowed += n
        self.more.set()

    async def consume(self, events: EventReceiver) -> None:
        while True:
            while len(self.read) >= self.allowed:
                self.more = trio.Event()
                await self.more.wait()
            try:
                self.read.append(await events.receive())
            except trio.EndOfChannel:
                self.ended = True
                return


@pytest.mark.parametrize(("source_buffer", "max_items"), [(64, 64), (1, 1), (4, 16)])
async def test_rule1_bounded_lead(source_buffer: int, max_items: int) -> None:
    producer = CountingProducer()
    gate = Gate()
    pipe = Pipeline(producer, sinks=[Route(gate, max_items=max_items)], source_buffer=source_buffer)
    async with pipe.open() as running:
        await trio.testing.wait_all_tasks_blocked()
        lead = producer.emitted - len(gate.read)
        # Documented bound: the source buffer, the sink's channel, one item in the stage
        # task's hand (the producer's next item is parked, not emitted).
        assert lead <= source_buffer + max_items + 1
        for _ in range(3):  # and it does not keep growing
            await trio.lowlevel.checkpoint()
            await trio.testing.wait_all_tasks_blocked()
            assert producer.emitted - len(gate.read) == lead
        await running.aclose()
    assert producer.cancelled


async def test_rule2_exact_counts_with_trickle_demand() -> None:
    producer = CountingProducer()
    gate = Gate()
    async with Pipeline(producer, sinks=[Route(gate, max_items=2)], source_buffer=2).open() as run:
        await trio.testing.wait_all_tasks_blocked()
        base = producer.emitted
        assert base <= 2 + 2 + 1
        total = 0
        for n in (1, 1, 2, 5):
            gate.allow(n)
            total += n
            await trio.testing.wait_all_tasks_blocked()
            assert len(gate.read) == total
            # The producer moved exactly as far as the consumer did: no over-read.
            assert producer.emitted == base + total
        await run.aclose()


async def test_rule3_fewer_items_than_demanded_then_clean_completion() -> None:
    sink = RecordingSink()
    await Pipeline(ScriptedProducer.from_deltas(["a", "b", "c"]), sinks=[sink]).run()
    assert [type(e) for e in sink.events] == [TextDelta, TextDelta, TextDelta, Done]
    assert sink.finished

    empty = RecordingSink()
    stats = await Pipeline(ScriptedProducer([]), sinks=[empty]).run()
    assert [type(e) for e in empty.events] == [Done]  # the runner ends the stream for it
    assert stats.reason == "done"


async def test_rule4_nothing_after_termination() -> None:
    late = TextDelta("late")
    async with Pipeline(ScriptedProducer([TextDelta("a"), Done("stop"), late])).events() as ev:
        got = [e async for e in ev]
        for _ in range(3):
            with pytest.raises(trio.EndOfChannel):
                await ev.receive()
    assert got == [TextDelta("a", seq=1), Done("stop", seq=2)]


@pytest.mark.parametrize("reader_delay", [0.0, 10.0])
async def test_rule5_errors_delivered_in_order_once(
    autojump_clock: trio.abc.Clock, reader_delay: float
) -> None:
    script = [TextDelta("a"), TextDelta("b"), Step(raise_=ProducerConnectionError("reset by peer"))]
    slow = RecordingSink(delay=reader_delay)
    fast = RecordingSink()
    stats = await Pipeline(ScriptedProducer(script), sinks=[Route(slow, max_items=1), fast]).run()
    for sink in (slow, fast):
        assert [type(e) for e in sink.events] == [TextDelta, TextDelta, Error]
        err = sink.events[-1]
        assert isinstance(err, Error)
        assert (err.kind, err.retryable, err.partial_chars) == ("connection", True, 2)
        assert "reset by peer" in err.message
    assert stats.reason == "error"


async def test_rule5_failure_before_the_first_event_is_an_exception() -> None:
    sink = RecordingSink()
    pipe = Pipeline(
        ScriptedProducer([Step(raise_=ProducerConnectionError("refused"))]), sinks=[sink]
    )
    with pytest.raises(ProducerConnectionError, match="refused"):
        await pipe.run()
    assert sink.events == []


@pytest.mark.parametrize("how", ["cancel_scope", "consumer_gone", "aclose"])
async def test_rule6_cancellation_propagates_upstream_promptly(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    producer = CountingProducer(delay=0.01)
    sink = RecordingSink(stop_after=50 if how == "consumer_gone" else None)
    with trio.fail_after(1):
        if how == "cancel_scope":
            with trio.move_on_after(0.3):
                await Pipeline(producer, sinks=[sink]).run()
            cancelled_at = 0.3
        elif how == "consumer_gone":
            stats = await Pipeline(producer, sinks=[sink]).run()
            assert stats.reason == "consumer_gone"
            cancelled_at = trio.current_time()
        else:
            async with Pipeline(producer, sinks=[sink]).open() as running:
                await trio.sleep(0.3)
                cancelled_at = trio.current_time()
                await running.aclose()
                assert running.finished
                assert running.reason == "cancelled"
    assert producer.cancelled
    assert producer.closed_at is not None
    assert producer.closed_at - cancelled_at < 0.01  # same scheduling round, no sleep in between
    # No task left behind: only this test's own task remains.
    assert len(trio.lowlevel.current_root_task().child_nurseries[0].child_tasks) == 1


async def test_rule7_close_is_idempotent_and_never_raises() -> None:
    producer = CountingProducer()
    async with Pipeline(producer, sinks=[Gate()]).open() as running:
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running.aclose)
            nursery.start_soon(running.aclose)
        await running.aclose()
        running.cancel()
    await running.aclose()  # after completion too
    # aclose completes even when the caller is already cancelled.
    producer2 = CountingProducer()
    async with Pipeline(producer2, sinks=[Gate()]).open() as running2:
        with trio.CancelScope() as scope:
            scope.cancel()
            await running2.aclose()
        assert running2.finished


@pytest.mark.parametrize("seed", range(20))
async def test_rule8_serial_signals_and_order(autojump_clock: trio.abc.Clock, seed: int) -> None:
    rng = random.Random(seed)
    steps = [Step(TextDelta(f"{i} "), delay=rng.random() / 100) for i in range(200)]
    sinks = [
        RecordingSink(delay=rng.random() / 50),
        RecordingSink(delay=rng.random() / 200),
        RecordingSink(),
    ]
    routes = [
        Route(sinks[0], policy="coalesce", max_items=rng.randint(1, 8)),
        Route(sinks[1], policy="spill", max_items=rng.randint(1, 4), max_bytes=16),
        Route(sinks[2], max_items=rng.randint(1, 8)),
    ]
    await Pipeline(
        ScriptedProducer([*steps, Done()]),
        stages=[AdaptiveChunker(min_chars=rng.randint(1, 20))],
        sinks=routes,
    ).run()
    expected = "".join(f"{i} " for i in range(200))
    for sink in sinks:
        assert sink.overlaps == 0
        assert sink.text == expected
        seqs = [e.seq for e in sink.events]
        assert seqs == sorted(set(seqs))


async def test_rule9_no_starvation_and_no_deep_recursion() -> None:
    producer = CountingProducer(count=100_000)
    observed: list[int] = []
    done = False

    async def ticker() -> None:
        while not done:
            observed.append(producer.emitted)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        sink = RecordingSink(keep_events=False)
        await Pipeline(producer, sinks=[sink]).run()
        done = True
    assert sink.count == 100_001
    # The ticker ran all along the run, not only before and after it.
    in_between = {n for n in observed if 0 < n < 100_000}
    assert len(in_between) > 100


async def test_rule10_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ConfigError, match="source_buffer"):
        Pipeline(CountingProducer(), source_buffer=0)
    with pytest.raises(TypeError):
        Pipeline(CountingProducer(), source_buffer=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_items"):
        Route(RecordingSink(), max_items=-1)
    with pytest.raises(ConfigError, match="policy"):
        Route(RecordingSink(), policy="whatever")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="on_failure"):
        Route(RecordingSink(), on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="producer"):
        Pipeline(object())  # type: ignore[arg-type]
