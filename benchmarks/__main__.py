"""Run every benchmark; ``--write`` regenerates ``benchmarks/RESULTS.md`` and the plots.

    .venv/bin/python -m benchmarks                  # every benchmark, full size; prints tables
    .venv/bin/python -m benchmarks --quick          # each one briefly: a smoke test (the tests)
    .venv/bin/python -m benchmarks --only sse       # one (repeat --only for more)
    .venv/bin/python -m benchmarks --write          # ... and rewrite RESULTS.md and the plots

Each benchmark is a script (``benchmarks/bench_*.py``) run in its own process, one at a time
(``--quick`` runs two at a time: nothing is timed there). It hands back a summary (JSON, see
``_benchlib.Summary``); with ``--write`` the summary is kept in ``benchmarks/results/NAME.json``
and ``RESULTS.md`` is rebuilt from every kept summary, so ``--write --only NAME`` refreshes one
section and leaves the others as they were measured (each section says its own command, machine,
load and date). Plots (PNG, matplotlib: the ``bench`` extra) are written beside ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks._benchlib import (
    HERE,
    ROOT,
    Summary,
    command,
    load_average,
    machine,
    markdown_table,
)

RESULTS = HERE / "RESULTS.md"
KEPT = HERE / "results"


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    minutes: float  # a full run on the 2-core reference machine, quiet
    quick_args: tuple[str, ...] = ("--quick",)
    full_args: tuple[str, ...] = ()


#: Minutes of each full run on the quiet 2-core machine, from the last runs' ``seconds`` (in
#: ``results/NAME.json``; a loaded machine takes longer); together under ``BUDGET_MINUTES``
#: (the tests check it). The capacity sweep's is an estimate that dominates the total.
BENCHMARKS = (
    # 100,000 tokens a run, not the script's 200,000: per-token figures, half the time.
    Bench("pipeline", "bench_pipeline.py", 2.2, full_args=("--tokens", "100000")),
    Bench("producers", "bench_producers.py", 0.4),
    # 4 servers, N = 100..400 by 50 until each fails once, 2 interleaved repeats: ~34 s a run
    # (the warm-up reads 5 tokens): 26 runs took 15.8 min on 2026-12-04; 32 would take ~18
    # (56 at most: ~32).
    Bench("capacity", "bench_capacity.py", 18.0),
    # Two servers at once on one core, N = 50 and 75 each, 5 repeats: ~35 s a repeat.
    Bench("cpu-pair", "cpu_pair.py", 6.0),
    # CPU time: the wall time of this one-process loop follows the machine's other load.
    Bench("stream-path", "bench_stream_path.py", 0.2, full_args=("--cpu",)),
    Bench("speech", "bench_speech.py", 0.1),
    Bench("batch", "bench_batch.py", 1.8),
    Bench("memory", "bench_memory.py", 1.0),
    Bench("store-memory", "bench_store_memory.py", 0.4),
    Bench("cancellation", "bench_cancel.py", 1.8),
    Bench("sentences", "bench_sentences.py", 0.3),
    Bench("sse", "bench_sse.py", 0.5),
    Bench("soak", "soak.py", 1.1, full_args=("--streams", "16", "--minutes", "1")),
    Bench("local-threads", "bench_local_threads.py", 0.2),
    Bench("redis-ops", "bench_redis_ops.py", 0.5),
)
BUDGET_MINUTES = 40.0  # issue 12: the whole --write on the 2-core machine
BY_NAME = {b.name: b for b in BENCHMARKS}


@dataclass
class Outcome:
    bench: Bench
    code: int
    seconds: float
    output: str
    summary: Summary | None


def run_one(bench: Bench, args: argparse.Namespace, capture: bool) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = Path(tmp) / "summary.json"
        mode = list(bench.quick_args) if args.quick else list(bench.full_args)
        mode += ["--write"] if args.write else []
        argv = [sys.executable, f"benchmarks/{bench.script}", *mode]
        argv += ["--summary", str(summary_path)]
        print(f"[{bench.name}] {' '.join(argv[1:-2])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        proc = subprocess.run(
            argv, cwd=ROOT, capture_output=capture, text=True, check=False, timeout=args.timeout
        )
        seconds = time.perf_counter() - start
        output = (proc.stdout or "") + (proc.stderr or "")
        summary = Summary.read(summary_path) if summary_path.exists() else None
    if summary is not None:
        summary.seconds = seconds
        summary.harness = command()
    return Outcome(bench, proc.returncode, seconds, output, summary)


def section(bench: Bench, summary: Summary | None) -> str:
    if summary is None:
        return (
            f"## {bench.name}\n\nNot yet measured through the harness: "
            f"`.venv/bin/python -m benchmarks --write --only {bench.name}`.\n"
        )
    parts = [
        f"## {summary.title}",
        textwrap.fill(summary.claim, 96),
        markdown_table(summary.columns, summary.rows),
    ]
    if summary.notes:
        parts.append("\n".join(f"* {note}" for note in summary.notes))
    parts += [f"![{summary.title}: {plot}]({plot})" for plot in summary.plots]
    if summary.detail:
        parts.append(f"Details, method and discussion: [{summary.detail}]({summary.detail}).")
    libs = ", ".join(f"{k} {v}" for k, v in summary.versions.items())
    took = f" in {summary.seconds:.0f} s" if summary.seconds else ""
    via = f" (run by `{summary.harness}`)" if summary.harness else ""
    parts.append(
        f"<sub>Measured {summary.date}{took} with `{summary.command}`{via} on "
        f"{summary.machine}, load average {summary.load} at the end"
        + (f"; {libs}" if libs else "")
        + ".</sub>"
    )
    return "\n\n".join(parts) + "\n"


def write_index() -> None:
    kept = {b.name: KEPT / f"{b.name}.json" for b in BENCHMARKS}
    summaries = {n: Summary.read(p) if p.exists() else None for n, p in kept.items()}
    index = [
        [
            f"[{(s.title if s else b.name)}](#{anchor(s.title if s else b.name)})",
            f"`--only {b.name}`",
            f"~{b.minutes:g} min",
            took(s),
            s.date if s else "not yet",
        ]
        for b in BENCHMARKS
        for s in [summaries[b.name]]
    ]
    total = sum(b.minutes for b in BENCHMARKS)
    head = f"""# Benchmark results

