"""Memory with a slow consumer: 10^6 tokens into a consumer that reads at speech speed.

    .venv/bin/python benchmarks/bench_memory.py             # full run (10^6 tokens), prints
    .venv/bin/python benchmarks/bench_memory.py --write     # ... and the plot (memory_rss.png)
    .venv/bin/python benchmarks/bench_memory.py --quick     # smoke: 20,000 tokens (the tests)

The model writes ``--tokens`` tokens (fresh strings of ~5 characters, as a decoder makes them)
as fast as it can; the consumer reads at speech speed (``--cps`` characters per second, 15 by
default, about 180 words a minute): after each item it waits ``len(text) / cps`` seconds. Each
variant runs in a fresh process; its resident set size (``/proc/self/statm``) is sampled every
``--tokens / 200`` tokens the model wrote, and the figure is the peak above the RSS just
before the stream started. One run per variant: memory does not depend on the machine's load.

``llmpipe block`` / ``llmpipe coalesce`` / ``llmpipe spill``
    ``Pipeline(producer, sinks=[Route(consumer, policy=...)])`` with the default budget (64
    items, 64 KiB), under trio's ``MockClock`` (the consumer's waits are simulated, so a block
    run, where the model waits for the consumer, covers all the tokens in seconds). Every run
    checks that the consumer got the whole text. ``block`` holds the model back to the
    consumer's pace; ``coalesce`` merges what waits into one item; ``spill`` writes it to a file.
``asyncio unbounded queue``
    The guides' design: the model task ``put``s each token on an ``asyncio.Queue()`` (no
    ``maxsize``, their default) and the consumer task ``get``s and waits (real time, so it reads
    almost nothing while the model writes). The queue holds what the consumer has not read.
``sse-starlette, client stops reading``
    ``EventSourceResponse`` on uvicorn (as ``guide_relay.py`` serves) streaming the tokens as
    fast as its generator can, to a client that sends the request, reads the response head and
    then stops reading. The server's RSS is sampled for ``--sse-seconds``; the table also says
    how many tokens the generator got out in that time (uvicorn stops taking writes when the
    socket's buffers are full, so this is where the model waits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import HERE, ROOT, Summary, add_harness_arguments, free_port, pyplot, versions

PLOT = "memory_rss.png"
PAGE = os.sysconf("SC_PAGE_SIZE")
LLMPIPE = ("llmpipe block", "llmpipe coalesce", "llmpipe spill")
ASYNCIO = "asyncio unbounded queue"
SSE = "sse-starlette, client stops reading"
MB = 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def token(i: int) -> str:
    return f" w{i % 10000}"


class Recorder:
    def __init__(self, every: int) -> None:
        self.every = every
        self.samples: list[tuple[int, int]] = []
        self.base = rss()

    def at(self, i: int) -> None:
        if i % self.every == 0:
            self.samples.append((i, rss() - self.base))


# -- one variant, in this (fresh) process --------------------------------------------------------


def run_llmpipe(policy: str, n: int, cps: float, rec: Recorder) -> dict[str, Any]:
    import trio
    import trio.testing

    from pipeline import Done, Emit, EventReceiver, Pipeline, Route, TextDelta

    class Model:
        chars = 0

        async def stream(self, emit: Emit, /) -> None:
            for i in range(n):
                text = token(i)
                self.chars += len(text)
                await emit(TextDelta(text))
                rec.at(i + 1)
            await emit(Done("stop"))

    class Listener:
        chars = 0
        items = 0

        async def consume(self, events: EventReceiver) -> None:
            async for event in events:
                if isinstance(event, TextDelta):
                    self.chars += len(event.text)
                    self.items += 1
                    await trio.sleep(len(event.text) / cps)

    model, listener = Model(), Listener()

    async def main() -> None:
        await Pipeline(model, sinks=[Route(listener, policy=policy)]).run()  # type: ignore[arg-type]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    if listener.chars != model.chars:
        raise AssertionError(f"lost text: {listener.chars} of {model.chars} characters")
    return {"items": listener.items}


def run_asyncio(n: int, cps: float, rec: Recorder) -> dict[str, Any]:
    async def main() -> int:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        read = 0

        async def consumer() -> None:
            nonlocal read
            while (text := await queue.get()) is not None:
                read += 1
                await asyncio.sleep(len(text) / cps)

        task = asyncio.create_task(consumer())
        for i in range(n):
            await queue.put(token(i))
            await asyncio.sleep(0)  # a network read per token
            rec.at(i + 1)
        await queue.put(None)
        task.cancel()
        return read

    return {"items": asyncio.run(main())}


def child(variant: str, n: int, cps: float) -> None:

    import pipeline  # noqa: F401

    rec = Recorder(max(1, n // 200))
    t0 = time.perf_counter()
    if variant in LLMPIPE:
        extra = run_llmpipe(variant.split()[-1], n, cps, rec)
    else:
        extra = run_asyncio(n, cps, rec)
    out = {
        "samples": rec.samples,
        "peak": max(r for _, r in rec.samples),
        "growth": max(r for _, r in rec.samples) - rec.samples[0][1],
        "seconds": time.perf_counter() - t0,
        **extra,
    }
    print(json.dumps(out))


# -- sse-starlette ---------------------------------------------------------------------------


def sse_server(port: int, n: int) -> None:
    import uvicorn
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.routing import Route as HTTPRoute

    async def stream(request: Any) -> EventSourceResponse:
        async def events() -> Any:
            for i in range(n):
                if i % 1000 == 0:
                    print(f"generated {i}", file=sys.stderr, flush=True)
                yield {"event": "text", "data": json.dumps({"text": token(i)})}
            print(f"generated {n}", file=sys.stderr, flush=True)

        return EventSourceResponse(events())

    app = Starlette(routes=[HTTPRoute("/chat", stream)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run_sse(n: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, __file__, "--sse-server", str(port), "--tokens", str(n)]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    generated = 0
    try:
        sock = None
        for _ in range(200):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        if sock is None:
            raise RuntimeError("the sse-starlette server did not start")
        base = rss_of(proc.pid)
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        head = sock.recv(4096)  # the head (and maybe a first event); then never read again
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response {head[:80]!r}")
        samples = []
        t0 = time.perf_counter()
        while (t := time.perf_counter() - t0) < seconds:
            samples.append((t, rss_of(proc.pid) - base))
            time.sleep(seconds / 200)
        sock.close()
    finally:
        proc.kill()  # uvicorn's graceful shutdown would wait for the stalled response
        _, err = proc.communicate(timeout=10)
    for line in err.splitlines():
        if line.startswith("generated "):
            generated = int(line.split()[1])
    peak = max(r for _, r in samples)
    return {
        "samples": samples,
        "peak": peak,
        "growth": peak - samples[0][1],
        "generated": generated,
    }


# -- the parent ------------------------------------------------------------------------------


def run_variant(variant: str, n: int, cps: float) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--variant", variant, "--tokens", str(n), "--cps", str(cps)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {variant}: peak {result['peak'] / MB:.1f} MB above start in {result['seconds']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


def plot(results: dict[str, dict[str, Any]], n: int) -> None:
    with pyplot(HERE / PLOT) as plt:
        if plt is None:
            return
        for name, r in results.items():
            xs = [i for i, _ in r["samples"]]
            plt.plot(xs, [m / MB for _, m in r["samples"]], label=name)
        plt.xlabel("tokens the model has written")
        plt.ylabel("RSS above the start, MB")
        plt.ylim(bottom=0)
        plt.title(f"{n:,} tokens into a consumer at speech speed")
        plt.legend()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_harness_arguments(parser, f"the plot ({PLOT})")
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--cps", type=float, default=15.0, help="consumer's characters/s")
    parser.add_argument("--sse-seconds", type=float, default=10.0)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--sse-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sse_server:
        sse_server(args.sse_server, args.tokens)
        return 0
    if args.variant:
        child(args.variant, args.tokens, args.cps)
        return 0
    if args.quick:
        args.tokens, args.sse_seconds = 20_000, 1.0
    results = {v: run_variant(v, args.tokens, args.cps) for v in (*LLMPIPE, ASYNCIO)}
    sse = run_sse(args.tokens, args.sse_seconds)
    print(f"  {SSE}: peak {sse['peak'] / MB:.1f} MB, {sse['generated']:,} generated")
    budget = 64 * 1024
    rows = []
    for name, r in [*results.items(), (SSE, sse)]:
        written = (
            f"{args.tokens:,}" if name != SSE else f"{sse['generated']:,} in {args.sse_seconds:g} s"
        )
        rows.append([
            name, f"{r['growth'] / MB:.1f}", "yes" if r["growth"] <= budget + 5 * MB else "no",
            f"{r['peak'] / MB:.1f}", written, f"{r.get('items', 0):,}",
        ])  # fmt: skip
    if args.write:
        plot(results, args.tokens)
    Summary(
        name="memory",
        title="Memory with a slow consumer",
        claim=(
            f"{args.tokens:,} tokens into a consumer that reads at speech speed "
            f"({args.cps:g} characters/s): RSS over the stream for each lossless policy "
            "against the asyncio design's unbounded queue (the guides' default) and "
            "sse-starlette with a client that stops reading. Goal: flat (within the budget "
            "+ 5 MB) against linear."
        ),
        columns=[
            "variant",
            ">RSS growth during the stream, MB",
            ">within budget + 5 MB",
            ">peak RSS above start, MB",
            ">tokens written",
            ">items the consumer read",
        ],
        rows=rows,
        notes=[
            "llmpipe runs under trio's MockClock (the consumer's waits are simulated, so it "
            "covers every token); the asyncio design in real time (its consumer reads almost "
            "nothing while the model writes, as a speech consumer would). One run per variant, "
            "each in a fresh process; budget: 64 items / 64 KiB (the default).",
            "Growth: the highest RSS sample minus the first one (taken after the first token, "
            "once the pipeline or event loop is set up); peak above start also counts that "
            "set-up (trio's run, the pipeline's first use: about 6 MB, once).",
            "sse-starlette: the server's RSS, sampled while a client that read only the "
            "response head stays connected; uvicorn's flow control stops the generator when "
            "the socket's buffers are full, so its memory is flat and the model waits.",
        ],
        plots=[PLOT] if args.write else [],
        versions=versions("trio", "sse-starlette", "uvicorn"),
        quick=args.quick,
    ).save(args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
