"""The speech layer's contracts: audio, word marks, engines and audio outputs.

Audio is 16-bit signed little-endian mono PCM (``s16le``) everywhere; its rate is the engine's
``sample_rate``. An *utterance* is one piece of text given to an engine; its audio arrives as
:class:`AudioChunk` objects in order, and the words it contains as :class:`WordMark` objects on
the chunks (sample positions count from the start of the utterance).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Protocol, runtime_checkable

import attrs

__all__ = [
    "SAMPLE_WIDTH",
    "AudioChunk",
    "AudioSink",
    "EmitAudio",
    "SpeechEngine",
    "WordMark",
]

SAMPLE_WIDTH: Final = 2
"""Bytes per sample: 16-bit mono."""


@attrs.frozen
class WordMark:
    """One word of an utterance and where its audio starts.

    ``start``/``end`` are character offsets of the word in the text given to the engine
    (``text[start:end]`` is the word); ``sample`` is the index, counted from the start of the
    utterance's audio, of the first sample of the word.
    """

    start: int
    end: int
    sample: int


@attrs.frozen
class AudioChunk:
    """A piece of an utterance's audio (s16le mono), with the words whose audio starts in it.

    ``first_sample`` is the index of its first sample within the utterance; ``marks`` are in
    order, each with ``first_sample <= mark.sample < first_sample + samples`` (a mark may also
    sit exactly at the end of an empty final chunk).
    """

    pcm: bytes
    sample_rate: int
    first_sample: int = 0
    marks: tuple[WordMark, ...] = ()

    @property
    def samples(self) -> int:
        return len(self.pcm) // SAMPLE_WIDTH

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples / self.sample_rate


EmitAudio = Callable[[AudioChunk], Awaitable[None]]


@runtime_checkable
class SpeechEngine(Protocol):
    """Text in, audio chunks and word marks out (push, like a :class:`pipeline.Producer`).

    ``synthesize(text, emit)`` awaits ``emit`` for each chunk of ``text``'s audio, in order,
    and returns when the utterance is complete. ``emit`` may wait (backpressure: the audio
    queued ahead of playback is full); the engine must not run ahead of it by more than one
    chunk. Cancelling ``synthesize`` stops the synthesis promptly (a worker thread is told to
    abort) and releases what it holds. ``word_marks`` is ``False`` for an engine that gives no
    marks (then what was heard is estimated in proportion to the audio, and flagged as such).
    An engine synthesises one utterance at a time; a second concurrent call may raise
    ``trio.BusyResourceError``.
    """

    @property
    def name(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def word_marks(self) -> bool: ...

    async def synthesize(self, text: str, emit: EmitAudio, /) -> None: ...


@runtime_checkable
class AudioSink(Protocol):
    """Where audio goes: a loudspeaker (:class:`Player`), a WAV file, raw PCM on a stream.

    ``write`` takes the next chunk (a sink that plays waits until it has been played: it is the
    slow consumer); ``aclose`` finishes (a WAV file gets its final header) and is idempotent.
    """

    async def write(self, chunk: AudioChunk, /) -> None: ...

    async def aclose(self) -> None: ...
