"""The speaker: pacing by audio queued ahead, backpressure, batching, barge-in and what was heard.

Every test runs a real ``Pipeline`` (producer -> coalesce channel -> Speaker) under MockClock.
The scripted engine makes the timeline exact: at 1000 samples per second, 0.01 s per character
and 0.05 s after each word, "Alpha" lasts 100 samples, "beta" 90 and "gamma." 110, so the
sentence "Alpha beta gamma. " lasts 300 samples whatever the batches are.
"""

from __future__ import annotations

import gc
import math
import tracemalloc

import attrs
import pytest
import trio
import trio.testing

from pipeline import Error, Pipeline, Route, TextDelta
from pipeline.testing import CountingProducer, ScriptedProducer, check_sink
from sinks.speech import (
    AudioChunk,
    Conversation,
    HeardText,
    Message,
    PlaybackClock,
    ScriptedSpeechEngine,
    Speaker,
)

SENTENCE = "Alpha beta gamma. "
WORDS = [("Alpha", 100), ("beta", 90), ("gamma.", 110)]


def engine(**kw: float | bool) -> ScriptedSpeechEngine:
    return ScriptedSpeechEngine(
        sample_rate=1000, seconds_per_char=0.01, gap=0.05, chunk_seconds=0.1, **kw
    )  # type: ignore[arg-type]


def heard_at(position: int) -> str:
    """The heard text when ``position`` samples of ``SENTENCE`` repeated have played."""
    full, rest = divmod(position, 300)
    words, t = [], 0
    for word, samples in WORDS:
        t += samples
        if t > rest:
            break
        words.append(word)
    return SENTENCE * full + " ".join(words)


@attrs.define
class RecordingOutput:
    chunks: list[AudioChunk] = attrs.Factory(list)
    closed: bool = False
    started: trio.Event = attrs.Factory(trio.Event)

    async def write(self, chunk: AudioChunk, /) -> None:
        self.chunks.append(chunk)
        self.started.set()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.chunks)


def sentences(n: int) -> str:
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return "".join(f"Sentence {words[i % 10]} is here, number {i}. " for i in range(n))


async def speak(text: str, speaker: Speaker, *, delay: float = 0.0) -> None:
    producer = ScriptedProducer.from_text(text, delay=delay)
    stats = await Pipeline(producer, sinks=[Route(speaker, policy="coalesce")]).run()
    assert stats.reason == "done", stats.error


# -- the internal playback clock -------------------------------------------------------------


async def test_the_default_player_plays_in_real_time_and_stops_where_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    player = Speaker(engine()).player
    assert isinstance(player, PlaybackClock)
    chunk = AudioChunk(bytes(2 * 1000), 1000)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(player.write, chunk)
        await trio.sleep(0.5)
        assert player.played_samples == 500
        await trio.sleep(0.333)
        player.stop()  # what Speaker.interrupt does: mid-frame, exact to the sample
    assert trio.current_time() - start == pytest.approx(0.833)
    assert player.played_samples == 833
    await trio.sleep(1)
    assert player.played_samples == 833
    player.resume()
    await player.write(chunk)  # after a gap: a new schedule, still exact
    await player.aclose()
    assert player.played_samples == 1833


# -- speaking everything, in order -------------------------------------------------------------


async def test_sink_contract() -> None:
    await check_sink(lambda: Speaker(engine()))


async def test_every_sentence_is_spoken_in_order_and_nothing_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = sentences(40)
    eng = engine(realtime_factor=0.2)
    out = RecordingOutput()
    speaker = Speaker(eng, outputs=[out])
    await speak(text, speaker)
    assert speaker.heard() == HeardText(text, exact=True)
    assert "".join(eng.requests) == text
    stats = speaker.statistics()
    assert out.samples == round(stats.audio_seconds * 1000) == round(stats.played_seconds * 1000)
    assert stats.chars_spoken == len(text)
    assert stats.seconds_ahead == 0
    assert not out.closed  # the caller owns the outputs


async def test_a_long_answer_is_spoken_in_few_engine_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = sentences(60)
    eng = engine(realtime_factor=0.1)
    speaker = Speaker(eng, max_batch_chars=300)
    await speak(text, speaker)
    # The default high (15 s) lets max_batch_chars decide: 8 to 9 sentences per request.
    assert speaker.statistics().engine_requests == len(eng.requests) <= 60 / 6
    assert all(len(r) <= 300 for r in eng.requests)
    assert "".join(eng.requests) == text