Every claim beside what users would otherwise pick, measured in the same run. Regenerate all
of it (about {total:.0f} minutes on a quiet 2-core machine: the index below) with

```
.venv/bin/python -m benchmarks --write
```

or one section with `--only NAME`; each section gives the exact command, machine, load and date
of its own last run. Install the plotting and baseline libraries first:
`.venv/bin/pip install -e '.[dev,bench]'`. What each benchmark does and why: the docstring of
its script (`benchmarks/bench_*.py`). Timing is never asserted; the test suite runs
`python -m benchmarks --quick` for correctness only. Compare ratios from one run, not absolute
figures across runs: the machine is shared.

{markdown_table(["benchmark", "run alone", ">full run", ">last run took", "measured"], index)}

`full run`: the harness's estimate for a full `--write` of that section (together
{total:.1f} minutes, under the {BUDGET_MINUTES:g} the harness is held to); `last run took`: the
kept section's own run (a section transcribed from before the harness says so).
"""
    body = [section(b, summaries[b.name]) for b in BENCHMARKS]
    RESULTS.write_text(head + "\n" + "\n".join(body), encoding="utf-8")


def took(summary: Summary | None) -> str:
    """How long the kept summary's run took, as the index shows it."""
    if summary is None or not summary.seconds:
        return ""
    return f"{summary.seconds / 60:.1f} min"


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="each benchmark briefly; no timing")
    parser.add_argument("--write", action="store_true", help="rewrite RESULTS.md and the plots")
    parser.add_argument(
        "--only", action="append", choices=list(BY_NAME), metavar="NAME",
        help=f"run this benchmark only (repeatable): {', '.join(BY_NAME)}",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, help="benchmarks at once (default: 2 quick, else 1)")
    parser.add_argument("--timeout", type=float, default=3600, help="per benchmark, seconds")
    args = parser.parse_args(argv)
    if args.quick and args.write:
        parser.error("--quick never writes")
    chosen = [BY_NAME[n] for n in args.only] if args.only else list(BENCHMARKS)
    jobs = args.jobs or (2 if args.quick else 1)
    start = time.perf_counter()
    print(f"{machine()}; load average {load_average()}", file=sys.stderr)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(lambda b: run_one(b, args, capture=jobs > 1), chosen))
    failed = []
    for o in outcomes:
        if jobs > 1:
            print(o.output)
        status = "ok" if o.code == 0 and o.summary is not None else f"FAILED (exit {o.code})"
        print(f"[{o.bench.name}] {status} in {o.seconds:.1f} s", file=sys.stderr)
        if status != "ok":
            failed.append(o.bench.name)
        elif args.write and o.summary is not None:
            KEPT.mkdir(exist_ok=True)
            o.summary.save(KEPT / f"{o.bench.name}.json", echo=False)
    if args.write:
        write_index()
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    print(f"{len(outcomes)} benchmarks in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
