"""1,000 jobs inside a requests- and a tokens-per-minute limit: llmpipe's batch runner against
the bound the limits allow and against the script users write (``asyncio.gather`` +
``asyncio.Semaphore`` + retry on 429 honouring ``retry-after``, with ``openai.AsyncOpenAI``).

Run from the repository root::

    .venv/bin/python benchmarks/bench_batch.py --write    # full run (~2-3 min), rewrites BATCH.md
    .venv/bin/python benchmarks/bench_batch.py --quick    # smoke test: 60 jobs, checks only

What is measured
================

Each variant gets a fresh provider emulator (:mod:`pipeline.testing.emulator`, real loopback
HTTP, run by ``trio.run`` in a thread of this process) with :class:`RateLimits`: at most
``RPM`` requests and ``TPM`` tokens (input + output, counted when a request arrives) in any
window. The window is scaled down from 60 s to 6 s (0.5 s in ``--quick``) so that the run
takes minutes, not an hour; the limits are per window. Every job is a one-message prompt of the
same length answered by a scripted reply of ``OUTPUT_TOKENS`` deltas, streamed at once, whose
reported usage is what llmpipe's estimate says (``CostGuard.check`` of the prompt + the output
limit): the limits configured in the runner are then the provider's, and the tokens per job
``t`` are known, so at most ``k = min(RPM, TPM // t)`` jobs fit in a window.

The bound: no schedule can send the ``N`` jobs faster than ``k`` per window, so the last batch
of requests cannot start before ``(ceil(N / k) - 1) * window`` seconds after the first, and it
ends a request's duration later (the median duration the emulator saw in that run).

``llmpipe``
    ``sinks.batch.Batch`` over ``open_backend("openai", retry=RetryPolicy(max_attempts=1))``
    (the official SDK), a ``LocalLimiter`` with the same ``RPM``/``TPM``/window and
    ``concurrency=16``, documents into a temporary ``BatchDirectory``.
``asyncio script``
    What a user writes: ``asyncio.gather`` of one coroutine per job, each under an
    ``asyncio.Semaphore(16)``, ``client.chat.completions.create(stream=True)`` with
    ``openai.AsyncOpenAI(max_retries=0)``, and on ``openai.RateLimitError`` a sleep of the
    response's ``retry-after`` then another try (the emulator only serves streaming requests,
    hence ``stream=True``). Run with ``asyncio.run`` in the main thread.

Both go through the same emulator code; wall time is ``time.perf_counter`` around the run
(client set-up included). 429s are the emulator's count of requests it refused.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from _benchlib import (
    Summary,
    add_harness_arguments,
    command,
    load_average,
    markdown_table,
    versions,
)

from pipeline.producers import CostGuard, RetryPolicy, open_backend
from pipeline.testing.emulator import Emulator, RateLimits, Reply, open_emulator
from sinks.batch import (
    Batch,
    BatchConfig,
    Job,
    LocalLimiter,
    backend_producers,
    open_directory,
)

RESULTS = Path(__file__).with_name("BATCH.md")
CONCURRENCY = 16
OUTPUT_TOKENS = 20
MODEL = "emulated-gpt"
GOAL_RATIO = 1.05  # llmpipe's wall time / the bound


@attrs.frozen
class Setup:
    jobs: int
    window: float
    rpm: int
    tpm: int

    @property
    def tokens_per_job(self) -> int:
        return input_tokens() + OUTPUT_TOKENS

    @property
    def per_window(self) -> int:
        return min(self.rpm, self.tpm // self.tokens_per_job)

    def bound(self, duration: float) -> float:
        return (math.ceil(self.jobs / self.per_window) - 1) * self.window + duration


FULL = Setup(jobs=1000, window=6.0, rpm=120, tpm=4000)
QUICK = Setup(jobs=60, window=0.5, rpm=30, tpm=1000)


def prompt(i: int) -> str:
    return f"Write document number {i:05d} of the benchmark batch."


def input_tokens() -> int:
    """What llmpipe estimates for a prompt (all prompts have the same length)."""
    return CostGuard().check([prompt(0)], OUTPUT_TOKENS)


REPLY = Reply(
    tuple(f"word{i} " for i in range(OUTPUT_TOKENS)),
    input_tokens=input_tokens(),
    output_tokens=OUTPUT_TOKENS,
)


@attrs.frozen
class Outcome:
    variant: str
    wall: float
    completed: int
    rate_limited: int
    requests: int
    duration: float
    peak_requests: int
    peak_tokens: int


@contextmanager
def emulator_thread(limits: RateLimits) -> Iterator[Emulator]:
    """An emulator served by ``trio.run`` in a thread for the duration of the block."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        stop = box["stop"] = trio.Event()
        async with open_emulator(REPLY, limits=limits) as emulator:
            box["emulator"] = emulator
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the emulator did not start")
    try:
        yield box["emulator"]
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(30)


