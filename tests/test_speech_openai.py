"""The OpenAI speech engine, for real: the official ``openai`` SDK against the provider emulator
over loopback HTTP, with real espeak-ng audio where audio is claimed.

Real clock (sockets, espeak-ng's worker thread), every wait bounded by ``fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai
import pytest
import trio

from pipeline import Pipeline, ProducerConnectionError, ProducerStatusError, Route
from pipeline.producers import openai_client
from pipeline.testing import ScriptedProducer
from pipeline.testing.emulator import Emulator, SpeechReply, open_emulator, reset_after, status
from sinks.speech import (
    SAMPLE_WIDTH,
    AudioChunk,
    EspeakEngine,
    OpenAISpeechEngine,
    Speaker,
    SpeechEngine,
)

KEY = "sk-test-key-0123456789abcdef"
TEXT = "Speech is the consumer this project exists for."
ESPEAK_RATE = 22050


class EspeakAudio:
    """A :class:`SpeechReply` audio source: real espeak-ng audio; keeps what it made."""

    def __init__(self) -> None:
        self.engine = EspeakEngine()
        self.made: list[bytes] = []

    async def __call__(self, text: str) -> bytes:
        parts: list[bytes] = []

        async def collect(chunk: AudioChunk) -> None:
            parts.append(chunk.pcm)

        await self.engine.synthesize(text, collect)
        self.made.append(b"".join(parts))
        return self.made[-1]


@asynccontextmanager
async def serving(speech: SpeechReply) -> AsyncIterator[tuple[Emulator, openai.AsyncOpenAI]]:
    async with open_emulator(speech=speech) as emu:
        client = openai_client(base_url=emu.openai_base_url, api_key=KEY)
        async with client:
            yield emu, client


async def synth(engine: OpenAISpeechEngine, text: str, chunks: list[AudioChunk]) -> None:
    async def emit(chunk: AudioChunk) -> None:
        chunks.append(chunk)

    with trio.fail_after(10):
        await engine.synthesize(text, emit)


def check_tiling(chunks: list[AudioChunk], rate: int, max_samples: int) -> None:
    """The chunks follow each other sample by sample, whole samples only, none too long."""
    assert [c.first_sample for c in chunks] == [
        sum(c.samples for c in chunks[:i]) for i in range(len(chunks))
    ]
    for c in chunks:
        assert len(c.pcm) % SAMPLE_WIDTH == 0
        assert c.sample_rate == rate
        assert c.samples <= max_samples
        assert c.marks == ()


def test_the_engine_is_a_speech_engine_without_word_marks() -> None:
    client = openai_client(base_url="http://127.0.0.1:9/v1", api_key=KEY)
    engine = OpenAISpeechEngine(client)
    assert isinstance(engine, SpeechEngine)
    assert (engine.name, engine.sample_rate, engine.word_marks) == ("openai", 24000, False)
    with pytest.raises(ValueError, match="speed"):
        OpenAISpeechEngine(client, speed=5.0)
    with pytest.raises(ValueError, match="chunk_ms"):
        OpenAISpeechEngine(client, chunk_ms=5)


async def test_audio_is_what_the_emulator_sent_in_contiguous_chunks() -> None:
    espeak = EspeakAudio()
    async with serving(SpeechReply(espeak, sample_rate=ESPEAK_RATE)) as (emu, client):
        engine = OpenAISpeechEngine(
            client, model="tts-emu", voice="nova", speed=1.25, sample_rate=ESPEAK_RATE
        )
        chunks: list[AudioChunk] = []
        await synth(engine, TEXT, chunks)
        record = await emu.wait_ended(0)
    [audio] = espeak.made
    assert len(audio) > ESPEAK_RATE * SAMPLE_WIDTH  # over a second of real speech
    assert b"".join(c.pcm for c in chunks) == audio
    check_tiling(chunks, ESPEAK_RATE, ESPEAK_RATE // 10)
    assert len(chunks) >= len(audio) // (ESPEAK_RATE // 10 * SAMPLE_WIDTH)
    assert record.path == "/v1/audio/speech"
    assert record.body == {
        "model": "tts-emu",
        "voice": "nova",
        "input": TEXT,
        "response_format": "pcm",
        "speed": 1.25,
    }
    assert record.header("authorization") == "<redacted>"
    assert record.outcome == "completed"
    assert record.audio_bytes_sent == len(audio)


async def test_odd_sized_writes_never_split_a_sample() -> None:
    # 2401-byte writes, paced apart so that they arrive in separate reads: every other read
    # ends in the middle of a sample, whose first byte must wait for the next read. Bytes that
    # never repeat in step with the samples: a byte lost or doubled shows.
    audio = bytes(i * 7 % 251 for i in range(60_000))
    reply = SpeechReply(lambda _text: audio, write_bytes=2401, realtime_factor=0.2)
    async with serving(reply) as (emu, client):
        chunks: list[AudioChunk] = []
        await synth(OpenAISpeechEngine(client), TEXT, chunks)
        record = await emu.wait_ended(0)
    assert record.audio_bytes_sent == len(audio)
    assert record.deltas_sent == -(-len(audio) // 2401)  # that many odd-sized writes
    check_tiling(chunks, 24000, 2400)
    assert b"".join(c.pcm for c in chunks) == audio


async def test_cancel_while_waiting_in_emit_closes_the_response() -> None:
    reply = SpeechReply(realtime_factor=0.05)  # 100 ms of audio every 5 ms
    async with serving(reply) as (emu, client):
        engine = OpenAISpeechEngine(client)
        chunks: list[AudioChunk] = []
        three = trio.Event()

        async def emit(chunk: AudioChunk) -> None:
            chunks.append(chunk)
            if len(chunks) == 3:
                three.set()
                await trio.sleep_forever()  # a full audio queue

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.synthesize, TEXT * 10, emit)
                await three.wait()
                nursery.cancel_scope.cancel()
                cancelled_at = trio.current_time()
            gone = await emu.wait_disconnect(0)
        record = await emu.wait_ended(0)
    assert gone - cancelled_at < 0.5
    assert record.outcome == "disconnected"
    assert record.completed_at is None
    assert len(chunks) == 3
    total = round(len(TEXT) * 10 * reply.seconds_per_char * 24000) * SAMPLE_WIDTH
    assert record.audio_bytes_sent < total / 2


@pytest.mark.parametrize(("code", "retry_after"), [(401, None), (429, 2.0), (500, None)])
async def test_an_error_status_before_audio_is_a_producer_status_error(
    code: int, retry_after: float | None
) -> None:
    message = f"Incorrect API key provided: {KEY}" if code == 401 else None
    reply = SpeechReply(fault=status(code, retry_after=retry_after, message=message))
    async with serving(reply) as (emu, client):
        chunks: list[AudioChunk] = []
        with pytest.raises(ProducerStatusError) as info:
            await synth(OpenAISpeechEngine(client), TEXT, chunks)
        record = await emu.wait_ended(0)
    err = info.value
    assert err.status_code == code
    assert err.retry_after == retry_after
    assert str(err).startswith(f"openai speech: HTTP {code}: ")
    assert err.retryable == (code != 401)
    assert KEY not in str(err)
    if message is not None:
        assert "<redacted>" in str(err)
    assert isinstance(err.__cause__, openai.APIStatusError)
    assert chunks == []
    assert (record.status, record.audio_bytes_sent) == (code, 0)


async def test_a_reset_mid_audio_is_a_connection_error_after_whole_samples() -> None:
    reply = SpeechReply(write_bytes=1001, realtime_factor=0.2, fault=reset_after(5))
    async with serving(reply) as (emu, client):
        chunks: list[AudioChunk] = []
        with pytest.raises(ProducerConnectionError, match=r"^openai speech: "):
            await synth(OpenAISpeechEngine(client), TEXT, chunks)
        record = await emu.wait_ended(0)
    assert record.outcome == "reset"
    assert record.audio_bytes_sent == 5005
    check_tiling(chunks, 24000, 2400)
    assert sum(c.samples for c in chunks) <= 5005 // SAMPLE_WIDTH  # the half sample is not


async def test_nothing_to_say_sends_no_request_and_one_empty_chunk() -> None:
    async with serving(SpeechReply()) as (emu, client):
        chunks: list[AudioChunk] = []
        await synth(OpenAISpeechEngine(client), " \n ", chunks)
        assert chunks == [AudioChunk(b"", 24000)]
        assert emu.requests == []


async def test_speaker_interrupted_reports_an_estimate_in_whole_words() -> None:
    text = "One two three four five six seven eight nine ten eleven twelve."
    espeak = EspeakAudio()
    async with serving(SpeechReply(espeak, sample_rate=ESPEAK_RATE)) as (emu, client):
        speaker = Speaker(  # one request for the whole sentence: no early first piece
            OpenAISpeechEngine(client, sample_rate=ESPEAK_RATE), first_piece_max_chars=None
        )
        pipeline = Pipeline(ScriptedProducer.from_text(text), sinks=[Route(speaker)])
        with trio.fail_after(10):
            async with pipeline.open():
                while speaker.statistics().played_seconds < 1.0:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                heard = await speaker.interrupt()
        record = await emu.wait_ended(0)
    assert record.body["input"] == text  # the whole answer, one request
    assert not heard.exact  # no word marks: estimated, and flagged
    words = heard.text.split()
    assert 1 <= len(words) < len(text.split())
    assert words == text.split()[: len(words)]
    assert text.startswith(heard.text)
    assert speaker.statistics().interrupted
