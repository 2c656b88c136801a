"""``python -m benchmarks --quick`` runs every benchmark briefly and each one checks itself.

Correctness only: no timing is asserted. Each benchmark raises when a variant lost or changed
the text it carried (or, for the speech benchmark, when an engine was not given every word in
order; for the batch benchmark, when a variant left a job undone or the emulator counted over
its limits) and hands the harness a summary; here every benchmark must report ``ok``, each
speech variant must say that it was checked or why it was skipped (Pipecat and LiveKit are
optional; the two llmpipe-side variants always run), both batch variants must have done every
job, and the local model must have answered (or be said missing: the ``local`` extra).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "benchmarks" / "data" / "speech_tokens.json"
SPEECH_VARIANTS = (
    "llmpipe speaker",
    "whole sentences",
    "Pipecat",
    "LiveKit (tokenizer)",
    "LiveKit (tokenizer + pacer)",
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_benchmark_runs_quick_and_checks_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    from benchmarks.__main__ import BENCHMARKS

    for bench in BENCHMARKS:
        assert re.search(rf"^\[{bench.name}\] ok in ", result.stderr, re.MULTILINE), bench.name
    # The speech benchmark: every variant spoke all the words of the first prompt, in order.
    out = result.stdout
    data = json.loads(TRACE.read_text(encoding="utf-8"))
    words = len("".join(s for _, s in data["prompts"][0]["tokens"]).split())
    checked = dict(
        re.findall(r"^checked: (.+) / prompt 0: the engine was given all (\d+) words, in order$",
                   out, re.MULTILINE)
    )  # fmt: skip
    skipped = set(re.findall(r"^skipped: (.+?): ", out, re.MULTILINE))
    for variant in SPEECH_VARIANTS[:2]:
        assert checked.get(variant) == str(words), (variant, out[-3000:])
    for variant in SPEECH_VARIANTS:
        assert (checked.get(variant) == str(words)) != (variant in skipped), variant
    # The batch benchmark: both variants did every job.
    done = dict(re.findall(r"^checked: (.+): all (\d+) jobs done$", out, re.MULTILINE))
    assert done == {"llmpipe": "60", "asyncio script": "60"}, out[-3000:]
    # The local model answered, with and without a core busy, or the extra is said missing.
    local = re.findall(r"^checked: 1 threads, (.+): 1 x 4 tokens$", out, re.M)
    missing = re.search(r"^skipped: local model: ", out, re.M)
    assert local == ["no busy loop", "one core busy"] or missing, out[-3000:]


def test_every_benchmark_has_a_results_section_and_the_whole_run_fits_its_budget() -> None:
    from benchmarks.__main__ import BENCHMARKS, BUDGET_MINUTES, RESULTS

    assert sum(b.minutes for b in BENCHMARKS) < BUDGET_MINUTES
    index = RESULTS.read_text(encoding="utf-8")
    for bench in BENCHMARKS:
        assert f"`--only {bench.name}`" in index, bench.name


@pytest.mark.timeout(180)
def test_instructions_per_token_counts_both_servers() -> None:
    """``benchmarks/instructions_per_token.py`` counts each server's instructions under valgrind
    (it exits non-zero when a stream fell short): both rows are there, each a plausible count
    (a relayed token costs hundreds of thousands of instructions: a few hundred Python calls)."""
    result = subprocess.run(
        [sys.executable, "benchmarks/instructions_per_token.py", "--streams", "1", "--tokens",
         "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = dict(re.findall(r"^\| (llmpipe|floor-httpx) \| ([\d,]+) \|", result.stdout, re.M))
    assert set(rows) == {"llmpipe", "floor-httpx"}, result.stdout
    counts = {k: int(v.replace(",", "")) for k, v in rows.items()}
    assert all(50_000 < v < 50_000_000 for v in counts.values()), counts


@pytest.mark.timeout(120)
def test_calls_per_token_counts_both_servers() -> None:
    """``benchmarks/calls_per_token.py`` counts each server's calls over whole streams (it
    exits non-zero when a stream fell short): both rows are there, llmpipe's own frames are in
    its table and not in the floor's."""
    result = subprocess.run(
        [sys.executable, "benchmarks/calls_per_token.py", "--streams", "1", "--tokens", "40",
         "--top", "60"],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = dict(re.findall(r"^\| (llmpipe|floor-httpx) \| ([\d.]+) \|$", result.stdout, re.M))
    assert set(rows) == {"llmpipe", "floor-httpx"}, result.stdout
    assert all(float(v) > 50 for v in rows.values()), rows  # a relayed token costs many calls
    own = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| `_run_producer \(pipeline", result.stdout, re.M)
    assert own is not None, result.stdout
    assert float(own.group(1)) > 0, result.stdout
    assert float(own.group(2)) == 0, result.stdout


@pytest.mark.timeout(150)
def test_calls_per_token_counts_bytecodes_too() -> None:
    """``--opcodes``: bytecodes per token, more than calls (every call executes several), with
    llmpipe's own per-token functions in its table only."""
    result = subprocess.run(
        [sys.executable, "benchmarks/calls_per_token.py", "--opcodes", "--streams", "1",
         "--tokens", "20", "--top", "80"],
        cwd=ROOT, capture_output=True, text=True, timeout=140, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = dict(re.findall(r"^\| (llmpipe|floor-httpx) \| ([\d.]+) \|$", result.stdout, re.M))
    assert set(rows) == {"llmpipe", "floor-httpx"}, result.stdout
    assert all(float(v) > 1000 for v in rows.values()), rows
    assert "bytecodes per token: llmpipe" in result.stdout
    own = re.search(r"^\| ([\d.]+) \| ([\d.]+) \| `_fan_out \(pipeline", result.stdout, re.M)
    assert own is not None, result.stdout
    assert float(own.group(1)) > 10, result.stdout
    assert float(own.group(2)) == 0, result.stdout


@pytest.mark.timeout(150)
def test_cpu_pair_measures_two_servers_in_one_window() -> None:
    """``benchmarks/cpu_pair.py`` runs two servers at once (the second one named as
    ``SERVER@DIR``, the form that compares two checkouts) and reports each one's CPU per token
    and their ratio for every repeat, and the median."""
    result = subprocess.run(
        [sys.executable, "benchmarks/cpu_pair.py", "--servers", f"llmpipe,floor-httpx@{ROOT}",
         "--n", "4", "--seconds", "1", "--ramp", "0.5", "--measure", "1.5", "--repeat", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=140, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = re.findall(r"^\| 4 \| (\d) \| (\d+) \| (\d+) \| ([\d.]+) \|", result.stdout, re.M)
    assert [r[0] for r in rows] == ["1", "2"], result.stdout
    for _, a, b, ratio in rows:
        assert int(a) > 0, result.stdout
        assert int(b) > 0, result.stdout
        assert abs(float(ratio) - int(a) / int(b)) < 0.02 * float(ratio) + 0.01, result.stdout