def measure(variant: str, setup: Setup, run: Callable[[str], int]) -> Outcome:
    limits = RateLimits(setup.rpm, setup.tpm, setup.window)
    with emulator_thread(limits) as emulator:
        started = time.perf_counter()
        completed = run(emulator.openai_base_url)
        wall = time.perf_counter() - started
    counted = [r for r in emulator.requests if r.counted]
    durations = [r.ended_at - r.received_at for r in counted if r.ended_at is not None]
    peak_requests, peak_tokens = emulator.peak_usage()
    if completed != setup.jobs or len(counted) != setup.jobs:
        raise AssertionError(
            f"{variant}: {completed} of {setup.jobs} jobs completed, {len(counted)} answered"
        )
    if peak_requests > setup.rpm or peak_tokens > setup.tpm:
        raise AssertionError(f"{variant}: the emulator counted over its limits")
    return Outcome(
        variant,
        wall,
        completed,
        sum(r.rate_limited for r in emulator.requests),
        len(emulator.requests),
        statistics.median(durations),
        peak_requests,
        peak_tokens,
    )


# -- llmpipe -------------------------------------------------------------------------------------


class _Jobs:
    def __init__(self, n: int) -> None:
        self.n = n

    async def __aiter__(self) -> Any:
        for i in range(self.n):
            yield Job(
                f"job-{i}",
                ({"role": "user", "content": prompt(i)},),
                f"job-{i}.md",
                model=MODEL,
                max_tokens=OUTPUT_TOKENS,
                line=i + 1,
            )


def _documents(out: Path) -> int:
    return sum(1 for p in out.glob("job-*.md") if p.stat().st_size)


def run_llmpipe(setup: Setup) -> Callable[[str], int]:
    def run(base_url: str) -> int:
        async def main() -> int:
            limiter = LocalLimiter(
                concurrency=CONCURRENCY,
                requests_per_minute=setup.rpm,
                tokens_per_minute=setup.tpm,
                window=setup.window,
            )
            with tempfile.TemporaryDirectory() as out:
                async with (
                    open_backend(
                        "openai", base_url=base_url, model=MODEL, retry=RetryPolicy(max_attempts=1)
                    ) as backend,
                    open_directory(out) as directory,
                ):
                    batch = Batch(
                        backend_producers(backend),
                        directory,
                        limiter,
                        BatchConfig(workers=CONCURRENCY),
                    )
                    stats = await batch.run(_Jobs(setup.jobs), total=setup.jobs)
                    documents = await trio.to_thread.run_sync(_documents, Path(out))
                    if stats.failed or documents != stats.done:
                        raise AssertionError(f"llmpipe: {stats}, {documents} documents")
                    return stats.done

        return trio.run(main)

    return run


# -- the asyncio script users write ----------------------------------------------------------------


def run_asyncio_script(setup: Setup) -> Callable[[str], int]:
    def run(base_url: str) -> int:
        import openai

        async def main() -> int:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="emulated", max_retries=0)
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> str:
                async with semaphore:
                    while True:
                        try:
                            stream = await client.chat.completions.create(
                                model=MODEL,
                                messages=[{"role": "user", "content": prompt(i)}],
                                max_tokens=OUTPUT_TOKENS,
                                stream=True,
                            )
                            parts = [
                                chunk.choices[0].delta.content or ""
                                async for chunk in stream
                                if chunk.choices
                            ]
                            return "".join(parts)
                        except openai.RateLimitError as exc:
                            retry_after = exc.response.headers.get("retry-after")
                            await asyncio.sleep(float(retry_after) if retry_after else 1.0)

            try:
                texts = await asyncio.gather(*(one(i) for i in range(setup.jobs)))
            finally:
                await client.close()
            return sum(1 for text in texts if text)

        return asyncio.run(main())

    return run


# -- report --------------------------------------------------------------------------------------


COLUMNS = [
    "variant",
    ">wall time",
    ">x bound",
    ">x llmpipe",
    ">429s",
    ">requests",
    ">peak requests / tokens in a window",
]


def rows(setup: Setup, outcomes: list[Outcome]) -> list[list[str]]:
    bound = setup.bound(outcomes[0].duration)
    return [
        [
            o.variant,
            f"{o.wall:.2f} s",
            f"{o.wall / bound:.3f}",
            f"{o.wall / outcomes[0].wall:.3f}",
            f"{o.rate_limited}",
            f"{o.requests}",
            f"{o.peak_requests}/{setup.rpm} · {o.peak_tokens}/{setup.tpm}",
        ]
        for o in outcomes
    ]


