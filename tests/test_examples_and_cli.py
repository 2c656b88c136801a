"""Every example runs, and the command line works (as subprocesses, like a user would)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path) -> None:
    result = run(str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_cli_stream_scripted_to_terminal_file_and_event_log(tmp_path: Path) -> None:
    out, events = tmp_path / "a.txt", tmp_path / "e.jsonl"
    result = run(
        "-m", "pipeline.cli", "stream", "--scripted", "Hello big world.", "--rate", "0",
        "--out", str(out), "--events", str(events),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello big world.\n"
    assert out.read_text() == "Hello big world."
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert "".join(e["text"] for e in lines if e["type"] == "text") == "Hello big world."
    assert lines[-1]["type"] == "done"


def test_cli_rejects_bad_options() -> None:
    result = run("-m", "pipeline.cli", "stream", "--rate", "-1")
    assert result.returncode != 0
    assert "--rate" in result.stderr


def test_benchmark_quick_smoke() -> None:
    # Correctness only (each variant must deliver exactly the produced text); no timing.
    result = run("benchmarks/bench_pipeline.py", "--quick", timeout=120)
    assert result.returncode == 0, result.stderr
