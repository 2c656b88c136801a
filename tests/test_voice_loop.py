"""A voice loop end to end: a :class:`Conversation` over several turns, each answer streamed by a
scripted model through a real ``Pipeline`` into a :class:`Speaker`, one :class:`Player` shared
by the turns, under MockClock.

The scripted engine makes the timeline exact: a word of ``n`` characters lasts
``n * SECONDS_PER_CHAR + GAP`` seconds, whatever the batches are, so the words whose audio had
finished when the listener barged in are computed here from the text alone, and the history the
model gets on the next turn must hold exactly those words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing

from pipeline import Pipeline, Route
from pipeline.producers import ScriptedProducer
from sinks.speech import (
    AudioChunk,
    Conversation,
    HeardText,
    Message,
    Player,
    ScriptedSpeechEngine,
    Speaker,
)

RATE = 1000  # samples per second
SECONDS_PER_CHAR = 0.01
GAP = 0.05
TOKEN_DELAY = 0.01  # the model writes 100 tokens a second, far ahead of the voice

# No commas: every piece the speaker cuts is a whole sentence (no first-clause fast path). The
# model takes over two seconds to write it all, so a barge-in in its first seconds cancels it.
ANSWER_1 = (
    "Rivers carry water down to the sea. Rain fills them again in spring. "
    "Then the cycle starts over once more." + " More about rivers follows." * 50
)
ANSWER_2 = "Yes. The sea is where they end."


def engine(realtime_factor: float = 0.0) -> ScriptedSpeechEngine:
    return ScriptedSpeechEngine(
        sample_rate=RATE,
        seconds_per_char=SECONDS_PER_CHAR,
        gap=GAP,
        chunk_seconds=0.1,
        realtime_factor=realtime_factor,
    )


def word_ends(text: str) -> list[tuple[re.Match[str], int]]:
    """Each word of ``text`` and the sample at which its audio ends (from the first sample)."""
    out, end = [], 0
    for m in re.finditer(r"\S+", text):
        end += round((len(m.group()) * SECONDS_PER_CHAR + GAP) * RATE)
        out.append((m, end))
    return out


def expected_heard(text: str, position: int) -> str:
    """The original text of the words whose audio ended by sample ``position``; a sentence heard
    whole keeps the whitespace after it (the speaker cuts ``text`` into sentences with it)."""
    heard = ""
    for m, end in word_ends(text):
        if end > position:
            break
        stop = m.end()
        if m.group().endswith("."):
            while stop < len(text) and text[stop].isspace():
                stop += 1
        heard = text[:stop]
    return heard


@attrs.define
class ScriptedModel:
    """A model that answers from a script and records the history it was given each turn."""

    answers: Sequence[str]
    seen: list[list[dict[str, str]]] = attrs.Factory(list)
    producers: list[ScriptedProducer] = attrs.Factory(list)

    def producer(self, messages: list[dict[str, str]]) -> ScriptedProducer:
        self.seen.append(messages)
        answer = self.answers[len(self.seen) - 1]
        self.producers.append(ScriptedProducer.from_text(answer, delay=TOKEN_DELAY))
        return self.producers[-1]


@attrs.define
class FirstAudio:
    """An output that notes the trio time of the first audio (the player starts it then)."""

    at: float | None = None
    started: trio.Event = attrs.Factory(trio.Event)

    async def write(self, chunk: AudioChunk, /) -> None:
        if self.at is None and chunk.samples:
            self.at = trio.current_time()
            self.started.set()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@attrs.define
class VoiceLoop:
    """The loop of a voice assistant: one engine and one player for the whole conversation, a
    speaker per answer."""

    model: ScriptedModel
    engine: ScriptedSpeechEngine = attrs.Factory(engine)
    conversation: Conversation = attrs.Factory(lambda: Conversation(system="Be brief."))
    player: Player = attrs.Factory(Player)
    speakers: list[Speaker] = attrs.Factory(list)

    async def turn(self, user: str, *, interrupt_at: int | None = None) -> tuple[Message, str]:
        """One turn; barge in when ``interrupt_at`` samples of the answer have played. Returns
        the assistant's message as added to the history and the pipeline's end reason."""
        self.conversation.add_user(user)
        producer = self.model.producer(self.conversation.as_dicts())
        first = FirstAudio()
        speaker = Speaker(self.engine, outputs=[first], player=self.player)
        self.speakers.append(speaker)
        async with Pipeline(producer, sinks=[Route(speaker, policy="coalesce")]).open() as running:
            if interrupt_at is not None:
                await first.started.wait()
                assert first.at is not None
                await trio.sleep_until(first.at + interrupt_at / RATE)
                heard = await speaker.interrupt()
                stats = speaker.statistics()
                if not stats.underruns:  # the clock decided: exactly that much audio played
                    assert round(stats.played_seconds * RATE) == interrupt_at
        if interrupt_at is not None:
            assert speaker.heard() == heard
        return self.conversation.add_assistant(speaker), running.statistics().reason


async def test_the_history_holds_what_was_heard_and_the_next_turn_gets_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ends = word_ends(ANSWER_1)
    position = (ends[8][1] + ends[9][1]) // 2  # in the middle of the tenth word, "them"
    heard = "Rivers carry water down to the sea. Rain fills"
    assert expected_heard(ANSWER_1, position) == heard  # the timing computed by hand agrees

    loop = VoiceLoop(ScriptedModel([ANSWER_1, ANSWER_2]))
    message, reason = await loop.turn("Tell me about rivers.", interrupt_at=position)
    assert message == Message("assistant", heard, interrupted=True)
    assert reason == "consumer_gone"
    assert loop.model.producers[0].cancelled  # the generation was cancelled upstream
    first = loop.speakers[0].statistics()
    assert (first.underruns, first.played_seconds) == (0, position / RATE)

    message, reason = await loop.turn("Do they all end in the sea?")
    assert message == Message("assistant", ANSWER_2, interrupted=False)
    assert reason == "done"
    # After the barge-in the shared player played the next answer whole.
    assert loop.speakers[1].statistics().played_seconds == word_ends(ANSWER_2)[-1][1] / RATE

    # The model's second request carried the history with only the heard words in it.
    assert loop.model.seen[1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about rivers."},
        {"role": "assistant", "content": heard},
        {"role": "user", "content": "Do they all end in the sea?"},
    ]
    assert [m.interrupted for m in loop.conversation.messages] == [False] * 2 + [True] + [False] * 2


# Positions at the end of a word (sample count where its audio ends), one sample before, and one
# after: the word counts from the instant its last sample has played, and not one sample sooner.
# Repeated: trio runs the tasks woken at one instant in a random order, and the answer must not
# depend on it. Words: "water", "sea." (a sentence end), "Rain" (the next one starts), "spring.".
@pytest.mark.parametrize("repeat", range(3))
@pytest.mark.parametrize("word", [2, 6, 7, 12])
@pytest.mark.parametrize("shift", [-1, 0, 1])
async def test_a_turn_interrupted_at_a_word_boundary_counts_that_word(
    autojump_clock: trio.testing.MockClock, word: int, shift: int, repeat: int
) -> None:
    ends = word_ends(ANSWER_1)
    position = ends[word][1] + shift
    expected = expected_heard(ANSWER_1, position)
    last_word = ends[word][0]
    if shift >= 0:
        assert expected.rstrip().endswith(last_word.group())
        assert len(expected.split()) == word + 1
    else:
        assert len(expected.split()) == word

    loop = VoiceLoop(ScriptedModel([ANSWER_1, ANSWER_2]))
    message, _ = await loop.turn("Tell me about rivers.", interrupt_at=position)
    assert message == Message("assistant", expected, interrupted=True)
    assert loop.speakers[0].heard() == HeardText(expected, exact=True)
    assert loop.speakers[0].statistics().underruns == 0
    message, _ = await loop.turn("Go on.")
    assert loop.model.seen[1][2] == {"role": "assistant", "content": expected}
    assert message.content == ANSWER_2


# 0.5: twice as fast as real time; 1.5: slower than real time, so the check can fail.
@pytest.mark.parametrize("factor", [0.0, 0.5, 1.5])
async def test_statistics_show_time_to_first_audio_and_no_underruns_when_the_engine_is_fast(
    autojump_clock: trio.testing.MockClock, factor: float
) -> None:
    loop = VoiceLoop(ScriptedModel([ANSWER_1, ANSWER_2, ANSWER_1]), engine=engine(factor))
    position = word_ends(ANSWER_2)[2][1]  # the end of "sea"
    await loop.turn("Tell me about rivers.")
    await loop.turn("And then?", interrupt_at=position)
    await loop.turn("Once more.")
    first_sentence = ANSWER_1.split(". ")[0] + ". "
    for speaker in loop.speakers:
        stats = speaker.statistics()
        assert stats.time_to_first_audio is not None
        # The first sentence arrives token by token (one more token shows that it ended), then
        # the engine synthesises its first chunk (0.1 s of audio) at ``factor``.
        tokens = len(first_sentence.split()) + 1
        assert stats.time_to_first_audio <= tokens * TOKEN_DELAY + 0.1 * factor + 1e-9
        if factor < 1:
            assert stats.underruns == 0
            assert stats.underrun_seconds == 0
    player = loop.player.statistics()
    if factor < 1:
        # The silences between turns (an answer's end, a barge-in) are not underruns either.
        assert player.underruns == 0
        assert loop.speakers[0].heard().text == ANSWER_1
        assert loop.speakers[1].heard().text == "Yes. The sea"
        assert loop.speakers[2].heard().text == ANSWER_1
    else:
        assert any(s.statistics().underruns for s in loop.speakers)
        assert player.underruns > 0
