"""The espeak-ng engine, for real: audio for each sentence, word marks on every word (non-ASCII
text too), backpressure, prompt cancellation, and one utterance at a time in the process."""

from __future__ import annotations

import array
import ctypes.util
import itertools
import math
import sys
import time

import pytest
import trio
import trio.lowlevel
from test_speech_scripted import synth

from pipeline import ConfigError, MissingExtraError
from sinks.speech import AudioChunk, EspeakEngine, SpeechEngine, _espeak

LONG = " ".join(["Speech is the consumer this project exists for, and a listener interrupts."] * 40)
# Several seconds of synthesis (about two hours of audio): an engine that went on after a
# cancel instead of aborting would miss the tests' real-time bounds.
HUGE = LONG * 50


def rms(chunks: list[AudioChunk]) -> float:
    samples = array.array("h", b"".join(c.pcm for c in chunks))
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def check_utterance(text: str, chunks: list[AudioChunk]) -> list[tuple[str, int]]:
    """The chunks tile the audio, each mark sits in its chunk, and the marks are the words of
    the text, in order, with samples that never go back. Returns (word, sample) pairs."""
    assert chunks
    assert [c.first_sample for c in chunks] == [
        sum(c.samples for c in chunks[:i]) for i in range(len(chunks))
    ]
    total = sum(c.samples for c in chunks)
    for c in chunks:
        assert c.sample_rate == 22050
        for m in c.marks:
            assert c.first_sample <= m.sample < c.first_sample + c.samples or (
                c.samples == 0 and m.sample == c.first_sample == total
            )
    marks = [m for c in chunks for m in c.marks]
    assert [text[m.start : m.end] for m in marks] == text.split()
    assert [m.start for m in marks] == sorted(m.start for m in marks)
    assert [m.sample for m in marks] == sorted(m.sample for m in marks)
    return [(text[m.start : m.end], m.sample) for m in marks]


async def test_each_sentence_in_order_is_audible_speech_with_a_mark_on_every_word() -> None:
    engine = EspeakEngine()
    assert isinstance(engine, SpeechEngine)
    assert (engine.name, engine.sample_rate, engine.word_marks) == ("espeak-ng", 22050, True)
    sentences = [
        "Hello world.",
        "The quick brown fox jumps over the lazy dog.",
        "Speech is the consumer this project exists for.",
        "A listener interrupts, and we know exactly what was heard.",
    ]
    for text in sentences:
        chunks = await synth(engine, text)
        marks = check_utterance(text, chunks)
        assert rms(chunks) > 1000, text
        seconds = sum(c.duration for c in chunks)
        assert 0.15 * len(marks) < seconds < 1.0 * len(marks), (text, seconds)
        # Plain words each get an event of their own: the first at the start, then later ones.
        samples = [sample for _, sample in marks]
        assert samples[0] == 0
        assert all(a < b for a, b in itertools.pairwise(samples)), marks
        # About 100 ms per chunk (the last one of a clause is shorter).
        assert max(c.samples for c in chunks) <= 2206


async def test_marks_are_code_point_offsets_in_non_ascii_text() -> None:
    engine = EspeakEngine()
    for text in [
        "Ünïcödé wörds hère, çà et là.",
        "Emoji 😀 test, then Cafe\u0301 with a combining accent.",
        "Naïve café owners say déjà vu.",
    ]:
        marks = check_utterance(text, await synth(engine, text))
        # Every word has its own event, at a later sample than the word before: had positions
        # been bytes, words after the first non-ASCII letter would be skipped (same sample).
        samples = [sample for _, sample in marks]
        assert all(a < b for a, b in itertools.pairwise(samples)), marks


async def test_a_word_espeak_gives_no_position_takes_the_next_words_sample() -> None:
    # espeak-ng reads "déjà vu" as one dictionary phrase: the event for "vu" points into
    # "déjà". The mark for "vu," is then the next word's (heard late, never early).
    text = "Café déjà vu, naïve."
    marks = dict(check_utterance(text, await synth(EspeakEngine(), text)))
    assert list(marks) == ["Café", "déjà", "vu,", "naïve."]
    assert marks["Café"] == 0 < marks["déjà"] < marks["vu,"] == marks["naïve."]
    # Words at the end with no event sit at the end of the audio, in an empty last chunk.
    text = "Hi there <"
    chunks = await synth(EspeakEngine(), text)
    check_utterance(text, chunks)
    assert chunks[-1].samples == 0
    assert [text[m.start : m.end] for m in chunks[-1].marks] == ["<"]


async def test_text_without_words_gives_one_chunk() -> None:
    for text in ["", "   "]:
        chunks = await synth(EspeakEngine(), text)
        check_utterance(text, chunks)
        assert not any(m for c in chunks for m in c.marks)


async def test_rate_and_chunk_size_are_per_engine() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    slow = await synth(EspeakEngine(rate=100, chunk_ms=200), text)
    fast = await synth(EspeakEngine(rate=350, chunk_ms=50), text)
    default = await synth(EspeakEngine(), text)
    assert sum(c.duration for c in fast) < sum(c.duration for c in default)
    assert sum(c.duration for c in default) < sum(c.duration for c in slow)
    assert max(c.samples for c in slow) == 4411  # 200 ms
    assert max(c.samples for c in default) == 2206  # 100 ms
    assert max(c.samples for c in fast) < 1400  # about 50 ms
    with pytest.raises(ValueError, match="rate"):
        EspeakEngine(rate=1000)


