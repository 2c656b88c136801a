"""Audio outputs (:class:`AudioSink` implementations): a WAV file, raw PCM on a stream, a player.

All three take :class:`AudioChunk` objects of one sample rate (the first chunk's; a chunk with
another rate raises :class:`pipeline.ConfigError`), accept one ``write`` at a time (a second
concurrent one raises ``trio.BusyResourceError``), raise ``trio.ClosedResourceError`` for a
``write`` after ``aclose()``, and work as ``async with``. File and stream I/O runs in a worker
thread, one call per chunk, so the event loop never waits on a disk or a pipe.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

import attrs
import trio

from pipeline import ConfigError, ConsumerGone

from ..files import commit_atomic, open_atomic, write_flushed
from ._types import SAMPLE_WIDTH, AudioChunk, AudioSink

__all__ = ["PcmWriter", "PlaybackPosition", "Player", "PlayerStatistics", "WavWriter"]

_EMPTY_WAV_RATE: Final = 22050
"""The rate written in the header of a WAV file that received no audio and was given no rate."""


class _AudioOutput:
    """What the three outputs share: one sample rate, one writer at a time, no writes after
    :meth:`aclose`, and ``async with``."""

    _what: str = "audio output"

    def __init__(self, sample_rate: int | None = None) -> None:
        self.sample_rate = sample_rate
        """The rate of the audio (the first chunk's unless given), ``None`` before any."""
        self._closed = False
        self._writing = False

    @contextlib.contextmanager
    def _accept(self, chunk: AudioChunk) -> Iterator[None]:
        """Around a ``write``: refuse it when closed, busy or at another rate."""
        if self._closed:
            raise trio.ClosedResourceError(f"the {self._what} was closed")
        if self._writing:
            raise trio.BusyResourceError(f"another task is already writing to the {self._what}")
        if self.sample_rate is not None and chunk.sample_rate != self.sample_rate:
            raise ConfigError(
                f"{self._what}: a chunk at {chunk.sample_rate} Hz after audio at "
                f"{self.sample_rate} Hz (one sample rate per output)"
            )
        self.sample_rate = chunk.sample_rate
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    def _abandon(self) -> None:
        """What leaving an ``async with`` block by an exception does before :meth:`aclose`."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._abandon()
        await self.aclose()


# --- WAV file ---------------------------------------------------------------------------------


def _open_wav(path: Path, rate: int) -> tuple[Path, BinaryIO, wave.Wave_write]:
    tmp, f = open_atomic(path)
    wav = wave.open(f, "wb")  # noqa: SIM115 (closed by _close_wav or WavWriter.discard)
    wav.setnchannels(1)
    wav.setsampwidth(SAMPLE_WIDTH)
    wav.setframerate(rate)
    return tmp, f, wav


def _close_wav(wav: wave.Wave_write, f: BinaryIO, tmp: Path, final: Path) -> None:
    wav.close()  # writes the header's sizes; leaves ``f`` open
    commit_atomic(f, tmp, final)


class WavWriter(_AudioOutput):
    """Write the audio to ``path`` as a WAV file (16-bit mono PCM), atomically.

    Audio goes to a temporary file beside ``path``; a clean :meth:`aclose` writes the header's
    sizes, syncs the file and renames it over ``path``, so ``path`` either does not change or
    holds all the audio with a correct header. :meth:`discard` (also what leaving an
    ``async with`` block by an exception does, and what :meth:`aclose` does when it is
    cancelled or fails) removes the temporary file and leaves ``path`` alone.

    The rate is ``sample_rate`` if given, else the first chunk's. A file that received no audio
    is still written (empty), at ``sample_rate`` or 22050 Hz. ``completed`` is true once the
    file is in place under ``path``; ``written_samples`` counts the audio written.
    """

    _what = "WAV file"

    def __init__(self, path: str | os.PathLike[str], *, sample_rate: int | None = None) -> None:
        super().__init__(sample_rate)
        self.path = Path(path)
        self.written_samples = 0
        self.completed = False
        self._open: tuple[Path, BinaryIO, wave.Wave_write] | None = None

    async def write(self, chunk: AudioChunk, /) -> None:
        with self._accept(chunk):
            if self._open is None:
                self._open = await trio.to_thread.run_sync(_open_wav, self.path, chunk.sample_rate)
            if chunk.pcm:
                await trio.to_thread.run_sync(self._open[2].writeframesraw, chunk.pcm)
                self.written_samples += chunk.samples

    async def aclose(self) -> None:
        """Finish the file and rename it into place (idempotent). Cancelled, or failing, it
        discards the file instead (see :meth:`discard`) and raises."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._open is None:
                rate = self.sample_rate or _EMPTY_WAV_RATE
                self._open = await trio.to_thread.run_sync(_open_wav, self.path, rate)
            tmp, f, wav = self._open
            await trio.to_thread.run_sync(_close_wav, wav, f, tmp, self.path)
            self.completed = True
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Give up the file: remove the temporary file, leave ``path`` as it was. Idempotent;
        synchronous, so it also runs when cancelled. Does nothing after a completed
        :meth:`aclose`."""
        self._closed = True
        if self._open is None or self.completed:
            return
        tmp, f, wav = self._open
        with contextlib.suppress(OSError, ValueError):
            wav.close()  # so that its finaliser does not write to a closed file later
        f.close()
        tmp.unlink(missing_ok=True)

    def _abandon(self) -> None:
        self.discard()


# --- raw PCM ----------------------------------------------------------------------------------


class PcmWriter(_AudioOutput):
    """Write the audio as raw s16le bytes to ``stream`` (default: standard output), flushed
    after each chunk, so ``llmpipe speak ... --pcm - | aplay -f S16_LE -r 22050`` plays.

    A closed pipe raises :class:`pipeline.ConsumerGone`. :meth:`aclose` does not close
    ``stream`` (it is not the writer's); it only refuses later writes.
    """

    _what = "PCM stream"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.written_samples = 0

    async def write(self, chunk: AudioChunk, /) -> None:
        with self._accept(chunk):
            if not chunk.pcm:
                await trio.lowlevel.checkpoint()
                return
            try:
                await trio.to_thread.run_sync(write_flushed, self.stream, chunk.pcm)
            except BrokenPipeError as exc:
                raise ConsumerGone("pcm: the output pipe was closed") from exc
            self.written_samples += chunk.samples


# --- the player -------------------------------------------------------------------------------


@attrs.frozen
class PlaybackPosition:
    """How far playback has got: the first ``offset`` samples of ``chunk`` have been played.

    ``chunk`` is the very object given to :meth:`Player.write` (compare with ``is``: equal
    chunks of silence are ``==``), ``None`` before any audio. Between chunks it is the end of the
    previous one (``offset == chunk.samples``).
    """

    chunk: AudioChunk | None
    offset: int

    @property
    def sample(self) -> int:
        """The index within the chunk's utterance of the next sample to play
        (``chunk.first_sample + offset``; 0 before any audio)."""
        return 0 if self.chunk is None else self.chunk.first_sample + self.offset


@attrs.frozen
class PlayerStatistics:
    """A snapshot of :meth:`Player.statistics`.

    ``started_at`` is the trio time the first audio began to play (``None`` before), for time
    to first audio. An *underrun* is a :meth:`Player.write` that arrived after the audio before
    it had finished playing (the listener heard a gap of ``underrun_seconds`` in all).
    """

    played_samples: int
    played_seconds: float
    underruns: int
    underrun_seconds: float
    started_at: float | None
    stopped: bool


@attrs.frozen
class _Frame:
    """A frame given to the loudspeaker: ``samples`` samples of ``chunk`` from ``offset``,
    playing from trio time ``start``."""

    chunk: AudioChunk
    offset: int
    samples: int
    start: float


class Player(_AudioOutput):
    """A simulated loudspeaker: consumes audio at playback speed on trio's clock.

    ``await write(chunk)`` plays the chunk in frames of at most ``frame_seconds``. Each frame is
    handed to the loudspeaker (and to ``output``, if given) when its turn comes and plays for
    its duration; ``write`` returns as soon as the chunk's last frame has been handed over, so
    the loudspeaker holds at most one frame: the producer has that long to bring the next chunk
    before the listener hears a gap. Frames follow a deadline schedule (the audio's sample
    count from when playback started), so sleeps never drift: playing N seconds of audio takes
    N seconds of trio time (:meth:`aclose` waits for the last frame to end).

    A ``write`` that arrives after the audio before it ended is an *underrun*: it is counted,
    with the gap, and the schedule restarts from the moment it arrived. After :meth:`idle`, the
    next gap is intended silence (the answer ended) and is not counted.

    :attr:`played_samples` and :attr:`position` are read off trio's clock against that
    schedule, to the nearest sample, whichever task happens to run first at a given moment; so
    are they when :meth:`stop` freezes them: a stop at the instant one chunk ends and the next
    begins finds the first one played whole and nothing of the second, deterministically.

    :meth:`stop` ends playback at once: the ``write`` in progress returns, the rest of its chunk
    is not played, and later writes return at once without playing (until :meth:`resume`).
    ``output`` receives every frame when it starts playing, as a slice of the chunk (with the
    word marks that fall in it), so it gets what the listener hears, except that a frame cut
    short by :meth:`stop` reaches it whole (at most ``frame_seconds`` more than
    :attr:`played_samples` counts). The player does not close ``output``.

    One task writes; any task may call :meth:`stop`, :meth:`resume`, :meth:`idle` and read the
    position and statistics.
    """

    _what = "player"

    def __init__(self, *, frame_seconds: float = 0.02, output: AudioSink | None = None) -> None:
        if not frame_seconds > 0:
            raise ConfigError(f"frame_seconds must be positive, not {frame_seconds!r}")
        super().__init__()
        self.frame_seconds = frame_seconds
        self.output = output
        self._done = 0  # samples of the frames over (or cut short by stop)
        self._last = PlaybackPosition(None, 0)  # where the frames over end
        self._frame: _Frame | None = None  # the frame on the loudspeaker
        # The schedule: the n-th sample handed over since ``_anchor`` plays at
        # ``_anchor + n / rate``; ``_scheduled`` is that n for the next frame.
        self._anchor: float | None = None
        self._scheduled = 0
        self._underruns = 0
        self._underrun_seconds = 0.0
        self._started_at: float | None = None
        self._stopped = False
        self._gap_expected = False
        self._scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"Player(frame_seconds={self.frame_seconds!r}, output={self.output!r})"

    async def write(self, chunk: AudioChunk, /) -> None:
        """Play ``chunk``: return when its last frame has started playing, at once after
        :meth:`stop`. Cancelled, it stops handing frames over (the frame playing plays out;
        the next ``write`` continues the schedule, or counts an underrun if late)."""
        with self._accept(chunk):
            rate = chunk.sample_rate
            if self._stopped or not chunk.samples:
                await trio.lowlevel.checkpoint()
                return
            self._start_schedule(rate)
            step = max(1, round(self.frame_seconds * rate))
            try:
                with trio.CancelScope() as self._scope:
                    for offset in range(0, chunk.samples, step):
                        assert self._anchor is not None
                        start = self._anchor + self._scheduled / rate
                        await trio.sleep_until(start)  # stop() cancels it
                        n = min(step, chunk.samples - offset)
                        self._hand_over(_Frame(chunk, offset, n, start))
                        if self.output is not None:
                            await self.output.write(_slice(chunk, offset, n))
            finally:
                self._scope = None

    def _start_schedule(self, rate: int) -> None:
        now = trio.current_time()
        if self._anchor is not None:
            gap = now - (self._anchor + self._scheduled / rate)
            if gap <= 0.5 / rate:  # on time (or early): carry on after the audio before
                self._gap_expected = False
                return
            if not self._gap_expected:
                self._underruns += 1
                self._underrun_seconds += gap
        self._gap_expected = False
        self._anchor, self._scheduled = now, 0

    def _hand_over(self, frame: _Frame) -> None:
        if self._frame is not None:  # the previous frame has played whole
            self._end_frame(self._frame.samples)
        self._frame = frame
        self._scheduled += frame.samples
        if self._started_at is None:
            self._started_at = frame.start

    def _end_frame(self, played: int) -> None:
        frame = self._frame
        assert frame is not None
        self._done += played
        if played:
            self._last = PlaybackPosition(frame.chunk, frame.offset + played)
        self._frame = None

    def _frame_played(self, now: float) -> int:
        """How many samples of the frame on the loudspeaker have played by ``now``."""
        if self._frame is None or self.sample_rate is None:
            return 0
        played = round((now - self._frame.start) * self.sample_rate)
        return min(self._frame.samples, max(0, played))

    @property
    def played_samples(self) -> int:
        """Samples played so far, in all (gaps not counted)."""
        return self._done + self._frame_played(trio.current_time())

    @property
    def position(self) -> PlaybackPosition:
        """The chunk playing now and how much of it has played (see :class:`PlaybackPosition`)."""
        if self._frame is not None:
            played = self._frame_played(trio.current_time())
            if played:
                return PlaybackPosition(self._frame.chunk, self._frame.offset + played)
        return self._last

    @property
    def started_at(self) -> float | None:
        """The trio time the first audio began to play, ``None`` before."""
        return self._started_at

    @property
    def underruns(self) -> int:
        return self._underruns

    @property
    def underrun_seconds(self) -> float:
        return self._underrun_seconds

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Stop playback now (synchronous, idempotent, from any task).

        The frame playing is cut at this instant (:attr:`played_samples` and :attr:`position`
        say exactly how far it got, and no longer move); the ``write`` in progress returns at
        once; later writes return at once and play nothing until :meth:`resume`.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._frame is not None:
            self._end_frame(self._frame_played(trio.current_time()))
        if self._scope is not None:
            self._scope.cancel()

    def resume(self) -> None:
        """Undo :meth:`stop`: the next ``write`` plays, on a new schedule from its arrival
        (the silence since the stop is not an underrun). Does nothing if not stopped."""
        if self._stopped:
            self._stopped = False
            self._anchor = None

    def idle(self) -> None:
        """Say that the audio ends here on purpose (the answer is over): a gap before the next
        ``write`` is silence, not an underrun. The audio already given still plays."""
        self._gap_expected = True

    def statistics(self) -> PlayerStatistics:
        played = self.played_samples
        return PlayerStatistics(
            played_samples=played,
            played_seconds=played / self.sample_rate if self.sample_rate else 0.0,
            underruns=self._underruns,
            underrun_seconds=self._underrun_seconds,
            started_at=self._started_at,
            stopped=self._stopped,
        )

    async def aclose(self) -> None:
        """Wait until the audio given has played out (at once if stopped), then refuse further
        writes. Idempotent. Call it after the last ``write`` has returned."""
        self._closed = True
        if self._stopped or self._anchor is None or self.sample_rate is None:
            await trio.lowlevel.checkpoint()
            return
        await trio.sleep_until(self._anchor + self._scheduled / self.sample_rate)

    def _abandon(self) -> None:
        self.stop()


def _slice(chunk: AudioChunk, offset: int, n: int) -> AudioChunk:
    """Samples ``offset`` to ``offset + n`` of ``chunk``, with the word marks that fall in it
    (the last slice also takes a mark sitting at the chunk's end)."""
    first = chunk.first_sample + offset
    end = first + n if offset + n < chunk.samples else math.inf
    pcm = chunk.pcm[offset * SAMPLE_WIDTH : (offset + n) * SAMPLE_WIDTH]
    marks = tuple(m for m in chunk.marks if first <= m.sample < end)
    return AudioChunk(pcm, chunk.sample_rate, first, marks)
