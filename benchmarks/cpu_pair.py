"""CPU per relayed token of two servers measured side by side: the same load, in the same
window, on the same core.

``bench_capacity.py`` runs one server at a time. On this shared machine the CPU per token of
one server moves by up to 1.6x between two runs (``CAPACITY.md``), so the ratio of two servers
measured in two runs, even interleaved ones, is noisy. Here both servers run at once, pinned to
the same core, each relaying N streams of the stamped upstream of ``bench_capacity.py``, and
their CPU is read over the same window: whatever slows the machine in that window slows both.
Each repeat starts fresh processes (upstream and load generator on the other core); which
server is started and warmed first alternates. The delays are printed for context only: the
core is shared, so they are not a knee (``bench_capacity.py`` measures knees).

    .venv/bin/python benchmarks/cpu_pair.py                    # llmpipe / floor-httpx
    .venv/bin/python benchmarks/cpu_pair.py --write            # ... into CAPACITY.md
    .venv/bin/python benchmarks/cpu_pair.py --n 75 --repeat 7
    .venv/bin/python benchmarks/cpu_pair.py --servers llmpipe,llmpipe@../base   # a change: A/B

``SERVER@DIR`` runs that server from the checkout in ``DIR`` (its ``llmpipe``, with this
interpreter): two versions of llmpipe, side by side. ``--n`` is per server (the core carries
twice as many streams): the default 50 and 75 put 100 and 150 streams on the core, llmpipe's
knee on this machine being 150-200 alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import HERE, Summary, add_harness_arguments, command, versions
from bench_capacity import (
    CPU_GOAL,
    Load,
    RunResult,
    cpu_per_token,
    load,
    one_stream,
    start_server,
    start_upstream,
    write_results,
)

BEGIN, END = "<!-- cpu-pair:begin -->", "<!-- cpu-pair:end -->"


def one_repeat(args: argparse.Namespace, servers: Sequence[str], n: int) -> list[RunResult]:
    tokens = int(args.seconds * args.rate)
    up = start_upstream("stamped", tokens, args.rate, args.loadgen_core)
    procs = []
    try:
        for server in servers:
            procs.append(start_server(server, up.url, args.server_core))
        time.sleep(0.5)
        loads = []
        for proc in procs:
            host, port = proc.url.removeprefix("http://").rsplit(":", 1)
            warm = Load(host, int(port), "/v1/stream", True, args.rate, stop_after=5)
            asyncio.run(asyncio.wait_for(one_stream(warm), 60))
            loads.append(Load(host, int(port), "/v1/stream", True, args.rate))
        pids = [*(p.popen.pid for p in procs), up.popen.pid]
        wall, cpu = asyncio.run(load(loads, n, args.ramp, args.measure, pids))
        return [
            RunResult(
                server=server,
                n=n,
                seconds=wall,
                server_cpu=100 * c,
                upstream_cpu=100 * cpu[-2],
                loadgen_cpu=100 * cpu[-1],
                delays_ms=ld.delays,
                tokens_in_window=ld.in_window,
                streams=ld.streams,
                tokens_per_stream=tokens,
            )
            for server, ld, c in zip(servers, loads, cpu[:-2], strict=True)
        ]
    finally:
        for proc in procs:
            proc.stop()
        up.popen.kill()
        up.popen.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--servers", default="llmpipe,floor-httpx", help="two, comma-separated")
    parser.add_argument("--n", default="50,75", help="streams per server, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="repeats at each N")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each stream")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s per stream")
    parser.add_argument(
        "--ramp", type=float, help="users start over this long (default: --seconds)"
    )
    parser.add_argument("--measure", type=float, default=15.0, help="measurement window, s")
    parser.add_argument("--server-core", type=int, default=1)
    parser.add_argument("--loadgen-core", type=int, default=0)
    add_harness_arguments(parser, "CAPACITY.md's side-by-side section")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.seconds, args.ramp, args.measure, args.repeat = "4", 1.0, 0.5, 1.5, 1
        args.write = False
    if args.ramp is None:
        args.ramp = args.seconds
    servers = args.servers.split(",")
    if len(servers) != 2:
        raise SystemExit("--servers: give two servers")
    if (os.cpu_count() or 1) < 2:
        args.server_core = args.loadgen_core = None
    a, b = servers
    ns = [int(x) for x in args.n.split(",")]
    lines = [
        f"`{command()}`",
        "",
        f"Both servers at once on core {args.server_core}, N streams each of {args.seconds:g} s "
        f"at {args.rate:g} tokens/s, {args.measure:g} s window; {args.repeat} repeat(s) at "
        "each N, fresh processes each.",
        "",
        f"| N each | repeat | {a} µs/token | {b} µs/token | ratio | {a} p99 ms | {b} p99 ms "
        "| tokens in window |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    rows, notes = [], []
    failed = False
    for n in ns:
        ratios: list[float] = []
        cpu: dict[str, list[float]] = {a: [], b: []}
        for rep in range(args.repeat):
            order = servers if rep % 2 == 0 else servers[::-1]
            results = {r.server: r for r in one_repeat(args, order, n)}
            ra, rb = results[a], results[b]
            if not (ra.tokens_in_window and rb.tokens_in_window):
                failed = True
            ua, ub = cpu_per_token(ra), cpu_per_token(rb)
            ratio = ua / ub
            ratios.append(ratio)
            cpu[a].append(ua)
            cpu[b].append(ub)
            line = (
                f"| {n} | {rep + 1} | {ua:.0f} | {ub:.0f} | {ratio:.3f} "
                f"| {ra.pct(99):.1f} | {rb.pct(99):.1f} | {ra.tokens_in_window:,} / "
                f"{rb.tokens_in_window:,} |"
            )
            lines.append(line)
            print(line, flush=True)
        med = statistics.median(ratios)
        rows.append(
            [
                str(n),
                str(args.repeat),
                f"{statistics.median(cpu[a]):.0f}",
                f"{statistics.median(cpu[b]):.0f}",
                f"**{med:.3f}x**",
                f"{min(ratios):.3f}-{max(ratios):.3f}",
                f"{statistics.median(cpu[a]) / statistics.median(cpu[b]):.3f}x",
            ]
        )
        if (a, b) == ("llmpipe", "floor-httpx"):
            verdict = "met" if med <= CPU_GOAL else "not met"
            notes.append(
                f"N={n} each: median paired ratio {med:.3f}x (goal <= {CPU_GOAL}x: {verdict})"
            )
    columns = [">N streams each", ">repeats", f">{a} µs/token (median)",
               f">{b} µs/token (median)", ">median of the paired ratios", ">range",
               ">ratio of the medians"]  # fmt: skip
    print()
    for note in notes:
        print(f"* {note}")
    if failed:
        print("a server delivered no token in a window", file=sys.stderr)
        return 1
    if args.write:
        table = "\n".join(
            ["| " + " | ".join(c.lstrip(">") for c in columns) + " |",
             "|" + "---:|" * len(columns),
             *("| " + " | ".join(r) + " |" for r in rows)]
        )  # fmt: skip
        write_results(
            HERE / "CAPACITY.md",
            "\n".join([table, "", *(f"* {n}" for n in notes), "", *lines]),
            begin=BEGIN,
            end=END,
        )
    Summary(
        name="cpu-pair",
        title="CPU per token, side by side",
        claim=(
            f"Server CPU per relayed token of {a} against {b}, both serving N streams of "
            f"{args.seconds:g} s at {args.rate:g} tokens/s at once on the same core, their CPU "
            "read over the same window: a ratio the machine's changing speed moves far less "
            "than a ratio of two runs. The knee is not measured here (the core is shared): "
            "see `Streams per core`."
        ),
        columns=columns,
        rows=rows,
        notes=notes,
        detail="CAPACITY.md",
        versions=versions("trio", "hypercorn", "httpx", "openai"),
        quick=args.quick,
    ).save(args.summary, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
