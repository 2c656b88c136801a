"""Terminal and file sinks, and the sink conformance check."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import trio

from pipeline import Error, Pipeline, ProducerConnectionError, Route, TextDelta, ToolCallEnd
from pipeline.testing import ScriptedProducer, Step, check_sink
from sinks import EventLogSink, TerminalSink, TextFileSink


class Buffer(io.BytesIO):
    pass


async def test_terminal_sink_writes_text_tools_and_errors() -> None:
    out, err = Buffer(), Buffer()
    script = [
        TextDelta("Héllo "),
        ToolCallEnd(0, "c1", "search", '{"q":"x"}'),
        TextDelta("wörld"),
        Error(kind="timeout", message="stalled", retryable=True),
    ]
    await Pipeline(ScriptedProducer(script), sinks=[TerminalSink(out, err)]).run()
    assert out.getvalue().decode() == 'Héllo \n[tool search({"q":"x"})]\nwörld\n'
    assert err.getvalue().decode() == "\n[error timeout: stalled]\n"


async def test_terminal_sink_broken_pipe_is_consumer_gone() -> None:
    class Closed(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            raise BrokenPipeError

    stats = await Pipeline(
        ScriptedProducer.from_text("a b c"), sinks=[TerminalSink(Closed(), Buffer())]
    ).run()
    assert stats.reason == "consumer_gone"


async def test_text_file_sink_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out" / "answer.txt"
    target.parent.mkdir()
    target.write_text("old")
    seen_during: list[str] = []

    async def peek(events: trio.abc.ReceiveChannel[object]) -> None:
        async for _ in events:
            seen_during.append(target.read_text())

    await Pipeline(
        ScriptedProducer.from_text("new answer ünïcode"), sinks=[TextFileSink(target), peek]
    ).run()
    assert target.read_text() == "new answer ünïcode"
    assert set(seen_during) == {"old"}  # never a half-written file at the final path
    assert sorted(p.name for p in target.parent.iterdir()) == ["answer.txt"]


async def test_text_file_sink_keeps_partial_on_error(tmp_path: Path) -> None:
    target = tmp_path / "answer.txt"
    script = [TextDelta("half "), Step(raise_=ProducerConnectionError("reset"))]
    await Pipeline(ScriptedProducer(script), sinks=[TextFileSink(target)]).run()
    assert not target.exists()
    assert (tmp_path / "answer.txt.partial").read_text() == "half "


async def test_text_file_sink_keeps_partial_on_cancel(tmp_path: Path) -> None:
    # Real clock: the sink writes in a worker thread, which MockClock's autojump cannot see.
    target = tmp_path / "answer.txt"
    sink = TextFileSink(target)
    script = [TextDelta("so far"), Step(TextDelta("never"), delay=3600)]
    with trio.fail_after(10):
        async with Pipeline(ScriptedProducer(script), sinks=[sink]).open() as running:
            while sink.written_chars < 6:  # noqa: ASYNC110 - waits on a worker thread
                await trio.sleep(0.001)
            running.cancel()
    assert not target.exists()
    assert (tmp_path / "answer.txt.partial").read_text() == "so far"


async def test_event_log_sink_writes_every_event(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    await Pipeline(
        ScriptedProducer.from_text("a b"), sinks=[Route(EventLogSink(log), policy="spill")]
    ).run()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["type"], e["seq"]) for e in lines] == [("text", 1), ("text", 2), ("done", 3)]


@pytest.mark.parametrize("kind", ["terminal", "file", "event-log"])
async def test_sinks_pass_the_conformance_check(
    kind: str, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    counter = iter(range(100))

    def make() -> object:
        if kind == "terminal":
            return TerminalSink(Buffer(), Buffer())
        if kind == "file":
            return TextFileSink(tmp_path / f"f{next(counter)}.txt")
        return EventLogSink(tmp_path / f"e{next(counter)}.jsonl")

    await check_sink(make)  # type: ignore[arg-type]