async def test_an_unknown_voice_is_a_config_error_and_the_engine_still_works() -> None:
    with pytest.raises(ConfigError, match="no voice 'xx-nonexistent'"):
        await synth(EspeakEngine(voice="xx-nonexistent"), "Hello.")
    french = await synth(EspeakEngine(voice="fr"), "Bonjour tout le monde.")
    check_utterance("Bonjour tout le monde.", french)
    assert rms(french) > 1000


async def test_emit_is_backpressure_the_engine_waits_for_it() -> None:
    engine = EspeakEngine()
    send, receive = trio.open_memory_channel[AudioChunk](0)
    got: list[AudioChunk] = []
    async with trio.open_nursery() as nursery:

        async def produce() -> None:
            async with send:
                await engine.synthesize(LONG, send.send)

        nursery.start_soon(produce)
        async with receive:
            async for chunk in receive:
                got.append(chunk)
                if len(got) == 3:
                    # Nothing is taken for a while: the engine holds at most one chunk.
                    await trio.sleep(0.2)
                    assert receive.statistics().tasks_waiting_send == 1
    check_utterance(LONG, got)


async def test_cancelling_mid_utterance_returns_promptly_and_the_next_call_works() -> None:
    engine = EspeakEngine()
    got: list[AudioChunk] = []

    async def emit(chunk: AudioChunk) -> None:
        got.append(chunk)
        if len(got) == 3:
            await trio.sleep_forever()  # a listener that stopped listening

    start = time.monotonic()
    with trio.fail_after(2), trio.move_on_after(0.2) as scope:
        await engine.synthesize(HUGE, emit)
    assert scope.cancelled_caught
    assert time.monotonic() - start < 1
    assert len(got) == 3
    # The library is free again, and starts afresh (marks count from 0), for any engine.
    check_utterance("Hello again.", await synth(engine, "Hello again."))
    chunks = await synth(EspeakEngine(rate=200), "And once more.")
    assert check_utterance("And once more.", chunks)[0] == ("And", 0)


async def test_a_cancel_from_an_emit_that_does_not_checkpoint_stops_the_synthesis() -> None:
    got: list[AudioChunk] = []
    start = time.monotonic()
    with trio.fail_after(2), trio.CancelScope() as scope:

        async def emit(chunk: AudioChunk) -> None:
            got.append(chunk)
            if len(got) == 3:
                scope.cancel()

        await EspeakEngine().synthesize(HUGE, emit)
    assert scope.cancelled_caught
    assert time.monotonic() - start < 1
    assert len(got) == 3


async def test_an_error_from_emit_aborts_and_propagates() -> None:
    got: list[AudioChunk] = []

    async def emit(chunk: AudioChunk) -> None:
        got.append(chunk)
        if len(got) == 2:
            raise trio.BrokenResourceError("the speaker went away")

    start = time.monotonic()
    with trio.fail_after(2), pytest.raises(trio.BrokenResourceError, match="speaker"):
        await EspeakEngine().synthesize(HUGE, emit)
    assert time.monotonic() - start < 1
    assert len(got) == 2
    check_utterance("Still working.", await synth(EspeakEngine(), "Still working."))


async def test_concurrent_utterances_take_turns_each_with_its_own_settings() -> None:
    engines = {
        "One utterance in English, slowly.": EspeakEngine(voice="en", rate=100),
        "Une autre en français, vite.": EspeakEngine(voice="fr", rate=350),
    }
    alone = {text: sum(c.duration for c in await synth(e, text)) for text, e in engines.items()}
    order: list[str] = []
    together: dict[str, list[AudioChunk]] = {}
    async with trio.open_nursery() as nursery:
        for text, engine in engines.items():

            async def run(text: str = text, engine: EspeakEngine = engine) -> None:
                async def emit(chunk: AudioChunk) -> None:
                    order.append(text)
                    together.setdefault(text, []).append(chunk)
                    await trio.lowlevel.checkpoint()  # let the other task try its turn

                await engine.synthesize(text, emit)

            nursery.start_soon(run)
    # One utterance after the other (the library is not shared mid-utterance) ...
    assert order == sorted(order, key=order.index)
    for text, chunks in together.items():
        check_utterance(text, chunks)
        # ... each with its own voice and rate (espeak-ng's audio varies by a few samples
        # from one call to the next, so compare durations).
        assert sum(c.duration for c in chunks) == pytest.approx(alone[text], rel=0.1)
    assert alone["One utterance in English, slowly."] > 2 * alone["Une autre en français, vite."]


async def test_waiting_for_the_library_is_cancellable() -> None:
    holding = trio.Event()

    async def stuck(chunk: AudioChunk) -> None:
        holding.set()
        await trio.sleep_forever()

    async def never(chunk: AudioChunk) -> None:
        raise AssertionError("the second utterance must not start")

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(EspeakEngine().synthesize, HUGE, stuck)
            await holding.wait()
            with trio.move_on_after(0.2) as scope:
                await EspeakEngine().synthesize("Waiting.", never)
            assert scope.cancelled_caught
            nursery.cancel_scope.cancel()
    check_utterance("Free again.", await synth(EspeakEngine(), "Free again."))


def test_without_the_library_the_error_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_espeak, "_loaded", None)  # as in a process that never loaded it
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # not installed
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)  # no libespeak-ng1
    with pytest.raises(MissingExtraError) as info:
        EspeakEngine()
    assert str(info.value).splitlines() == [
        "the espeak-ng speech engine needs the 'speech' extra (no module 'espeakng_loader'): "
        "pip install 'llmpipe[speech]'"
    ]
