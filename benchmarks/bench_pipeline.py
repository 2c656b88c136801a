"""Throughput and CPU per token of llmpipe against a trio floor and a guide-style asyncio design.

Run from the repository root::

    .venv/bin/python benchmarks/bench_pipeline.py --write   # full run, rewrites PIPELINE.md
    .venv/bin/python benchmarks/bench_pipeline.py --quick   # smoke test: small, checks only

What is measured
================

A deterministic stream of ``--tokens`` LLM-like tokens (words with their leading space,
punctuation as separate tokens, sentences of 10-25 words, some paragraph breaks) is pushed as
fast as possible (no sleeps) through *producer -> AdaptiveChunker -> SentenceBuffer -> two sinks*.
Every variant runs the same text work; only the plumbing differs:

``llmpipe``
    ``Pipeline(producer, stages=[AdaptiveChunker(min_chars=1, interval=None),
    SentenceStage(stall_timeout=None)], sinks=[Route(a, policy=...), Route(b, policy=...)])``.
    Tasks: producer -> [source channel] -> stage task (both stages and the fan-out) ->
    [one channel per sink] -> sink tasks: 3 channel hops per item (1 + 2).
``trio floor (stages)``
    The same task structure built from bare ``trio.open_memory_channel(64)`` channels (3 hops),
    the stage task calling the same ``AdaptiveChunker.feed_text`` and ``SentenceBuffer.feed``
    on plain strings. This is "what the plumbing would cost if it were just trio channels".
``trio floor (plumbing)``
    The same channels and item counts per hop, but the stage task does no text work: it
    forwards pieces computed before the clock started. The cost of the hops alone.
``asyncio guide``
    The design of popular guides: async-generator stages chained in one task
    (``async for tok in src: ... yield``) calling the same chunker and ``SentenceBuffer``,
    fan-out to one ``asyncio.Queue(maxsize=64)`` per sink, ``asyncio.run``. 2 queue hops
    (the generator chain has none).

Modes (reported separately):

``per-item``
    Fast sinks (they only count and keep the text), policy ``block``: every piece the last stage
    emits (a sentence) reaches each sink as its own item. The source hop carries one item per
    token.
``per-token``
    Like ``per-item`` but with the chunker only (no sentence stage): every token is its own
    item on every hop, the worst case for per-item plumbing.
``coalesced``
    Slow sinks (a fixed amount of CPU work per item received, the same in every variant),
    policy ``coalesce`` for llmpipe. The trio floors coalesce by hand (a sink drains whatever is
    ready with ``receive_nowait`` and handles it as one item); the asyncio guide design has no
    coalescing, so each of its sinks pays the work for every item.

Each variant runs ``--repeat`` times, interleaved with the others (the order rotates each
round) in one process, so they share conditions; the table shows medians. Every run checks
that both sinks received exactly the produced text (a correctness check; it raises on a
mismatch). Timing is never asserted.

How to read the table
=====================

``tokens/s`` is produced tokens over wall time; ``µs CPU/token`` is ``time.process_time()``
over tokens (everything is single-threaded, so the two agree). ``items/sink`` is how many text
items each sink received (fewer = more merging). ``vs floor`` and ``vs asyncio`` are CPU time
per token divided by that of ``trio floor (stages)`` / ``asyncio guide`` in the same mode:
1.00 is the same cost, above 1 costlier, below 1 cheaper. Ratios use CPU time because it
does not count time the process waited for a core on a busy machine; wall time does (the
load average before and after the run is reported for that reason).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Literal, TypeAlias

import trio
from _benchlib import Summary, add_harness_arguments, command, load_average, versions

from pipeline import (
    Emit,
    EventReceiver,
    Pipeline,
    PolicyName,
    Route,
    Stage,
    TextDelta,
)
from pipeline.text import AdaptiveChunker, SentenceBuffer, SentenceStage

Mode: TypeAlias = Literal["per-item", "per-token", "coalesced"]
MODES: Final[tuple[Mode, ...]] = ("per-item", "per-token", "coalesced")
VARIANTS: Final = ("llmpipe", "trio floor (stages)", "trio floor (plumbing)", "asyncio guide")
FLOOR: Final = "trio floor (stages)"
GUIDE: Final = "asyncio guide"
BUFFER: Final = 64  # items per channel/queue in every variant (llmpipe's default max_items)
SINK_WORK_LOOPS: Final = 20_000  # the slow sinks' fixed CPU work per item (coalesced mode)
RESULTS: Final = Path(__file__).resolve().parent / "PIPELINE.md"

# --------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------

_WORD_TEXT: Final = (
    "the of and to in is that it for as with was on be by this are from at or an which have "
    "not but they their can more all its has one been other also when would there these than "
    "model token stream buffer latency consumer producer channel pipeline speech network "
    "request response system memory process answer question example value result data time "
    "user server client message output input sentence word number first second small large "
    "quickly slowly often usually never always because however therefore although while"
)
_WORDS: Final = tuple(_WORD_TEXT.split())
_NAMES: Final = ("Alice", "Bob", "Paris", "Python", "Monday", "London", "Trio", "Carol")


def make_tokens(n: int, seed: int = 1234) -> list[str]:
    """``n`` tokens of LLM-like English text, deterministic for a given ``seed``."""
    rng = random.Random(seed)
    out: list[str] = []
    first = True
    while len(out) < n:
        words = rng.randint(10, 25)
        for w in range(words):
            word = rng.choice(_NAMES) if rng.random() < 0.05 else rng.choice(_WORDS)
            if rng.random() < 0.03:
                word = str(rng.randint(2, 2048))
            if w == 0:
                word = word[:1].upper() + word[1:]
            out.append(word if first else " " + word)
            first = False
            if 0 < w < words - 2 and rng.random() < 0.08:
                out.append(rng.choice((",", ",", ";", ":")))
        out.append(rng.choice((".", ".", ".", ".", "?", "!")))
        if rng.random() < 0.1:
            out.append("\n\n")
            first = True
    return out[:n]


# --------------------------------------------------------------------------------------------
# Shared pieces: stage logic, sinks' accounting
# --------------------------------------------------------------------------------------------


def _chunker() -> AdaptiveChunker:
    return AdaptiveChunker(min_chars=1, interval=None)


def _with_sentences(mode: Mode) -> bool:
    return mode != "per-token"


def sink_work(text: str) -> int:
    """The slow sinks' fixed CPU work per item (a stand-in for a request/frame per item)."""
    x = len(text)
    for i in range(SINK_WORK_LOOPS):
        x ^= i
    return x


