"""Does the memory store's budget hold in the server's RSS?

A server process (this script with ``--serve``: ``create_app`` with a ``MemoryStore`` of
``max_total_bytes = --budget-mib`` and a producer that writes ``--tokens`` short tokens as fast
as the store takes them) gets ``--generations`` resumable generations (``POST /v1/streams``)
that nobody reads, whose text together is about twice the budget: the store fills, evicts the
ended streams, refuses the rest (``overflow``), and settles. The parent measures the server's
RSS (``VmRSS`` in ``/proc/PID/status``) after one warm-up generation and once every generation
has ended, and prints the growth next to the budget and what the store counts.

    .venv/bin/python benchmarks/bench_store_memory.py                  # 80 generations, 256 MiB
    .venv/bin/python benchmarks/bench_store_memory.py --quick          # 80 generations, 32 MiB
    .venv/bin/python -m benchmarks --write --only store-memory         # its RESULTS.md section

``tests/test_store_memory.py`` runs the quick form and checks that the growth stays within the
budget plus :data:`CONSTANT`. The last line of the output is the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import Summary, add_harness_arguments, versions

from pipeline import Done, Emit, Producer, TextDelta
from pipeline.stores import MemoryStore
from sinks.server import ServerConfig, StreamRequest, create_app, get_runtime, serve

MiB: Final = 1024 * 1024
#: RSS a settled server may hold beyond the store's budget: what fragmentation leaves in
#: pymalloc's pools after evictions, the generations' spill-file buffers and task frames, and
#: the allocator's slack (measured: see README, "Memory budgets").
CONSTANT: Final = 16 * MiB
# Text the producer cuts its tokens from (fresh str objects of 2-9 characters, as decoded JSON).
_TEXT: Final = (
    "The sky looks blue because molecules of air scatter short wavelengths of sunlight "
    "much more strongly than long ones, an effect described by Lord Rayleigh. "
) * 4
_BYTES_PER_TOKEN: Final = 220  # about what MemoryStore counts per short TextDelta


class _Tokens:
    """``n`` short tokens, one scheduling point each, then ``Done``."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def stream(self, emit: Emit, /) -> None:
        pos = 0
        for i in range(self.n):
            size = 2 + i % 8
            if pos + size > len(_TEXT):
                pos = 0
            await emit(TextDelta(_TEXT[pos : pos + size]))
            pos += size
            await trio.lowlevel.checkpoint()
        await emit(Done("stop"))


async def _serve(budget: int, tokens: int) -> None:
    @asynccontextmanager
    async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
        yield _Tokens(tokens if request.max_tokens is None else request.max_tokens)

    store = MemoryStore(max_total_bytes=budget)
    config = ServerConfig(
        max_generations_per_client=1000, max_streams_total=1000, idle_cancel_after=3600.0
    )
    app = create_app(factory, config, store=store)

    async def report() -> None:  # one line per second: what the store counts, and the RSS
        runtime = get_runtime(app)
        while True:
            await trio.sleep(1)
            active = len(runtime.generations)
            print(json.dumps({"active": active, "counted": store.total_bytes}), flush=True)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, app, "127.0.0.1", 0)
        print(json.dumps({"port": port}), flush=True)
        nursery.start_soon(report)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def measure(generations: int, budget_mib: int) -> dict[str, float]:
    """Run the server, the generations, and return the figures (MiB)."""
    budget = budget_mib * MiB
    tokens = 2 * budget // _BYTES_PER_TOKEN // generations
    cmd = [sys.executable, __file__, "--serve", "--budget-mib", str(budget_mib)]
    cmd += ["--tokens", str(tokens)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    try:
        port = json.loads(server.stdout.readline())["port"]
        base = f"http://127.0.0.1:{port}"

        def start(max_tokens: int | None = None) -> None:
            body: dict[str, object] = {"prompt": "hi"}
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            client.post(f"{base}/v1/streams", json=body).raise_for_status()

        def settle() -> int:
            while True:
                line = server.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise RuntimeError("the server exited")
                report = json.loads(line)
                if report["active"] == 0:
                    return int(report["counted"])

        with httpx.Client(timeout=30) as client:
            start(max_tokens=1000)  # warm-up: every import and first allocation made
            settle()
            rss_before = _rss(server.pid)
            for _ in range(generations):
                start()
            counted = settle()
            rss_after = _rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "generations": generations,
        "tokens_each": tokens,
        "budget_mib": budget_mib,
        "counted_mib": counted / MiB,
        "rss_before_mib": rss_before / MiB,
        "rss_after_mib": rss_after / MiB,
        "growth_mib": (rss_after - rss_before) / MiB,
        "constant_mib": CONSTANT / MiB,
    }


def summary(figures: dict[str, float], quick: bool) -> Summary:
    growth, budget = figures["growth_mib"], figures["budget_mib"]
    within = growth <= budget + figures["constant_mib"]
    return Summary(
        name="store-memory",
        title="Memory store: the budget in RSS",
        claim=(
            "A server whose `MemoryStore` has a byte budget gets resumable generations that "
            "nobody reads, about twice the budget of text: the store fills, evicts the ended "
            "streams and refuses the rest. Does the process grow by what the budget says? Goal: "
            f"RSS growth within the budget + {figures['constant_mib']:g} MiB "
            "(`bench_store_memory.CONSTANT`)."
        ),
        columns=[
            ">generations",
            ">budget, MiB",
            ">counted by the store, MiB",
            ">RSS before → after, MiB",
            ">growth, MiB",
            ">growth / budget",
            "within budget + constant",
        ],
        rows=[
            [
                f"{figures['generations']:g} x {figures['tokens_each']:,g} tokens",
                f"{budget:g}",
                f"{figures['counted_mib']:.1f}",
                f"{figures['rss_before_mib']:.0f} → {figures['rss_after_mib']:.0f}",
                f"{growth:.1f}",
                f"{growth / budget:.2f}",
                "yes" if within else "**no**",
            ]
        ],
        notes=[
            "One server process (`create_app` + `MemoryStore(max_total_bytes=budget)`, a producer "
            "writing short tokens as fast as the store takes them); RSS is `VmRSS` after one "
            "warm-up generation and once every generation has ended. No baseline: the claim is "
            "llmpipe's own (the README's *Memory budgets are memory*)."
        ],
        versions=versions("trio"),
        quick=quick,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_harness_arguments(parser, "nothing of its own (the harness keeps the summary)")
    parser.add_argument("--generations", type=int, default=80)
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        logging.getLogger("llmpipe").setLevel(logging.ERROR)  # the overflows are expected
        gc.freeze()
        trio.run(_serve, args.budget_mib * MiB, args.tokens)
        return
    budget_mib = 32 if args.quick else args.budget_mib
    started = time.monotonic()
    figures = measure(args.generations, budget_mib)
    figures["seconds"] = round(time.monotonic() - started, 1)
    summary(figures, args.quick).save(args.summary, echo=False)
    print(
        f"{figures['generations']} unread generations, store budget {budget_mib} MiB "
        f"(counted {figures['counted_mib']:.1f} MiB): RSS {figures['rss_before_mib']:.0f} -> "
        f"{figures['rss_after_mib']:.0f} MiB, growth {figures['growth_mib']:.1f} MiB "
        f"(budget + {figures['growth_mib'] - budget_mib:.1f} MiB)",
        file=sys.stderr,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