def setup_line(setup: Setup, duration: float) -> str:
    return (
        f"{setup.jobs} jobs of {setup.tokens_per_job} tokens; limits {setup.rpm} requests and "
        f"{setup.tpm} tokens per {setup.window:g}-s window (a scaled minute) → "
        f"{setup.per_window} jobs per window; bound = ({math.ceil(setup.jobs / setup.per_window)}"
        f" - 1) x {setup.window:g} s + {duration * 1000:.1f} ms (median request) = "
        f"{setup.bound(duration):.2f} s"
    )


def render(setup: Setup, outcomes: list[Outcome]) -> str:
    table = markdown_table(COLUMNS, rows(setup, outcomes))
    return setup_line(setup, outcomes[0].duration) + "\n\n" + table


def verdict(setup: Setup, outcomes: list[Outcome]) -> str:
    llmpipe, script = outcomes
    ratio = llmpipe.wall / setup.bound(llmpipe.duration)
    met = "**met**" if ratio <= GOAL_RATIO and llmpipe.rate_limited == 0 else "**not met**"
    return (
        f"Goal (within {GOAL_RATIO:g}x the bound, no 429s): {met} by llmpipe ({ratio:.3f}x, "
        f"{llmpipe.rate_limited} 429s); the asyncio script took {script.wall / llmpipe.wall:.3f}x "
        f"llmpipe's time with {script.rate_limited} 429s ({script.requests} requests for "
        f"{setup.jobs} jobs)."
    )


def summary(setup: Setup, outcomes: list[Outcome], args: argparse.Namespace) -> Summary:
    return Summary(
        name="batch",
        title="Batch: 1,000 jobs inside rate limits",
        claim=(
            "1,000 jobs inside a requests- and a tokens-per-minute limit (the provider emulator "
            "refuses past them with 429 and an exact `retry-after`): `sinks.batch.Batch` against "
            "the bound the limits allow and against the script users write (`asyncio.gather` + "
            "`asyncio.Semaphore` + retry on 429, `openai.AsyncOpenAI`). Goal: within "
            f"{GOAL_RATIO:g}x the bound, no 429s."
        ),
        columns=COLUMNS,
        rows=rows(setup, outcomes),
        notes=[
            verdict(setup, outcomes),
            setup_line(setup, outcomes[0].duration) + ".",
            "The window is scaled down from 60 s to "
            f"{setup.window:g} s, so a request's duration and the per-window overhead weigh "
            f"{60 / setup.window:g} times more than against real per-minute limits; the "
            "emulator's exact `retry-after` is the best case for the script.",
        ],
        detail=RESULTS.name,
        versions=versions("trio", "openai", "httpx"),
        quick=args.quick,
    )


def write_results(setup: Setup, outcomes: list[Outcome], load_before: str) -> None:
    llmpipe, script = outcomes
    bound = setup.bound(llmpipe.duration)
    text = f"""# Batch: 1,000 jobs inside rate limits

Written by `{command()}` (load average before: {load_before}, after: {load_average()}).
What is measured and how: the docstring of `benchmarks/bench_batch.py`.

{render(setup, outcomes)}

* llmpipe's batch runner took {llmpipe.wall / bound:.3f}x the bound the limits allow (goal:
  within {GOAL_RATIO:g}x) with {llmpipe.rate_limited} 429s. Its limiter counts a request until
  one window after it *ended* (so no window on the provider's side can see more than the
  limits, whenever the provider counts it): each window costs a request's duration and the
  scheduling on top.
* The asyncio script took {script.wall / llmpipe.wall:.3f}x llmpipe's time and provoked
  {script.rate_limited} 429s ({script.requests} requests for {setup.jobs} jobs): it sends as
  fast as its semaphore lets it, is refused past the limits, and every refused coroutine
  sleeps the `retry-after` the emulator computed exactly (when the request would fit). A real
  provider's `retry-after` is coarser and its 429s count against some quotas; the emulator's is
  the best case for the script.

Caveat: the window is 6 s, not 60 s, so a request's duration and the per-window overhead weigh
ten times more than they would against real per-minute limits.
"""
    RESULTS.write_text(text, encoding="utf-8")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_harness_arguments(parser, "benchmarks/BATCH.md (--quick: 60 jobs, 0.5-s window)")
    args = parser.parse_args(None if argv is None else list(argv))
    setup = QUICK if args.quick else FULL
    os.environ.setdefault("OPENAI_API_KEY", "emulated")
    load_before = load_average()
    outcomes = [
        measure("llmpipe", setup, run_llmpipe(setup)),
        measure("asyncio script", setup, run_asyncio_script(setup)),
    ]
    for o in outcomes:
        print(f"checked: {o.variant}: all {o.completed} jobs done", file=sys.stderr)
    print(render(setup, outcomes))
    if args.write and not args.quick:
        write_results(setup, outcomes, load_before)
        print(f"\nwrote {RESULTS}")
    summary(setup, outcomes, args).save(args.summary, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