@dataclass
class Tally:
    """What one sink received."""

    slow: bool
    items: int = 0
    parts: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items += 1
        self.parts.append(text)
        if self.slow:
            sink_work(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class TextWork:
    """The text work of the chain on plain strings: chunker, then (optionally) sentences."""

    def __init__(self, sentences: bool) -> None:
        self.chunker = _chunker()
        self.buffer = SentenceBuffer() if sentences else None

    def feed(self, token: str) -> list[str]:
        pieces = self.chunker.feed_text(token, 0.0)
        buf = self.buffer
        if buf is None or not pieces:
            return pieces
        if len(pieces) == 1:
            return buf.feed(pieces[0])
        out: list[str] = []
        for p in pieces:
            out.extend(buf.feed(p))
        return out

    def flush(self) -> list[str]:
        pieces = self.chunker.flush_text(0.0)
        buf = self.buffer
        if buf is None:
            return pieces
        out: list[str] = []
        for p in pieces:
            out.extend(buf.feed(p))
        out.extend(buf.flush())
        return out


def precompute(tokens: Sequence[str], sentences: bool) -> tuple[list[list[str]], list[str]]:
    """The pieces the stage emits after each token, and at the end (for the plumbing floor)."""
    work = TextWork(sentences)
    return [work.feed(t) for t in tokens], work.flush()


# --------------------------------------------------------------------------------------------
# Variants. Each returns the two sinks' tallies.
# --------------------------------------------------------------------------------------------


class TokenProducer:
    """Emits one ``TextDelta`` per token, as fast as the pipeline takes them."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = tokens

    async def stream(self, emit: Emit, /) -> None:
        for tok in self.tokens:
            await emit(TextDelta(tok))


class CountingSink:
    """An llmpipe sink that hands each text item to a :class:`Tally`."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def consume(self, events: EventReceiver, /) -> None:
        add = self.tally.add
        async for event in events:
            if isinstance(event, TextDelta):
                add(event.text)


def run_llmpipe(tokens: Sequence[str], mode: Mode) -> list[Tally]:
    slow = mode == "coalesced"
    tallies = [Tally(slow), Tally(slow)]
    stages: list[Stage] = [_chunker()]
    if _with_sentences(mode):
        stages.append(SentenceStage(stall_timeout=None))
    policy: PolicyName = "coalesce" if slow else "block"
    pipeline = Pipeline(
        TokenProducer(tokens),
        stages=stages,
        sinks=[Route(CountingSink(t), policy=policy, max_items=BUFFER) for t in tallies],
        source_buffer=BUFFER,
    )

    async def main() -> None:
        stats = await pipeline.run()
        if stats.reason != "done":
            raise RuntimeError(f"llmpipe ended with {stats.reason}: {stats.error}")

    trio.run(main)
    return tallies


async def _trio_sink(recv: trio.MemoryReceiveChannel[str], tally: Tally) -> None:
    async with recv:
        if not tally.slow:
            async for item in recv:
                tally.add(item)
            return
        # Hand-rolled coalescing: take whatever is ready and handle it as one item.
        async for item in recv:
            parts = [item]
            while True:
                try:
                    parts.append(recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            tally.add("".join(parts) if len(parts) > 1 else item)


def run_trio_floor(
    tokens: Sequence[str],
    mode: Mode,
    pieces: tuple[list[list[str]], list[str]] | None,
) -> list[Tally]:
    """Bare trio channels, llmpipe's task structure; ``pieces`` given = plumbing only."""
    slow = mode == "coalesced"
    tallies = [Tally(slow), Tally(slow)]

    async def main() -> None:
        src_send, src_recv = trio.open_memory_channel[str](BUFFER)
        a_send, a_recv = trio.open_memory_channel[str](BUFFER)
        b_send, b_recv = trio.open_memory_channel[str](BUFFER)

        async def producer() -> None:
            async with src_send:
                for tok in tokens:
                    await src_send.send(tok)

        async def stage_work() -> None:
            work = TextWork(_with_sentences(mode))
            async with src_recv, a_send, b_send:
                async for tok in src_recv:
                    for piece in work.feed(tok):
                        await a_send.send(piece)
                        await b_send.send(piece)
                for piece in work.flush():
                    await a_send.send(piece)
                    await b_send.send(piece)

        async def stage_plumbing() -> None:
            assert pieces is not None
            per_token, tail = pieces
            async with src_recv, a_send, b_send:
                i = 0
                async for _tok in src_recv:
                    for piece in per_token[i]:
                        await a_send.send(piece)
                        await b_send.send(piece)
                    i += 1
                for piece in tail:
                    await a_send.send(piece)
                    await b_send.send(piece)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_trio_sink, a_recv, tallies[0])
            nursery.start_soon(_trio_sink, b_recv, tallies[1])
            nursery.start_soon(stage_work if pieces is None else stage_plumbing)
            nursery.start_soon(producer)

    trio.run(main)
    return tallies


def run_asyncio_guide(tokens: Sequence[str], mode: Mode) -> list[Tally]:
    """Async-generator stages and an ``asyncio.Queue`` per sink, as popular guides write it."""
    slow = mode == "coalesced"
    tallies = [Tally(slow), Tally(slow)]

    async def source() -> AsyncIterator[str]:
        for tok in tokens:
            yield tok

    async def chunk(src: AsyncIterator[str]) -> AsyncIterator[str]:
        chunker = _chunker()
        async for tok in src:
            for piece in chunker.feed_text(tok, 0.0):
                yield piece
        for piece in chunker.flush_text(0.0):
            yield piece

    async def sentences(src: AsyncIterator[str]) -> AsyncIterator[str]:
        buf = SentenceBuffer()
        async for text in src:
            for sentence in buf.feed(text):
                yield sentence
        for sentence in buf.flush():
            yield sentence

    async def sink(queue: asyncio.Queue[str | None], tally: Tally) -> None:
        while (item := await queue.get()) is not None:
            tally.add(item)

    async def main() -> None:
        queues: list[asyncio.Queue[str | None]] = [asyncio.Queue(maxsize=BUFFER) for _ in tallies]
        tasks = [asyncio.create_task(sink(q, t)) for q, t in zip(queues, tallies, strict=True)]
        stream = chunk(source())
        if _with_sentences(mode):
            stream = sentences(stream)
        async for item in stream:
            for q in queues:
                await q.put(item)
        for q in queues:
            await q.put(None)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return tallies


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    cpu: float
    items: float  # mean over the two sinks


Runner: TypeAlias = Callable[[], list[Tally]]


def runners(
    tokens: Sequence[str], plumbing: dict[bool, tuple[list[list[str]], list[str]]]
) -> dict[tuple[str, Mode], Runner]:
    out: dict[tuple[str, Mode], Runner] = {}
    for mode in MODES:
        pieces = plumbing[_with_sentences(mode)]
        out["llmpipe", mode] = partial(run_llmpipe, tokens, mode)
        out[FLOOR, mode] = partial(run_trio_floor, tokens, mode, None)
        out["trio floor (plumbing)", mode] = partial(run_trio_floor, tokens, mode, pieces)
        out[GUIDE, mode] = partial(run_asyncio_guide, tokens, mode)
    return out


def measure(run: Runner, expected: str, label: str) -> Sample:
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    tallies = run()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    for i, tally in enumerate(tallies):
        if tally.text != expected:
            got = tally.text
            at = next(
                (k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), len(got)
            )
            raise AssertionError(
                f"{label}: sink {i} received {len(got)} chars, expected {len(expected)} "
                f"(first difference at {at})"
            )
    if tallies[0].items != tallies[1].items and not tallies[0].slow:
        raise AssertionError(f"{label}: the sinks received {[t.items for t in tallies]} items")
    return Sample(wall, cpu, (tallies[0].items + tallies[1].items) / 2)


@dataclass
class Row:
    variant: str
    mode: Mode
    wall: float
    cpu: float
    items: int
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall

    @property
    def cpu_us_per_token(self) -> float:
        return self.cpu / self.tokens * 1e6


def run_all(tokens: Sequence[str], repeat: int, progress: bool) -> list[Row]:
    expected = "".join(tokens)
    plumbing = {s: precompute(tokens, s) for s in (True, False)}
    table = runners(tokens, plumbing)
    keys = list(table)
    samples: dict[tuple[str, Mode], list[Sample]] = {k: [] for k in keys}
    # Warm-up (imports, caches) on a small prefix; not recorded.
    small = tokens[: min(len(tokens), 2000)]
    for key, run in runners(small, {s: precompute(small, s) for s in (True, False)}).items():
        measure(run, "".join(small), f"warm-up {key[0]} / {key[1]}")
    for r in range(repeat):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            samples[key].append(measure(table[key], expected, f"{key[0]} / {key[1]}"))
        if progress:
            print(f"round {r + 1}/{repeat} done", file=sys.stderr)
    rows = []
    for (variant, mode), ss in samples.items():
        rows.append(
            Row(
                variant,
                mode,
                statistics.median(s.wall for s in ss),
                statistics.median(s.cpu for s in ss),
                round(statistics.median(s.items for s in ss)),
                len(tokens),
            )
        )
    return rows


def render_table(rows: Sequence[Row]) -> str:
    by = {(r.variant, r.mode): r for r in rows}
    hops = {"llmpipe": "3", FLOOR: "3", "trio floor (plumbing)": "3", GUIDE: "2 (+gen)"}
    lines = [
        "| mode | variant | hops | tokens/s | µs CPU/token | items/sink | vs floor | vs asyncio |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        floor, guide = by[FLOOR, mode], by[GUIDE, mode]
        for variant in VARIANTS:
            r = by[variant, mode]
            lines.append(
                f"| {mode} | {variant} | {hops[variant]} | {r.tokens_per_s:,.0f} "
                f"| {r.cpu_us_per_token:.2f} | {r.items:,} | {r.cpu / floor.cpu:.2f} "
                f"| {r.cpu / guide.cpu:.2f} |"
            )
    return "\n".join(lines)


def interpretation(rows: Sequence[Row]) -> str:
    by = {(r.variant, r.mode): r for r in rows}
    out = []
    for mode in MODES:
        lp, fl = by["llmpipe", mode], by[FLOOR, mode]
        pl, gd = by["trio floor (plumbing)", mode], by[GUIDE, mode]
        diff = lp.cpu_us_per_token - fl.cpu_us_per_token
        line = (
            f"* **{mode}**: llmpipe moves {lp.tokens_per_s:,.0f} tokens/s, "
            f"at {lp.cpu / fl.cpu:.2f}x the CPU time of the trio floor and "
            f"{lp.cpu / gd.cpu:.2f}x that of the asyncio guide design; it spends "
            f"{lp.cpu_us_per_token:.2f} µs CPU per token against {fl.cpu_us_per_token:.2f} "
            f"(floor) and {gd.cpu_us_per_token:.2f} (asyncio), {abs(diff):.2f} µs "
            f"{'more' if diff >= 0 else 'less'} than the floor."
        )
        if mode == "coalesced":
            saved = 1 - lp.items / fl.items if fl.items else 0.0
            line += (
                f" Coalescing cut the items each slow sink handles from {fl.items:,} to "
                f"{lp.items:,} ({saved:.0%} fewer), and the sinks' per-item work with them."
            )
        else:
            line += (
                f" The bare hops (plumbing floor) cost {pl.cpu_us_per_token:.2f} µs/token; "
                f"each sink received {lp.items:,} items."
            )
        out.append(line)
    return "\n".join(out)


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs (nproc), "
        f"{platform.python_implementation()} {platform.python_version()}, trio {trio.__version__}"
    )


def write_results(rows: Sequence[Row], args: argparse.Namespace, elapsed: float) -> None:
    text = f"""# Benchmark results: `bench_pipeline.py`

Generated by `benchmarks/bench_pipeline.py` (its docstring says what each variant and mode
is). Medians of {args.repeat} interleaved runs of {args.tokens:,} tokens each; the whole run took
{elapsed:.0f} s.

* Machine: {machine()}; load average {args.load_before} before, {load_average()} after
* Command (from the repository root):

  ```
  {command()}
  ```

* Slow sinks (coalesced mode): {SINK_WORK_LOOPS} loop iterations of CPU work per item
  received, measured at {sink_work_us():.1f} µs per item on this machine.

## Results

{render_table(rows)}

`vs floor` / `vs asyncio`: CPU time per token relative to `trio floor (stages)` /
`asyncio guide` in the same mode (above 1 = costlier). `hops`: channel or queue hops an item
crosses (the asyncio design chains its stages as async generators in one task, so its producer
to stage link is not a hop).

## Interpretation

{interpretation(rows)}

Why the asyncio guide design is the cheapest per item: a `put` on a queue that is not full
and a `get` on one that is not empty never go through the event loop, and its stages are
generator calls, not hops; it pays for that with no policies, statistics or cancellation
story. Bare trio channels make every `send`/`receive` a schedule point; llmpipe's channels
check for cancellation on every call but yield only every 32 calls, which is why llmpipe can
beat the trio floor when many items cross each hop (per-token mode).

Caveats: the trio floors lack everything llmpipe adds per item (typed events, `seq` stamping,
byte budgets, statistics, cancellation handling, overflow policies, stage deadlines), so the
gap to them is the price of those. The asyncio guide design lacks them too and has no
backpressure-aware fan-out policies: a slow sink there makes every item wait (coalesced mode:
its sinks pay the per-item work for every sentence). The trio floors coalesce by hand in
coalesced mode (a sink drains whatever is ready). Everything runs in one thread, so CPU time
and wall time agree unless the machine is busy (then tokens/s drops while µs CPU/token holds);
compare ratios from the same run only.
"""
    RESULTS.write_text(text, encoding="utf-8")


def sink_work_us() -> float:
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        sink_work("x")
    return (time.perf_counter() - t0) / n * 1e6


def profile(tokens: Sequence[str], mode: Mode, top: int) -> None:
    """Run the llmpipe variant once under cProfile and print the top functions."""
    prof = cProfile.Profile()
    prof.enable()
    run_llmpipe(tokens, mode)
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (median)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the generated text")
    add_harness_arguments(parser, "benchmarks/PIPELINE.md (quick: 5,000 tokens, 1 run)")
    parser.add_argument(
        "--profile",
        choices=MODES,
        help="instead of benchmarking, profile the llmpipe variant once in this mode",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if args.quick:
        args.tokens, args.repeat, args.write = 5_000, 1, False
    if args.tokens < 1 or args.repeat < 1:
        parser.error("--tokens and --repeat must be >= 1")
    tokens = make_tokens(args.tokens, args.seed)
    if args.profile:
        profile(tokens, args.profile, 30)
        return 0
    args.load_before = load_average()
    start = time.perf_counter()
    rows = run_all(tokens, args.repeat, progress=not args.quick)
    elapsed = time.perf_counter() - start
    print(f"{args.tokens:,} tokens, median of {args.repeat}; {machine()}\n")
    print(render_table(rows))
    print()
    print(interpretation(rows))
    if args.write:
        write_results(rows, args, elapsed)
        print(f"\nwrote {RESULTS}")
    summary(rows, args).save(args.summary)
    return 0


def summary(rows: Sequence[Row], args: argparse.Namespace) -> Summary:
    by = {(r.variant, r.mode): r for r in rows}
    table = []
    for mode in MODES:
        lp, fl, gd = by["llmpipe", mode], by[FLOOR, mode], by[GUIDE, mode]
        table.append([
            mode, f"{lp.cpu_us_per_token:.2f}", f"{fl.cpu_us_per_token:.2f}",
            f"{gd.cpu_us_per_token:.2f}", f"{lp.cpu / fl.cpu:.2f}", f"{lp.cpu / gd.cpu:.2f}",
            f"{lp.items:,} / {fl.items:,}",
        ])  # fmt: skip
    return Summary(
        name="pipeline",
        title="Pipeline core",
        claim=(
            "CPU per token through producer → chunker → sentences → two sinks: llmpipe against "
            "the same stages on bare trio channels (the floor) and the asyncio guide design "
            "(async generators + `asyncio.Queue`), per item, per token and coalesced to slow "
            "sinks."
        ),
        columns=[
            "mode",
            ">llmpipe µs/token",
            ">trio floor",
            ">asyncio guide",
            ">vs floor",
            ">vs asyncio",
            ">items per sink (llmpipe / floor)",
        ],
        rows=table,
        notes=[
            f"Medians of {args.repeat} interleaved runs of {args.tokens:,} tokens; `vs`: CPU "
            "time relative to the baseline (below 1 = cheaper than it).",
        ],
        detail=RESULTS.name,
        versions=versions("trio"),
        quick=args.quick,
    )


if __name__ == "__main__":
    sys.exit(main())
