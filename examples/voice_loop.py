"""A voice loop with barge-in: three turns of a spoken conversation, the second one interrupted.

    python examples/voice_loop.py [OUT.wav]

Each answer comes from a scripted "model" (a ``ScriptedProducer``, token by token) that is
given the conversation so far, and is spoken by real espeak-ng through a ``Speaker``, its
markdown cleaned for speech. A ``Player`` plays in real time (silently; with ``OUT.wav`` what
it played goes into that file). In the second turn the listener barges in after about a second
of audio: ``interrupt()`` stops playback, cancels the generation and returns the whole words
that were heard. The ``Conversation`` keeps only those in the assistant's turn, so the model's
next request holds what the listener heard, not what the model wrote. About 5 s.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import trio

from pipeline import Pipeline, Route
from pipeline.producers import ScriptedProducer
from pipeline.text import SpeakableStream
from sinks.speech import Conversation, EspeakEngine, Player, Speaker, WavWriter

BARGE_IN_AFTER = 1.0  # seconds of audio heard before the listener speaks
TOKEN_DELAY = 0.05  # the model writes 20 tokens a second: faster than the voice speaks
LONG_ANSWER = (
    "A river starts as rain on the hills, then it gathers into streams, and the streams join "
    "and grow wide and slow, and they carry sand and stones along, until at last, after many "
    "miles and many towns, the river reaches the sea."
)  # about 2 s to write: the barge-in comes while the model is still writing


def model(messages: list[dict[str, str]]) -> str:
    """A stand-in for a chat model: answers from a script, looking at the history it is given."""
    question = messages[-1]["content"]
    if question.startswith("Where"):
        return "**Rivers** flow to the sea. Ask me how!"
    if question.startswith("How"):
        return LONG_ANSWER
    words = [m for m in messages if m["role"] == "assistant"][-1]["content"].split()
    return f"Sure. I stopped after *{words[-1] if words else 'nothing'}*."


async def turn(
    conversation: Conversation,
    user: str,
    engine: EspeakEngine,
    player: Player,
    *,
    barge_in: bool = False,
) -> str:
    """One turn: the model answers the history, the speaker speaks it; returns what the model
    wrote (the history gets what was heard)."""
    print(f"user:      {user}")
    conversation.add_user(user)
    written = model(conversation.as_dicts())
    producer = ScriptedProducer.from_text(written, delay=TOKEN_DELAY)
    cleaner = SpeakableStream()  # one per answer: it remembers open code blocks
    speaker = Speaker(engine, player=player, transform=lambda s: cleaner.feed(s).text)
    pipeline = Pipeline(producer, sinks=[Route(speaker, policy="coalesce")])
    async with pipeline.open() as running:
        if barge_in:
            with trio.fail_after(10):
                while speaker.statistics().played_seconds < BARGE_IN_AFTER:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            heard = await speaker.interrupt()  # the listener started to speak
            print(f"           (barge-in after {speaker.statistics().played_seconds:.2f} s)")
            print(f"           heard:     {heard.text!r}")
            print(f"           not heard: {written[len(heard.text) :]!r}")
    message = conversation.add_assistant(speaker)
    stats = speaker.statistics()
    ttfa = "-" if stats.time_to_first_audio is None else f"{stats.time_to_first_audio:.3f} s"
    print(
        f"assistant: {message.content}\n"
        f"           [{stats.played_seconds:.2f} s spoken, first audio after {ttfa}, "
        f"{stats.underruns} underruns, pipeline: {running.reason}]"
    )
    return written


async def main(wav_path: str | None) -> None:
    engine = EspeakEngine(rate=260)
    async with AsyncExitStack() as stack:
        wav = await stack.enter_async_context(WavWriter(wav_path)) if wav_path else None
        player = Player(output=wav)  # one loudspeaker for the whole conversation
        conversation = Conversation(system="You are a voice assistant. Be brief.")
        await turn(conversation, "Where do rivers go?", engine, player)
        written = await turn(conversation, "How?", engine, player, barge_in=True)
        cut = conversation.messages[-1]
        await turn(conversation, "Sorry, where were you?", engine, player)
        await player.aclose()

    # The interrupted turn holds the beginning of the answer, in whole words, and no more.
    if not (cut.interrupted and cut.content and written.startswith(cut.content)):
        sys.exit(f"unexpected history: {cut}")
    if cut.content.rstrip() == written.rstrip():
        sys.exit("the barge-in came after the whole answer had played")
    print("history sent to the model:")
    for m in conversation.as_dicts():
        print(f"  {m['role']:>9}: {m['content']}")
    print("voice loop ok: 3 turns, 1 barge-in, the history holds only what was heard")


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
