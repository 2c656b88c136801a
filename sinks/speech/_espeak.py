"""espeak-ng, the embedded default speech engine: its C library through ctypes, one worker thread.

The library and its voice data come from the PyPI package ``espeakng-loader`` (the ``speech``
extra); Debian's ``libespeak-ng1`` is the fallback. The library keeps its state in globals and
is not thread-safe, so the whole process synthesises one utterance at a time, in a worker thread
holding :data:`_LOCK`; the C library calls back (in that thread) for each buffer of audio, and the
callback hands the chunk to trio with :func:`trio.from_thread.run` (that is the backpressure: the
synthesis waits while ``emit`` does). When that raises (the caller was cancelled, ``emit``
failed), the callback tells espeak-ng to abort.

What espeak-ng reports, measured with espeak-ng 1.52 (``espeakng-loader`` 0.2.4): a WORD event's
``text_position`` is 1-based and counts code points of the text (non-ASCII letters, combining
marks and emoji count one each), and its ``sample`` is the index of the word's first sample in
the utterance (``audio_position`` is the same in milliseconds); an event comes with the buffer
that holds its sample. Some words get no event of their own (punctuation spoken as silence,
``<``) or one whose position points into the previous word (the second word of a dictionary
phrase: "déjà vu"), and numbers get several events ("$29.95").
"""

from __future__ import annotations

import array
import bisect
import ctypes
import ctypes.util
import importlib
import re
import sys
import threading
from typing import Final

import attrs
import trio

from pipeline import ConfigError
from pipeline.packaging import missing_extra

from ._types import SAMPLE_WIDTH, AudioChunk, EmitAudio, WordMark

__all__ = ["EspeakEngine"]

_WORD: Final = re.compile(r"\S+")
_ge, _le = attrs.validators.ge, attrs.validators.le

# From espeak-ng's speak_lib.h and espeak_ng.h.
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_ENOUTPUT_MODE_SYNCHRONOUS: Final = 1
_INITIALIZE_DONT_EXIT: Final = 0x8000  # a missing data directory is an error, not exit()
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
_RATE: Final = 1
_EVENT_LIST_TERMINATED: Final = 0
_EVENT_WORD: Final = 1
_CONTINUE: Final = 0
_ABORT: Final = 1

_LOCK_POLL: Final = 0.05
"""Seconds between checks for cancellation while another utterance holds the library."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _locate() -> tuple[str, str | None]:
    """The library's path and its data directory (``None``: the library's default)."""
    try:
        loader = importlib.import_module("espeakng_loader")
    except ImportError as exc:
        system = ctypes.util.find_library("espeak-ng")
        if system is None:
            raise missing_extra("speech", "the espeak-ng speech engine", exc) from exc
        return system, None
    return str(loader.get_library_path()), str(loader.get_data_path())


@attrs.define(eq=False)
class _Library:
    """The loaded library, initialised once per process; used only with :data:`_LOCK` held."""

    lib: ctypes.CDLL
    sample_rate: int
    callback: object  # the ctypes function object espeak-ng holds a pointer to: keep it alive
    chunk_ms: int
    voice: str = ""
    rate: int = 0

    @classmethod
    def load(cls, chunk_ms: int) -> _Library:
        path, data = _locate()
        lib = ctypes.CDLL(path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_ng_InitializeOutput.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        encoded = data.encode() if data is not None else None
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, chunk_ms, encoded, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise OSError(f"espeak-ng ({path}) found no voice data (in {data or 'its default'})")
        callback = _SynthCallback(_on_audio)
        lib.espeak_SetSynthCallback(callback)
        return cls(lib, rate, callback, chunk_ms)

    def configure(self, voice: str, rate: int, chunk_ms: int) -> None:
        if voice != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ConfigError(f"espeak-ng has no voice {voice!r}")
            self.voice, self.rate = voice, 0  # set the rate again after a voice change
        if rate != self.rate:
            self.lib.espeak_SetParameter(_RATE, rate, 0)
            self.rate = rate
        if chunk_ms != self.chunk_ms:
            self.lib.espeak_ng_InitializeOutput(_ENOUTPUT_MODE_SYNCHRONOUS, chunk_ms, None)
            self.chunk_ms = chunk_ms


_LOCK: Final = threading.Lock()
"""Held by the worker thread for a whole utterance: espeak-ng's state is global."""
_LOAD_LOCK: Final = threading.Lock()
_loaded: _Library | None = None
_current: _Utterance | None = None  # the utterance being synthesised (set with _LOCK held)


def _load(chunk_ms: int) -> _Library:
    global _loaded
    with _LOAD_LOCK:
        if _loaded is None:
            _loaded = _Library.load(chunk_ms)
        return _loaded