async def test_each_request_brings_the_audio_queued_ahead_up_to_high(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A request goes out when at most `low` seconds are queued; it takes whole sentences until
    # they should reach `high` (the one that crosses it too), so every request but the first
    # (the fast path) and the last (the end of the text) holds at least high - low seconds.
    low, high = 1.0, 2.0  # a window of less than two sentences (0.63 s each)
    eng = engine(realtime_factor=0.1)
    speaker = Speaker(eng, ahead_seconds=(low, high))
    await speak(sentences(60), speaker)
    seconds = [0.01 * len(r) + 0.05 * len(r.split()) for r in eng.requests]
    assert all(s >= high - low for s in seconds[1:-1]), seconds
    assert "".join(eng.requests) == sentences(60)


async def test_after_an_error_what_was_received_is_spoken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    producer = ScriptedProducer([TextDelta("First one. Second"), Error("connection", "reset")])
    speaker = Speaker(engine())
    stats = await Pipeline(producer, sinks=[Route(speaker, policy="coalesce")]).run()
    assert stats.reason == "error"
    assert stats.sinks[0].state == "finished"
    assert speaker.heard() == HeardText("First one. Second", exact=True)


# -- pacing --------------------------------------------------------------------------------


async def test_fast_producer_slow_playback_memory_stays_under_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    producer = CountingProducer(count=300, text="Hello there, my friend. ")
    speaker = Speaker(
        engine(realtime_factor=0.1),
        max_pending_chars=200,
        max_batch_chars=150,
        ahead_seconds=(1.0, 3.0),
    )
    route = Route(speaker, policy="coalesce", max_bytes=1024)
    async with Pipeline(producer, sinks=[route]).open() as running:
        for _ in range(10):  # 120 s of speech; the text in flight stays flat all along
            await trio.sleep(10.0)
            in_flight = producer.emitted * 24 - len(speaker.heard().text)
            # channel + the delta being cut into sentences + sentences waiting (+ a slice, +
            # one over) + text sent to the engine and not heard (3 s ahead + a batch playing)
            assert in_flight <= 1024 + 1024 + 200 + 256 + 150 + 250 + 150
            assert speaker.statistics().seconds_ahead <= 3.0 + 0.1
    stats = running.statistics()
    assert stats.reason == "done"
    assert stats.producer_blocked_seconds > 60
    assert stats.sinks[0].channel.high_water_bytes <= 1024
    s = speaker.statistics()
    assert s.max_chars_waiting <= 200 + 256 + 150
    assert 1.0 <= s.max_seconds_ahead <= 3.0 + 0.1  # high, plus the chunk that went over
    assert speaker.heard().text == "Hello there, my friend. " * 300


@pytest.mark.parametrize("factor", [0.1, 0.5, 0.9])
async def test_no_underrun_after_the_first_audio_when_the_engine_is_faster_than_real_time(
    autojump_clock: trio.testing.MockClock, factor: float
) -> None:
    speaker = Speaker(engine(realtime_factor=factor))
    await speak(sentences(30), speaker)
    stats = speaker.statistics()
    assert stats.underruns == 0
    assert stats.realtime_factor == pytest.approx(factor)
    assert stats.time_to_first_audio is not None
    assert stats.time_to_first_audio <= 0.1 * factor


async def test_an_engine_slower_than_real_time_underruns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The check above can fail: the same run with a slow engine does run dry.
    speaker = Speaker(engine(realtime_factor=1.5))
    await speak(sentences(5), speaker)
    assert speaker.statistics().underruns > 0
    assert speaker.statistics().underrun_seconds > 0


async def test_first_clause_fast_path_gives_audio_sooner_than_whole_sentences(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = (
        "Sure, here is the plan for today, and it has quite a few steps that we will go "
        "through together one by one. Then we rest."
    )
    ttfa = {}
    for min_chars in (20, None):
        eng = engine(realtime_factor=0.1)
        speaker = Speaker(eng, first_clause_min_chars=min_chars, first_piece_max_chars=None)
        await speak(text, speaker, delay=0.05)
        ttfa[min_chars] = speaker.statistics().time_to_first_audio
        assert speaker.heard().text == text
        if min_chars:
            assert eng.requests[0] == "Sure, here is the plan for today, "
    fast, slow = ttfa[20], ttfa[None]
    assert fast is not None
    assert slow is not None
    assert fast < 0.5 * slow


async def test_a_long_first_sentence_without_a_clause_starts_with_its_first_words(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = (
        "The sky looks blue because the air scatters the short blue waves of sunlight much "
        "more than the long red ones. Then we rest."
    )
    ttfa = {}
    for max_chars in (40, None):
        eng = engine(realtime_factor=0.1)
        speaker = Speaker(eng, first_piece_max_chars=max_chars)
        await speak(text, speaker, delay=0.05)
        ttfa[max_chars] = speaker.statistics().time_to_first_audio
        assert speaker.heard().text == text
        if max_chars:
            assert eng.requests[0] == "The sky looks blue because the air "
    fast, slow = ttfa[40], ttfa[None]
    assert fast is not None
    assert slow is not None
    assert fast < 0.5 * slow


# -- barge-in ------------------------------------------------------------------------------


async def interrupt_at(
    position: int,
    speaker: Speaker,
    producer: CountingProducer | ScriptedProducer,
    out: RecordingOutput,
) -> tuple[HeardText, str]:
    """Run the pipeline, interrupt when ``position`` samples have played; return what
    interrupt() said and the pipeline's end reason. Checks that nothing plays after."""
    async with Pipeline(producer, sinks=[Route(speaker, policy="coalesce")]).open() as running:
        await out.started.wait()
        start = trio.current_time()  # the first audio's start
        await trio.sleep_until(start + position / 1000)
        heard = await speaker.interrupt()
        played, written, requests = speaker.player.played_samples, len(out.chunks), speaker
        assert played == position  # stopped at once (well within one 20 ms frame)
        requests_then = speaker.statistics().engine_requests
        await trio.sleep(5.0)
        assert speaker.player.played_samples == played
        assert len(out.chunks) <= written + 1  # at most the chunk in hand when stopped
        assert requests.statistics().engine_requests == requests_then
    assert speaker.heard() == heard
    assert speaker.statistics().seconds_ahead == 0
    return heard, running.statistics().reason


@pytest.mark.parametrize("position", [450, 555, 1])
async def test_interrupt_mid_word(autojump_clock: trio.testing.MockClock, position: int) -> None:
    producer = CountingProducer(text=SENTENCE)
    out = RecordingOutput()
    speaker = Speaker(engine(), outputs=[out])
    heard, reason = await interrupt_at(position, speaker, producer, out)
    assert heard == HeardText(heard_at(position), exact=True)
    assert heard.text == {450: "Alpha beta gamma. Alpha", 555: "Alpha beta gamma. Alpha beta"}.get(
        position, ""
    )
    assert reason == "consumer_gone"
    assert producer.closed_at is not None
    assert producer.cancelled
    assert speaker.interrupted
    assert speaker.statistics().interrupted


# 300: the end of the first utterance (the first sentence goes alone); 600, 1200: sentence ends
# inside a batch; 400: a word boundary. Repeated: trio runs the tasks woken at that instant in
# a random order, and the answer must not depend on it.
@pytest.mark.parametrize("repeat", range(4))
@pytest.mark.parametrize("position", [300, 600, 1200, 400])
async def test_interrupt_exactly_at_a_sentence_end(
    autojump_clock: trio.testing.MockClock, position: int, repeat: int
) -> None:
    producer = CountingProducer(text=SENTENCE)
    out = RecordingOutput()
    speaker = Speaker(engine(realtime_factor=0.3), outputs=[out])
    heard, reason = await interrupt_at(position, speaker, producer, out)
    expected = {300: SENTENCE, 600: SENTENCE * 2, 1200: SENTENCE * 4, 400: SENTENCE + "Alpha"}
    assert heard == HeardText(expected[position], exact=True)
    assert reason == "consumer_gone"
    assert producer.cancelled


async def test_keep_generation_on_interrupt(autojump_clock: trio.testing.MockClock) -> None:
    producer = CountingProducer(count=200, text=SENTENCE)
    out = RecordingOutput()
    speaker = Speaker(engine(), outputs=[out], keep_generation_on_interrupt=True)
    heard, reason = await interrupt_at(450, speaker, producer, out)
    assert heard == HeardText("Alpha beta gamma. Alpha", exact=True)
    assert reason == "done"
    assert producer.emitted == 200
    assert not producer.cancelled


async def test_interrupt_after_the_stream_ended_while_still_speaking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    producer = ScriptedProducer.from_text(SENTENCE * 5)
    out = RecordingOutput()
    speaker = Speaker(engine(), outputs=[out])
    heard, reason = await interrupt_at(450, speaker, producer, out)
    assert heard == HeardText("Alpha beta gamma. Alpha", exact=True)
    assert reason == "done"  # the producer had finished: nothing to cancel, no consumer gone
    assert speaker.interrupted


async def test_an_engine_without_word_marks_gives_an_estimate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    out = RecordingOutput()
    speaker = Speaker(engine(word_marks=False), outputs=[out])
    heard, _ = await interrupt_at(450, speaker, CountingProducer(text=SENTENCE), out)
    assert not heard.exact
    assert heard.text.startswith(SENTENCE)
    assert (SENTENCE * 10).startswith(heard.text)
    assert heard.text.endswith(("Alpha", "beta", "gamma. "))
    # At the end of an utterance nothing needs estimating.
    out = RecordingOutput()
    speaker = Speaker(engine(word_marks=False), outputs=[out])
    heard, _ = await interrupt_at(300, speaker, CountingProducer(text=SENTENCE), out)
    assert heard == HeardText(SENTENCE, exact=True)


async def test_heard_text_is_the_original_text_when_a_transform_cleans_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    eng = engine()
    out = RecordingOutput()
    speaker = Speaker(eng, outputs=[out], transform=lambda s: s.replace("**", ""))
    producer = CountingProducer(text="**Alpha** beta gamma. ")
    heard, _ = await interrupt_at(450, speaker, producer, out)
    assert heard == HeardText("**Alpha** beta gamma. **Alpha**", exact=True)
    assert all("*" not in r for r in eng.requests)


async def test_interrupt_before_and_after_speaking(autojump_clock: trio.testing.MockClock) -> None:
    speaker = Speaker(engine())
    assert await speaker.interrupt() == HeardText("", exact=True)
    producer = ScriptedProducer.from_text(SENTENCE)
    stats = await Pipeline(producer, sinks=[Route(speaker, policy="coalesce")]).run()
    assert stats.reason == "consumer_gone"
    assert speaker.statistics().engine_requests == 0

    speaker = Speaker(engine())
    await speak(SENTENCE, speaker)
    assert await speaker.interrupt() == HeardText(SENTENCE, exact=True)
    assert not speaker.interrupted


# -- history ---------------------------------------------------------------------------------


async def test_conversation_keeps_what_was_heard(autojump_clock: trio.testing.MockClock) -> None:
    conversation = Conversation(system="Be brief.")
    conversation.add_user("Tell me everything.")
    out = RecordingOutput()
    speaker = Speaker(engine(), outputs=[out])
    await interrupt_at(450, speaker, CountingProducer(text=SENTENCE), out)
    cut = conversation.add_assistant(speaker)
    assert cut == Message("assistant", "Alpha beta gamma. Alpha", interrupted=True)

    conversation.add_user("Go on.")
    speaker = Speaker(engine())
    await speak(sentences(3), speaker)
    whole = conversation.add_assistant(speaker)
    assert whole == Message("assistant", sentences(3), interrupted=False)
    assert [m["role"] for m in conversation.as_dicts()] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert conversation.messages[0].content == "Be brief."


def test_configuration_is_checked() -> None:
    from pipeline import ConfigError

    with pytest.raises(ConfigError):
        Speaker(engine(), ahead_seconds=(4.0, 1.0))
    with pytest.raises(ConfigError):
        Speaker(engine(), max_pending_chars=0)
    assert math.isfinite(Speaker(engine()).ahead_seconds[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("policy", "minutes"),
    [("coalesce", 30), ("block", 10), ("spill", 10)],  # coalesce: what `llmpipe speak` uses
)
async def test_a_long_answer_keeps_memory_flat_with_every_lossless_policy(
    autojump_clock: trio.testing.MockClock, policy: str, minutes: int
) -> None:
    # Sentences of 0.4 s from a producer that could write them all at once: half an hour of
    # speech (10 minutes for the other policies: the 20 ms player frames cost the suite time).
    # Beyond the heard text (the product, kept for the history), what is held stays the same
    # small constant all along, whatever the policy of the route that feeds the speaker.
    # tracemalloc counts the bytes allocated and alive (after a collection: cancelled waits
    # leave cycles for the gc). The test engine's record of its requests is emptied each time.
    text = "Hello there, my friend. "
    count = minutes * 60 * 10 // 4
    producer = CountingProducer(count=count, text=text)
    eng = engine(realtime_factor=0.1)
    speaker = Speaker(eng, max_pending_chars=500)
    route = Route(speaker, policy=policy, max_items=64, max_bytes=4096)  # type: ignore[arg-type]
    held: list[int] = []
    tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        async with Pipeline(producer, sinks=[route]).open() as running:
            for _ in range(minutes // 5 - 1):  # every 5 minutes until the end
                await trio.sleep(300)
                heard = len(speaker.heard().text)
                in_flight = producer.emitted * len(text) - heard
                if policy != "spill":  # spill keeps the excess on disk, by design
                    # channel + the delta being cut + sentences waiting + the text ahead
                    assert in_flight <= 4096 + 4096 + 500 + 256 + 500 + 500, in_flight
                eng.requests.clear()
                gc.collect()
                held.append(tracemalloc.get_traced_memory()[0] - base - heard)
    finally:
        tracemalloc.stop()
    assert running.statistics().reason == "done"
    assert speaker.heard().text == text * count
    assert speaker.statistics().played_seconds == pytest.approx(minutes * 60)
    # Flat: the same constant after 5 minutes as at the end (measured: 100-133 KB: the
    # channel, the text in hand, 15 s of audio ahead, trio's tasks; it swings by the 256 heard
    # sentences kept apart before they are joined into one string).
    assert max(held) <= 192 * 1024, held
    assert max(held) - min(held) <= 48 * 1024, held
