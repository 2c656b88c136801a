"""SSE decoding speed: llmpipe's ``SSEDecoder`` against ``httpx-sse`` and the ``openai`` SDK's own.

    .venv/bin/python benchmarks/bench_sse.py              # full run, prints the tables
    .venv/bin/python benchmarks/bench_sse.py --write      # ... and the plot (sse_linear.png)
    .venv/bin/python benchmarks/bench_sse.py --quick      # smoke: small sizes (the tests)

Two inputs, the same bytes for every decoder:

* **a recorded OpenAI stream**: the body of one streamed Chat Completions answer
  (``--tokens`` deltas, one ``chat.completion.chunk`` event each, then ``[DONE]``), recorded
  from llmpipe's provider emulator over loopback HTTP at 2,000 tokens/s, in the chunks the
  socket reads returned (so mostly one event per chunk, as a provider's stream arrives).
  Decoded ``--repeat`` times per decoder, interleaved; MB/s of body over CPU time, median.
* **one large event arriving one byte at a time**: ``data: xxxx...\\n\\n`` of 64 KiB, 256 KiB,
  1 MiB and 8 MiB, fed in 1-byte chunks (what a slow or hostile server can do). A linear decoder
  keeps the same MB/s at every size; a quadratic one slows down in proportion to the size. A
  decoder whose run at one size takes more than ``--budget`` seconds is not run at the larger
  sizes (the table says so).

Decoders (each gives the events' ``data``; every run checks it against the input):

``llmpipe``
    ``pipeline.wire.SSEDecoder().feed(chunk)`` per chunk (what the producers and the client run).
``httpx-sse``
    ``httpx_sse.EventSource(response).iter_sse()`` over an ``httpx.Response`` whose body is the
    chunks (so httpx's own text and line decoding is in, as a user of httpx-sse gets it).
``openai SDK``
    ``openai._streaming.SSEDecoder().iter_bytes(chunks)``: the decoder behind
    ``create(stream=True)`` (a private class: the SDK's path, without its JSON parsing).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import (
    HERE,
    Summary,
    add_harness_arguments,
    available,
    interleaved,
    median,
    pyplot,
    versions,
)

from pipeline.testing.emulator import Reply, open_emulator
from pipeline.wire import SSEDecoder

Decoder = Callable[[Sequence[bytes]], list[str]]
PLOT = "sse_linear.png"
WORDS = [
    "the",
    "a",
    "model",
    "token",
    "stream",
    "event",
    "answer",
    "of",
    "to",
    "and",
    "is",
    "in",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "was",
]


def make_tokens(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        word = rng.choice(WORDS)
        out.append((" " if i else "") + (word + ("." if rng.random() < 0.07 else "")))
    return out


def record_openai_stream(n_tokens: int) -> list[bytes]:
    """The body of one streamed answer from the emulator, in the chunks the reads returned."""
    import httpx

    async def main() -> list[bytes]:
        reply = Reply(make_tokens(n_tokens), tokens_per_second=2000.0)
        async with open_emulator(reply) as emu, httpx.AsyncClient(timeout=60) as client:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            url = emu.openai_base_url + "/chat/completions"
            async with client.stream("POST", url, json=body) as response:
                return [chunk async for chunk in response.aiter_raw()]

    return trio.run(main)


def llmpipe_decoder(chunks: Sequence[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out: list[str] = []
    for chunk in chunks:
        out += [e.data for e in decoder.feed(chunk)]
    decoder.close()
    return out


def httpx_sse_decoder() -> Decoder | str:
    try:
        import httpx
        from httpx_sse import EventSource
    except ImportError as exc:
        return f"not installed ({exc}); `pip install -e '.[bench]'`"

    def decode(chunks: Sequence[bytes]) -> list[str]:
        response = httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=iter(chunks)
        )
        return [e.data for e in EventSource(response).iter_sse()]

    return decode


def openai_decoder() -> Decoder | str:
    try:
        from openai._streaming import SSEDecoder as OpenAIDecoder
    except ImportError as exc:
        return f"not importable ({exc})"

    def decode(chunks: Sequence[bytes]) -> list[str]:
        return [e.data for e in OpenAIDecoder().iter_bytes(iter(chunks))]

    return decode


def decoders() -> tuple[dict[str, Decoder], dict[str, str]]:
    return available(
        {
            "llmpipe": lambda: llmpipe_decoder,
            "httpx-sse": httpx_sse_decoder,
            "openai SDK": openai_decoder,
        }
    )


def timed(decode: Decoder, chunks: Sequence[bytes], expected: list[str]) -> float:
    """CPU seconds of one decoding; raises when the events' data differ from ``expected``."""
    t0 = time.process_time()
    got = decode(chunks)
    seconds = time.process_time() - t0
    if got != expected:
        raise AssertionError(f"wrong events: {len(got)} against {len(expected)} expected")
    return seconds


