"""The runner: fan-out, sequence numbers, ending, failures, detach, statistics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from pipeline import (
    Accumulate,
    ConsumerGone,
    Done,
    Error,
    Event,
    EventReceiver,
    Heartbeat,
    Pipeline,
    PipelineStatistics,
    ProducerConnectionError,
    ProducerStatusError,
    Route,
    Stage,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Transform,
    Usage,
    Validate,
    lone_exception_unwrapped,
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


async def test_partial_chars_count_what_a_smoothing_stage_released_ahead_of_the_error() -> None:
    """The terminal's smoothing (an AdaptiveChunker) holds text and releases it ahead of the
    error: the error's partial_chars counts it (it counted only what had left the chunker)."""
    sink = RecordingSink()
    script = [
        TextDelta("Hello "),
        TextDelta("world, "),
        TextDelta("again"),
        Step(raise_=ProducerStatusError("overloaded (529)", status_code=529)),
    ]
    chunker = AdaptiveChunker(min_chars=1, interval=10.0)  # holds everything after the first
    await Pipeline(ScriptedProducer(script), stages=[chunker, Accumulate()], sinks=[sink]).run()
    delivered = "".join(e.text for e in sink.events if isinstance(e, TextDelta))
    err = sink.events[-1]
    assert isinstance(err, Error)
    assert delivered == "Hello world, again"
    assert (err.partial_chars, err.partial_text) == (len(delivered), delivered)


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


# -- The two schedules (no stage task / a stage task) follow one set of rules ----------------

_Case = tuple[list[Step | Event], Callable[[], list[RecordingSink]], Callable[[], list[Route]]]


def _case(
    script: list[Step | Event], *on_failure: str | None, stop_after: int | None = None
) -> _Case:
    """A script and its sinks: one RecordingSink per entry of ``on_failure``; those with a
    policy stop reading after ``stop_after`` events (``None``: read to the end)."""
    sinks: list[RecordingSink] = []

    def make_sinks() -> list[RecordingSink]:
        sinks[:] = [
            RecordingSink(stop_after=None if how is None else stop_after) for how in on_failure
        ]
        return sinks

    def routes() -> list[Route]:
        return [
            Route(sink, on_failure="detach" if how == "detach" else "cancel")
            for sink, how in zip(sinks, on_failure, strict=True)
        ]

    return script, make_sinks, routes


_WORDS = [Step(TextDelta(w), delay=1) for w in ("one ", "two ", "three ", "four ", "five")]
_SCHEDULE_CASES: dict[str, _Case] = {
    "error_event_mid_stream": _case(
        [
            Step(TextDelta("a "), delay=1),
            TextDelta("b"),
            Step(Error(kind="status", message="overloaded", retryable=True), delay=1),
            TextDelta("late"),
            Done("stop"),
        ],
        None,
        None,
    ),
    "raises_after_first_event": _case(
        [TextDelta("a"), Step(delay=1, raise_=ProducerConnectionError("reset by peer"))], None
    ),
    "raises_before_first_event": _case(
        [Step(delay=1, raise_=ProducerConnectionError("refused"))], None
    ),
    "returns_without_done": _case([TextDelta("a"), Step(TextDelta("b"), delay=1)], None),
    "emits_after_done": _case(
        [TextDelta("a"), Done("stop"), TextDelta("late"), Error(kind="x", message="late")], None
    ),
    "sink_leaves_cancel": _case([*_WORDS, Done("stop")], "cancel", None, stop_after=2),
    "sink_leaves_detach": _case([*_WORDS, Done("stop")], "detach", None, stop_after=2),
}


