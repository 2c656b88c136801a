"""Barge-in end to end: a real OpenAI SDK stream from the emulator (real loopback HTTP), spoken
by real espeak-ng, interrupted while it speaks: playback stops, the upstream request is closed
(the emulator sees the client go), and the heard text is the beginning of the answer, in whole
words. Real time (sockets and a worker thread), bounded by ``fail_after``."""

from __future__ import annotations

from typing import Any

import trio

from pipeline import Pipeline, Route
from pipeline.producers import OpenAIChatProducer, openai_client
from pipeline.testing.emulator import Reply
from sinks.speech import EspeakEngine, Speaker

ANSWER = " ".join(f"Sentence number {i} is spoken now." for i in range(200))


async def test_interrupt_stops_speech_cancels_upstream_and_reports_whole_words(
    emulator: Any,
) -> None:
    emu = await emulator(Reply(ANSWER, tokens_per_second=200))
    speaker = Speaker(EspeakEngine())
    client = openai_client(base_url=emu.openai_base_url, api_key="sk-test-not-real")
    async with client:
        producer = OpenAIChatProducer(
            client, model="m", messages=[{"role": "user", "content": "Talk."}]
        )
        pipeline = Pipeline(producer, sinks=[Route(speaker, policy="coalesce")])
        async with pipeline.open() as running:
            with trio.fail_after(10):
                while speaker.statistics().played_seconds < 1.0:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            heard = await speaker.interrupt()
            interrupted_at = trio.current_time()
            played = speaker.statistics().played_seconds
            with trio.fail_after(2):
                gone = await emu.wait_disconnect(0)
        assert running.reason == "consumer_gone"
    assert gone - interrupted_at < 0.5
    assert speaker.statistics().played_seconds == played  # nothing played after the stop
    assert heard.exact
    assert heard.text
    assert ANSWER.startswith(heard.text.rstrip())
    words = heard.text.split()
    assert words == ANSWER.split()[: len(words)]  # whole words only
    assert 1 <= len(words) < 40  # about a second of speech, not the whole answer