def recorded(found: dict[str, Decoder], tokens: int, repeat: int) -> dict[str, float]:
    """Median MB/s per decoder on the recorded stream."""
    chunks = record_openai_stream(tokens)
    size = sum(map(len, chunks))
    expected = llmpipe_decoder(chunks)
    if len(expected) < tokens or expected[-1] != "[DONE]":  # + role, finish and [DONE]
        raise AssertionError(f"unexpected recording: {len(expected)} events")
    print(f"recorded stream: {size:,} bytes in {len(chunks):,} chunks", file=sys.stderr)
    runs = interleaved(
        {name: (lambda d=d: timed(d, chunks, expected)) for name, d in found.items()}, repeat
    )
    return {name: size / 1e6 / median(times) for name, times in runs.items()}


def byte_at_a_time(
    found: dict[str, Decoder], sizes: Iterable[int], budget: float
) -> dict[str, dict[int, float]]:
    """MB/s per decoder and event size (absent: skipped after a run over ``budget``)."""
    out: dict[str, dict[int, float]] = {name: {} for name in found}
    stopped: set[str] = set()
    for size in sizes:
        body = b"data: " + b"x" * (size - 8) + b"\n\n"
        chunks = [body[i : i + 1] for i in range(len(body))]
        expected = ["x" * (size - 8)]
        for name, decode in found.items():
            if name in stopped:
                continue
            seconds = timed(decode, chunks, expected)
            out[name][size] = size / 1e6 / seconds
            print(f"  {name}: {size:,} B in {seconds:.2f} s", file=sys.stderr, flush=True)
            if seconds > budget:
                stopped.add(name)
    return out


def size_label(size: int) -> str:
    return f"{size // 1024 // 1024} MiB" if size >= 1024 * 1024 else f"{size // 1024} KiB"


def plot(big: dict[str, dict[int, float]], sizes: Sequence[int]) -> None:
    with pyplot(HERE / PLOT) as plt:
        if plt is None:
            return
        for name, by_size in big.items():
            xs = [s for s in sizes if s in by_size]
            plt.plot([s / 1024 for s in xs], [by_size[s] for s in xs], marker="o", label=name)
        plt.xscale("log", base=2)
        plt.yscale("log")
        plt.xlabel("event size, KiB (fed one byte at a time)")
        plt.ylabel("MB/s (higher is better; flat = linear)")
        plt.title("SSE decoding: one large event, one byte per chunk")
        plt.legend()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_harness_arguments(parser, f"the plot ({PLOT})")
    parser.add_argument("--tokens", type=int, default=5000, help="deltas in the recorded stream")
    parser.add_argument("--repeat", type=int, default=7, help="runs per decoder (median)")
    parser.add_argument("--budget", type=float, default=4.0, help="s per run before stopping")
    args = parser.parse_args(argv)
    sizes = [64 << 10, 256 << 10, 1 << 20, 8 << 20]
    if args.quick:
        args.tokens, args.repeat, args.budget, sizes = 300, 1, 1.0, [16 << 10, 64 << 10]
    found, missing = decoders()
    mbs = recorded(found, args.tokens, args.repeat)
    big = byte_at_a_time(found, sizes, args.budget)
    columns = ["decoder", ">recorded OpenAI stream, MB/s", ">vs llmpipe"]
    columns += [f">{size_label(s)} byte by byte, MB/s" for s in sizes]
    rows = []
    for name in found:
        row = [name, f"{mbs[name]:.1f}", f"{mbs[name] / mbs['llmpipe']:.2f}"]
        row += [f"{big[name][s]:.2f}" if s in big[name] else "stopped" for s in sizes]
        rows.append(row)
    rows += [[name, why, "", *[""] * len(sizes)] for name, why in missing.items()]
    notes = [
        f"Recorded stream: {args.tokens:,} deltas, medians of {args.repeat} interleaved runs, "
        "MB/s of body per CPU second. `vs llmpipe`: above 1 is faster than llmpipe.",
        "Byte by byte: one run per size; `stopped` = the previous size took over "
        f"{args.budget:g} s, so the larger one was not tried (quadratic time).",
    ]
    if args.write:
        plot(big, sizes)
    Summary(
        name="sse",
        title="SSE decoding",
        claim=(
            "MB/s decoding server-sent events, on a recorded OpenAI stream and on one large "
            "event arriving one byte at a time, against `httpx-sse` and the `openai` SDK's own "
            "decoder. Goal: linear in the event's size, and the fastest."
        ),
        columns=columns,
        rows=rows,
        notes=notes,
        plots=[PLOT] if args.write else [],
        versions=versions("httpx", "httpx-sse", "openai"),
        quick=args.quick,
    ).save(args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
