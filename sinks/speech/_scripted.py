"""A deterministic engine for tests and demos: silence (or a tone) with exact word marks."""

from __future__ import annotations

import math
import re
import struct
from typing import Final

import attrs
import trio

from ._types import SAMPLE_WIDTH, AudioChunk, EmitAudio, WordMark

__all__ = ["ScriptedSpeechEngine"]

_WORD: Final = re.compile(r"\S+")


@attrs.define(eq=False)
class ScriptedSpeechEngine:
    """Speaks each word for ``seconds_per_char`` seconds per character (plus ``gap`` seconds
    after it), as a tone of ``tone_hz`` (0: silence), in chunks of ``chunk_seconds``.

    ``realtime_factor`` is the synthesis time per second of audio, spent on trio's clock before
    each chunk (0.1 = ten times faster than real time), so pacing is testable under
    ``MockClock``. ``requests`` records every text it was given. Word marks are exact.
    """

    sample_rate: int = 22050
    seconds_per_char: float = 0.06
    gap: float = 0.1
    chunk_seconds: float = 0.1
    realtime_factor: float = 0.0
    tone_hz: float = 0.0
    name: str = "scripted"
    word_marks: bool = True
    requests: list[str] = attrs.Factory(list)

    async def synthesize(self, text: str, emit: EmitAudio, /) -> None:
        self.requests.append(text)
        marks: list[WordMark] = []
        total = 0
        for m in _WORD.finditer(text):
            marks.append(WordMark(m.start(), m.end(), total))
            total += round((len(m.group()) * self.seconds_per_char + self.gap) * self.sample_rate)
        step = max(1, round(self.chunk_seconds * self.sample_rate))
        first = 0
        while first < total or (first == 0 and total == 0):
            n = min(step, total - first)
            if self.realtime_factor:
                await trio.sleep(n / self.sample_rate * self.realtime_factor)
            in_chunk = tuple(mk for mk in marks if first <= mk.sample < first + n)
            await emit(AudioChunk(self._pcm(first, n), self.sample_rate, first, in_chunk))
            first += n
            if n == 0:
                break

    def _pcm(self, first: int, n: int) -> bytes:
        if not self.tone_hz:
            return bytes(n * SAMPLE_WIDTH)
        w = 2 * math.pi * self.tone_hz / self.sample_rate
        return struct.pack(f"<{n}h", *(int(8000 * math.sin(w * (first + i))) for i in range(n)))