@attrs.define(eq=False)
class EspeakEngine:
    """Speaks with espeak-ng, in ``voice`` (a language code such as ``"en"``, ``"fr"``, or a
    voice name) at ``rate`` words per minute (80-450), in chunks of ``chunk_ms`` milliseconds.

    22,050 Hz s16le mono, with a word mark for every word (a run of non-space characters, with
    its punctuation, as :class:`ScriptedSpeechEngine` counts them). A word espeak-ng reports no
    position for (see the module's notes) takes the sample of the next word that has one (or the
    end of the audio): it counts as heard only when the next word starts, never early.

    Creating an engine loads the library (a :class:`pipeline.MissingExtraError` if neither the
    ``speech`` extra nor Debian's ``libespeak-ng1`` is installed). Any number of engines may
    exist; the process synthesises one utterance at a time (a library limit), so concurrent
    ``synthesize`` calls wait their turn, in a worker thread. A cancelled call returns promptly
    (within one chunk's synthesis, or 50 ms while it waits for its turn) and emits nothing
    more. An unknown ``voice`` is a :class:`pipeline.ConfigError` from ``synthesize``.
    """

    voice: str = "en"
    rate: int = attrs.field(default=175, validator=[_ge(80), _le(450)])
    chunk_ms: int = attrs.field(default=100, validator=[_ge(10), _le(1000)])
    _library: _Library = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._library = _load(self.chunk_ms)

    @property
    def name(self) -> str:
        return "espeak-ng"

    @property
    def sample_rate(self) -> int:
        return self._library.sample_rate

    @property
    def word_marks(self) -> bool:
        return True

    async def synthesize(self, text: str, emit: EmitAudio, /) -> None:
        utterance = _Utterance(text.replace("\0", " "), self.sample_rate, emit)
        await trio.to_thread.run_sync(self._run, utterance)

    def _run(self, utterance: _Utterance) -> None:  # in the worker thread
        global _current
        while not _LOCK.acquire(timeout=_LOCK_POLL):
            trio.from_thread.check_cancelled()
        try:
            self._library.configure(self.voice, self.rate, self.chunk_ms)
            encoded = utterance.text.encode(errors="replace")  # a lone surrogate: one "?"
            _current = utterance
            self._library.lib.espeak_Synth(
                encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        finally:
            _current = None
            _LOCK.release()
        if utterance.error is not None:
            raise utterance.error
        utterance.finish()


def _on_audio(
    wav: ctypes._Pointer[ctypes.c_short], numsamples: int, events: ctypes._Pointer[_Event]
) -> int:
    """espeak-ng's synthesis callback, in the worker thread: never raises (an exception here
    would be printed and ignored by ctypes), aborts the synthesis instead."""
    utterance = _current
    if utterance is None or utterance.error is not None:
        return _ABORT
    try:
        words: list[tuple[int, int]] = []
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                words.append((events[i].text_position - 1, events[i].sample))
            i += 1
        n = max(numsamples, 0) if wav else 0
        utterance.audio(ctypes.string_at(wav, n * SAMPLE_WIDTH) if n else b"", words)
    except BaseException as exc:  # trio.Cancelled, RunFinishedError, emit's own error
        utterance.error = exc
        return _ABORT
    return _CONTINUE


@attrs.define(eq=False)
class _Utterance:
    """One synthesis: turns espeak-ng's buffers and WORD events into chunks with word marks.

    Used from the worker thread only. Each word of the text (a ``\\S+`` span) gets exactly one
    mark, in order: the first event that lands in it or past it (an event between words belongs
    to the word before), so skipped words take the sample of the next event.
    """

    text: str
    sample_rate: int
    emit: EmitAudio
    starts: list[int] = attrs.field(init=False)
    ends: list[int] = attrs.field(init=False)
    marked: int = 0  # words with a mark so far
    pending: list[WordMark] = attrs.Factory(list)  # marks whose sample is not emitted yet
    total: int = 0  # samples emitted so far
    chunks: int = 0
    error: BaseException | None = None

    def __attrs_post_init__(self) -> None:
        spans = [m.span() for m in _WORD.finditer(self.text)]
        self.starts = [s for s, _ in spans]
        self.ends = [e for _, e in spans]

    def audio(self, pcm: bytes, words: list[tuple[int, int]]) -> None:
        """Takes a buffer and the (0-based code point, sample) of its WORD events; emits it."""
        n = len(pcm) // SAMPLE_WIDTH
        for position, sample in words:
            word = max(bisect.bisect_right(self.starts, position) - 1, 0)
            # espeak-ng puts an event's sample in the buffer it comes with; keep it there.
            self._mark_to(word + 1, min(max(sample, self.total), self.total + n))
        if n:
            self._send(pcm, n)

    def finish(self) -> None:
        """Marks the words left at the end of the audio, and sends the last marks (in an empty
        chunk) or, for a text with no audio, one empty chunk."""
        self._mark_to(len(self.starts), self.total)
        if self.pending or not self.chunks:
            self._send(b"", 0)

    def _mark_to(self, words: int, sample: int) -> None:
        for i in range(self.marked, words):
            self.pending.append(WordMark(self.starts[i], self.ends[i], sample))
        self.marked = max(self.marked, words)

    def _send(self, pcm: bytes, n: int) -> None:
        end = self.total + n
        ready = [m for m in self.pending if m.sample < end or n == 0]
        self.pending = self.pending[len(ready) :]
        if sys.byteorder == "big":
            swapped = array.array("h", pcm)
            swapped.byteswap()
            pcm = swapped.tobytes()
        chunk = AudioChunk(pcm, self.sample_rate, self.total, tuple(ready))
        self.total = end
        self.chunks += 1
        trio.from_thread.run(self.emit, chunk)
        trio.from_thread.check_cancelled()  # an emit that does not checkpoint
