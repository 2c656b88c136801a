"""OpenAI speech: ``POST /v1/audio/speech`` through the official ``openai`` SDK, as raw PCM.

The request asks for ``response_format="pcm"`` (s16le mono, 24 kHz at OpenAI) and the body is
read as it arrives (``with_streaming_response``): each read becomes chunks of at most
``chunk_ms`` of audio. A read may end inside a sample (HTTP chunks and socket reads know
nothing of samples): the odd byte is kept and goes in front of the next read, so no chunk ever
holds half a sample. OpenAI gives no word timings, so the engine has no word marks: a
:class:`Speaker` then estimates what was heard in proportion to the audio, and says so.

Errors become :class:`pipeline.ProducerError` subclasses with the producers' table
(:attr:`pipeline.producers.OpenAIChatProducer.errors`: SDK status errors, timeouts, connection
and transport errors) and the API key masked in the message. There are no retries besides the
client's own (``max_retries``): a status error arrives before any audio, but a failure in the
middle of the audio cannot be retried without repeating what was already played.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import attrs
import openai

from pipeline import ProducerError
from pipeline.producers import OpenAIChatProducer, translate_error

from ._types import SAMPLE_WIDTH, AudioChunk, EmitAudio

__all__ = ["OpenAISpeechEngine"]

_ge, _le = attrs.validators.ge, attrs.validators.le


@attrs.define(eq=False)
class OpenAISpeechEngine:
    """Speaks with OpenAI's speech API, or any server that serves it (the client's
    ``base_url``: the llmpipe emulator, a local OpenAI-compatible server).

    ``model``, ``voice``, ``instructions`` and ``speed`` are sent as the API takes them;
    ``sample_rate`` is the rate of the PCM the server sends (24,000 Hz at OpenAI; a compatible
    server may differ). Chunks hold at most ``chunk_ms`` milliseconds of audio and none splits
    a sample; a body that ends inside a sample loses that half sample. No word marks.

    ``synthesize`` sends one request per text (a text with nothing to say sends none and emits
    one empty chunk). It reads the body only while ``emit`` does not wait, so a full audio
    queue holds the response back (TCP flow control) instead of buffering it. Cancelling it
    closes the HTTP response at once. A failure raises a :class:`pipeline.ProducerError`:
    :class:`pipeline.ProducerStatusError` for an HTTP error status (401, 429, 500, with
    ``retry_after``), :class:`pipeline.ProducerConnectionError` for a connection lost
    mid-audio, :class:`pipeline.ProducerTimeout` for the client's timeout. Any number of
    calls may run at once (one HTTP request each); the client may be shared.
    """

    client: openai.AsyncOpenAI
    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    instructions: str | None = None
    speed: float | None = attrs.field(
        default=None, validator=attrs.validators.optional([_ge(0.25), _le(4.0)])
    )
    sample_rate: int = attrs.field(default=24000, validator=_ge(1))
    chunk_ms: int = attrs.field(default=100, validator=[_ge(10), _le(1000)])
    name: str = "openai"

    @property
    def word_marks(self) -> bool:
        return False

    async def synthesize(self, text: str, emit: EmitAudio, /) -> None:
        if not text.strip():
            await emit(AudioChunk(b"", self.sample_rate))
            return
        kwargs: dict[str, Any] = {
            "model": self.model,
            "voice": self.voice,
            "input": text,
            "response_format": "pcm",
        }
        if self.instructions is not None:
            kwargs["instructions"] = self.instructions
        if self.speed is not None:
            kwargs["speed"] = self.speed
        step = max(1, self.sample_rate * self.chunk_ms // 1000) * SAMPLE_WIDTH
        first = 0  # samples emitted so far
        carry = b""  # the first byte of a sample whose second byte has not arrived
        async with AsyncExitStack() as stack:
            create = self.client.audio.speech.with_streaming_response.create
            try:
                response = await stack.enter_async_context(create(**kwargs))
            except Exception as exc:
                raise self._error(exc) from exc
            body = response.iter_bytes()
            aclose = getattr(body, "aclose", None)  # an async generator: close it here,
            if aclose is not None:  # not in trio's GC hook
                stack.push_async_callback(aclose)
            while True:
                try:
                    data = await anext(body)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise self._error(exc) from exc
                if carry:
                    data = carry + data
                whole = len(data) - len(data) % SAMPLE_WIDTH
                carry = data[whole:]
                for start in range(0, whole, step):
                    pcm = data[start : min(start + step, whole)]
                    await emit(AudioChunk(pcm, self.sample_rate, first))
                    first += len(pcm) // SAMPLE_WIDTH
        if first == 0:
            await emit(AudioChunk(b"", self.sample_rate))  # no audio: still one chunk

    def _error(self, exc: Exception) -> ProducerError:
        """``exc`` as the producers translate it (their one error map), the key masked."""
        return translate_error(
            exc, [self.client.api_key], OpenAIChatProducer.errors, context="openai speech: "
        )
