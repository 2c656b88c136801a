"""The scripted speech engine (the test double of the speech layer): exact audio and marks."""

from __future__ import annotations

import trio
import trio.testing

from sinks.speech import AudioChunk, ScriptedSpeechEngine, SpeechEngine


async def synth(engine: SpeechEngine, text: str) -> list[AudioChunk]:
    """Every chunk ``engine`` emits for ``text`` (shared by the engines' tests)."""
    out: list[AudioChunk] = []

    async def emit(chunk: AudioChunk) -> None:
        out.append(chunk)

    await engine.synthesize(text, emit)
    return out


async def test_chunks_are_contiguous_and_marks_cover_every_word() -> None:
    engine = ScriptedSpeechEngine(sample_rate=1000, seconds_per_char=0.01, gap=0.0)
    assert isinstance(engine, SpeechEngine)
    chunks = await synth(engine, "Hi there, world.")
    assert [c.first_sample for c in chunks] == [
        sum(c.samples for c in chunks[:i]) for i in range(len(chunks))
    ]
    assert sum(c.samples for c in chunks) == 1000 * 0.01 * len("Hithere,world.")
    marks = [m for c in chunks for m in c.marks]
    assert ["Hi there, world."[m.start : m.end] for m in marks] == ["Hi", "there,", "world."]
    assert [m.sample for m in marks] == [0, 20, 80]
    assert engine.requests == ["Hi there, world."]


async def test_synthesis_time_is_spent_on_trios_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = ScriptedSpeechEngine(
        sample_rate=1000, seconds_per_char=0.1, gap=0, realtime_factor=0.5
    )
    start = trio.current_time()
    chunks = await synth(engine, "abcd")
    assert sum(c.duration for c in chunks) == 0.4
    assert trio.current_time() - start == 0.2
