"""Tokens per second of the embedded local model by llama.cpp thread count, with the machine
idle and with one core busy elsewhere (a busy-loop process): which ``--threads`` holds up.

    .venv/bin/python benchmarks/bench_local_threads.py [--threads 1 2] [--tokens 30] [--runs 3]

Each run asks for ``--tokens`` tokens (temperature 0, so every run does the same work) and
times the whole answer; the busy loop is a child process that spins for as long as the runs
under load take, and is stopped after them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import httpx
import trio

from pipeline.producers._local import open_local_server

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
            rates.append(reply["usage"]["completion_tokens"] / seconds)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print("| threads | machine | tokens/s (median of runs) | runs |")
    print("|---|---|---|---|")
    for busy in (False, True):
        for threads in args.threads:
            spinner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
            try:
                rates = trio.run(tokens_per_second, threads, args.tokens, args.runs)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            runs = ", ".join(f"{r:.1f}" for r in rates)
            state = "one core busy" if busy else "idle"
            print(f"| {threads} | {state} | {statistics.median(rates):.1f} | {runs} |", flush=True)


if __name__ == "__main__":
    main()
