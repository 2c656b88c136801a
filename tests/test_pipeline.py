"""The runner: fan-out, sequence numbers, ending, failures, detach, statistics."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from pipeline import (
    Accumulate,
    ConsumerGone,
    Done,
    Error,
    EventReceiver,
    Heartbeat,
    Pipeline,
    ProducerStatusError,
    Route,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Transform,
    Usage,
    Validate,
)
from pipeline.testing import CountingProducer, RecordingSink, ScriptedProducer, Step
from pipeline.text import AdaptiveChunker


async def test_fan_out_keeps_order_and_stamps_seq() -> None:
    script = [
        TextDelta("Hi "),
        ToolCallStart(0, "call_1", "lookup"),
        ToolCallDelta(0, '{"q":'),
        ToolCallDelta(0, '"x"}'),
        ToolCallEnd(0, "call_1", "lookup", '{"q":"x"}'),
        TextDelta("there."),
        Usage(10, 4),
        Done("stop"),
    ]
    a, b = RecordingSink(), RecordingSink()
    stats = await Pipeline(ScriptedProducer(script), sinks=[a, Route(b, policy="spill")]).run()
    expected = [ev.__class__ for ev in script]
    assert [e.__class__ for e in a.events] == expected
    assert a.events == b.events
    assert [e.seq for e in a.events] == list(range(1, len(script) + 1))
    assert stats.last_seq == len(script)
    assert stats.reason == "done"
    assert stats.events_in == stats.events_out == len(script)


async def test_a_slow_sink_does_not_stall_a_fast_one_unless_it_blocks(
    autojump_clock: trio.abc.Clock,
) -> None:
    producer = ScriptedProducer.from_text("word " * 200, delay=0.01)
    fast = RecordingSink()
    slow = RecordingSink(delay=1.0)
    arrival: dict[int, float] = {}

    async def timed(events: EventReceiver) -> None:
        async for ev in events:
            arrival[ev.seq] = trio.current_time()

    await Pipeline(
        producer,
        sinks=[Route(slow, policy="coalesce", max_items=4), Route(timed, name="timed"), fast],
    ).run()
    assert fast.text == slow.text == "word " * 200
    # The fast sink saw the last word when it was produced (~2 s), not when the slow one got it.
    assert max(arrival.values()) < 3.0
    assert len(slow.events) < 20

    # With "block", the slow sink sets the pace for everyone (backpressure to the producer).
    producer = ScriptedProducer.from_text("word " * 20, delay=0.01)
    arrival.clear()
    await Pipeline(
        producer, sinks=[Route(RecordingSink(delay=1.0), max_items=1), Route(timed)]
    ).run()
    assert max(arrival.values()) > 15.0


async def test_producer_without_done_gets_one_and_chunker_flushes() -> None:
    sink = RecordingSink()
    producer = ScriptedProducer([TextDelta("no"), TextDelta(" end")])
    await Pipeline(producer, stages=[AdaptiveChunker(min_chars=100)], sinks=[sink]).run()
    assert sink.events == [TextDelta("no end", seq=1), Done(None, seq=2)]


async def test_error_after_start_keeps_partial_text_with_accumulate() -> None:
    sink = RecordingSink()
    acc = Accumulate()
    script = [
        TextDelta("Hello "),
        TextDelta("wor"),
        Step(raise_=ProducerStatusError("overloaded (529)", status_code=529)),
    ]
    stats = await Pipeline(ScriptedProducer(script), stages=[acc], sinks=[sink]).run()
    err = sink.events[-1]
    assert isinstance(err, Error)
    assert err.kind == "status"
    assert err.retryable
    assert err.partial_text == "Hello wor"
    assert err.partial_chars == 9
    assert stats.reason == "error"
    assert stats.error == "status: overloaded (529)"


async def test_validate_aborts_the_stream_and_stops_the_producer() -> None:
    producer = CountingProducer(text="ok ", count=1000)

    def no_more_than_30(text: str) -> str | None:
        return "too long" if len(text) > 30 else None

    sink = RecordingSink()
    stats = await Pipeline(producer, stages=[Validate(no_more_than_30)], sinks=[sink]).run()
    assert isinstance(sink.events[-1], Error)
    assert sink.events[-1].kind == "validation"
    assert sink.text == "ok " * 10
    assert producer.cancelled
    assert producer.emitted < 1000
    assert stats.reason == "error"


async def test_consumer_gone_cancels_everything() -> None:
    producer = CountingProducer()
    leaving = RecordingSink(stop_after=10)
    staying = RecordingSink(keep_events=False)
    stats = await Pipeline(producer, sinks=[leaving, staying]).run()
    assert stats.reason == "consumer_gone"
    assert producer.cancelled
    states = {s.name: s.state for s in stats.sinks}
    assert states == {"0:recording": "gone", "1:recording": "cancelled"}


async def test_detach_lets_the_rest_go_on() -> None:
    producer = ScriptedProducer.from_text("one two three four five six seven eight")
    leaving = RecordingSink(stop_after=2)
    staying = RecordingSink()
    stats = await Pipeline(
        producer, sinks=[Route(leaving, on_failure="detach"), staying], source_buffer=1
    ).run()
    assert stats.reason == "done"
    assert staying.text == "one two three four five six seven eight"
    assert [s.state for s in stats.sinks] == ["gone", "finished"]


async def test_when_every_sink_detached_the_producer_is_cancelled() -> None:
    producer = CountingProducer()
    stats = await Pipeline(
        producer, sinks=[Route(RecordingSink(stop_after=5), on_failure="detach")]
    ).run()
    assert producer.cancelled
    assert stats.reason == "consumer_gone"


class Boom(Exception):
    pass


async def test_a_failing_sink_fails_the_pipeline_or_is_detached() -> None:
    async def broken(events: EventReceiver) -> None:
        await events.receive()
        raise Boom("disk on fire")

    with pytest.raises(Boom, match="disk on fire"):
        await Pipeline(CountingProducer(), sinks=[broken, RecordingSink(keep_events=False)]).run()

    sink = RecordingSink()
    stats = await Pipeline(
        ScriptedProducer.from_text("a b c"), sinks=[Route(broken, on_failure="detach"), sink]
    ).run()
    assert sink.text == "a b c"
    assert stats.sinks[0].state == "failed"
    assert stats.sinks[0].error == "Boom: disk on fire"


async def test_fail_policy_ends_only_that_sinks_stream(autojump_clock: trio.abc.Clock) -> None:
    slow = RecordingSink(delay=10)
    fast = RecordingSink()
    stats = await Pipeline(
        ScriptedProducer.from_text("a b c d e f g h"),
        sinks=[Route(slow, policy="fail", max_items=2), fast],
    ).run()
    assert fast.text == "a b c d e f g h"
    assert isinstance(slow.events[-1], Error)
    assert slow.events[-1].kind == "overflow"
    assert stats.sinks[0].state == "detached"
    assert stats.reason == "done"


async def test_drop_oldest_tells_the_sink(autojump_clock: trio.abc.Clock) -> None:
    from pipeline import Dropped

    slow = RecordingSink(delay=10)
    await Pipeline(
        ScriptedProducer.from_text("a b c d e f g h"),
        sinks=[Route(slow, policy="drop_oldest", max_items=2)],
    ).run()
    dropped = [e for e in slow.events if isinstance(e, Dropped)]
    assert dropped
    lost = sum(d.text_chars for d in dropped)
    assert len(slow.text) + lost == len("a b c d e f g h")
    assert isinstance(slow.events[-1], Done)


async def test_events_hands_the_stream_to_the_caller_and_cancels_on_exit() -> None:
    producer = CountingProducer()
    seen = 0
    async with Pipeline(producer).events(policy="coalesce") as events:
        async for _ in events:
            seen += 1
            if seen == 3:
                break
    assert producer.cancelled

    got = []
    async with Pipeline(ScriptedProducer.from_text("a b")).events() as events:
        got = [e async for e in events]
    assert [type(e) for e in got] == [TextDelta, TextDelta, Done]


async def test_heartbeat_when_idle(autojump_clock: trio.abc.Clock) -> None:
    sink = RecordingSink()
    producer = ScriptedProducer([TextDelta("a"), Step(TextDelta("b"), delay=35), Done()])
    await Pipeline(producer, sinks=[sink], heartbeat_interval=10).run()
    kinds = [type(e) for e in sink.events]
    assert kinds == [TextDelta, Heartbeat, Heartbeat, Heartbeat, TextDelta, Done]
    assert [e.seq for e in sink.events] == [1, 2, 3, 4, 5, 6]


async def test_statistics_time_to_first_item_and_blocked_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    producer = ScriptedProducer.from_text("a b c d", delay=0.5, first_delay=2.0)
    slow = RecordingSink(delay=3)
    stats = await Pipeline(producer, sinks=[Route(slow, max_items=1)], source_buffer=1).run()
    assert stats.time_to_first_event == pytest.approx(2.0)
    assert stats.time_to_first_text == pytest.approx(2.0)
    assert stats.producer_blocked_seconds > 0
    assert stats.sinks[0].channel.blocked_seconds > 0
    assert stats.text_chars_out == 7
    assert stats.ended_at is not None


async def test_running_statistics_while_running() -> None:
    gate = trio.Event()

    async def waiting(events: EventReceiver) -> None:
        await gate.wait()
        async for _ in events:
            pass

    async with Pipeline(ScriptedProducer.from_text("a b c"), sinks=[waiting]).open() as running:
        await trio.testing.wait_all_tasks_blocked()
        snap = running.statistics()
        assert snap.reason == "running"
        assert snap.sinks[0].channel.items_queued == 4
        gate.set()
    assert running.reason == "done"


async def test_a_pipeline_runs_once() -> None:
    pipe = Pipeline(ScriptedProducer([]))
    await pipe.run()
    with pytest.raises(RuntimeError, match="runs once"):
        await pipe.run()


async def test_exception_in_the_block_cancels_the_pipeline() -> None:
    producer = CountingProducer()
    with pytest.raises(KeyError):
        async with Pipeline(producer, sinks=[RecordingSink(keep_events=False)]).open():
            await trio.lowlevel.checkpoint()
            raise KeyError("x")
    assert producer.cancelled


async def test_consumer_gone_from_sink_that_returns_early() -> None:
    async def one_and_done(events: EventReceiver) -> None:
        await events.receive()

    producer = CountingProducer()
    stats = await Pipeline(producer, sinks=[one_and_done]).run()
    assert stats.reason == "consumer_gone"
    assert producer.cancelled


async def test_sink_raising_consumer_gone_is_not_an_error() -> None:
    async def leaves(events: EventReceiver) -> None:
        await events.receive()
        raise ConsumerGone("tab closed")

    stats = await Pipeline(CountingProducer(), sinks=[leaves]).run()
    assert stats.reason == "consumer_gone"
    assert stats.sinks[0].error == "ConsumerGone: tab closed"


@pytest.mark.parametrize("stages", [False, True])
async def test_no_stage_task_without_stages(stages: bool, autojump_clock: trio.abc.Clock) -> None:
    """Without stages and heartbeat the producer's task fans out itself (one hop fewer per
    event); the events, their order and numbering are the same either way."""
    names: set[str] = set()

    async def sink(events: EventReceiver) -> None:
        nursery = trio.lowlevel.current_task().parent_nursery
        assert nursery is not None
        names.update(task.name for task in nursery.child_tasks)
        async for _ in events:
            pass

    recording = RecordingSink()
    pipe = Pipeline(
        # the first delta comes after a (virtual) second: every task is running by then
        ScriptedProducer([Step(TextDelta("one "), delay=1), TextDelta("two three"), Done()]),
        stages=[Transform(lambda text: text)] if stages else [],
        sinks=[sink, recording],
    )
    await pipe.run()
    assert ("llmpipe stages" in names) is stages
    assert "llmpipe producer" in names
    assert recording.text == "one two three"
    assert [e.seq for e in recording.events] == list(range(1, len(recording.events) + 1))