async def _run_schedule(case: _Case, *, staged: bool) -> dict[str, Any]:
    """Run ``case`` without (direct) or with (a pass-through stage) a stage task; what the
    sinks, the producer and the statistics saw."""
    script, make_sinks, routes = case
    producer = ScriptedProducer(script)
    sinks = make_sinks()
    pipe = Pipeline(producer, stages=[Stage()] if staged else [], sinks=routes())
    raised = None
    started_at = trio.current_time()
    opened = pipe.open()
    try:
        async with opened as running:
            pass
    except Exception as exc:
        raised = f"{type(exc).__name__}: {exc}"
    stats: PipelineStatistics = running.statistics()
    assert len(stats.stages) == int(staged)
    assert stats.ended_at is not None
    return {
        "events": [sink.events for sink in sinks],
        "raised": raised,
        "producer": (
            producer.emitted,
            producer.cancelled,
            None if producer.closed_at is None else producer.closed_at - started_at,
        ),
        "reason": stats.reason,
        "error": stats.error,
        "counts": (stats.events_in, stats.events_out, stats.last_seq),
        "text": (stats.text_chars_out, stats.text_bytes_out),
        "times": (
            stats.started_at - started_at,
            stats.ended_at - started_at,
            stats.time_to_first_event,
            stats.time_to_first_text,
        ),
        "sinks": [
            (s.name, s.state, s.error, s.channel.items_sent, s.channel.items_received)
            for s in stats.sinks
        ],
    }


@pytest.mark.parametrize("name", list(_SCHEDULE_CASES))
async def test_both_schedules_give_the_same_stream(
    name: str, autojump_clock: trio.testing.MockClock
) -> None:
    case = _SCHEDULE_CASES[name]
    direct = await _run_schedule(case, staged=False)
    staged = await _run_schedule(case, staged=True)
    assert direct == staged
    # ... and it is the stream the rules promise (the same wrong answer twice would pass above).
    events = direct["events"][-1]  # the last sink reads to the end, or until cancelled
    kinds = [type(e).__name__ for e in events]
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    if name == "error_event_mid_stream":
        assert kinds == ["TextDelta", "TextDelta", "Error"]
        assert events[-1].partial_chars == 3
        assert direct["reason"] == "error"
        assert direct["error"] == "status: overloaded"
        assert direct["counts"] == (3, 3, 3)
        assert direct["producer"][1], "the producer was not cancelled after its Error"
        assert direct["events"][0] == events
    elif name == "raises_after_first_event":
        assert kinds == ["TextDelta", "Error"]
        assert (events[-1].kind, events[-1].partial_chars) == ("connection", 1)
        assert direct["reason"] == "error"
        assert direct["counts"] == (1, 2, 2)
    elif name == "raises_before_first_event":
        assert events == []
        assert direct["raised"] == "ProducerConnectionError: refused"
        assert direct["reason"] == "failed"
        assert direct["counts"] == (0, 0, 0)
        assert direct["sinks"][0][1] == "cancelled"
    elif name == "returns_without_done":
        assert events == [TextDelta("a", seq=1), TextDelta("b", seq=2), Done(None, seq=3)]
        assert (direct["reason"], direct["counts"]) == ("done", (2, 3, 3))
        assert direct["times"][1] == 1.0
    elif name == "emits_after_done":
        assert events == [TextDelta("a", seq=1), Done("stop", seq=2)]
        assert direct["counts"] == (2, 2, 2)  # what came after Done was not taken in
        assert direct["producer"][:2] == (2, True)
    elif name == "sink_leaves_cancel":
        assert direct["reason"] == "consumer_gone"
        assert [s[1] for s in direct["sinks"]] == ["gone", "cancelled"]
        assert direct["counts"] == (2, 2, 2)
        assert direct["producer"][1:] == (True, 2.0)  # cancelled in its next wait
    elif name == "sink_leaves_detach":
        assert direct["reason"] == "done"
        assert [s[1] for s in direct["sinks"]] == ["gone", "finished"]
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == (
            "one two three four five"
        )
        assert direct["counts"] == (6, 6, 6)
        assert not direct["producer"][1]
    else:  # pragma: no cover
        raise AssertionError(name)


async def test_a_failure_beside_a_cancellation_is_raised_as_itself() -> None:
    """A task fails while its sibling is being cancelled (the stream's scope cancelled as a
    read fails): ``lone_exception_unwrapped`` raises the failure, not a group that no
    ``except`` by type catches, and the cancellation still ends the scope."""
    reached_after = False
    with trio.CancelScope() as outer:
        with pytest.raises(ValueError, match="read failed"), lone_exception_unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.lowlevel.checkpoint()
                outer.cancel()
                raise ValueError("read failed")
        await trio.lowlevel.checkpoint()  # the cancellation comes back here
        reached_after = True
    assert outer.cancelled_caught
    assert not reached_after
