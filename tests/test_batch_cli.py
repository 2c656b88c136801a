"""``llmpipe batch`` as a user runs it: real subprocesses, the emulator as the provider.

The kill test: ``kill -9`` of a batch midway, then the same command again; every document is
there once and whole, and no job recorded done before the kill was sent again (the emulator's
request log, ``llmpipe emulate --log``, says what was sent).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_examples_and_cli import emulator_process

ROOT = Path(__file__).resolve().parent.parent
TEXT = "One two three four five six seven eight nine ten."
ENV = {**os.environ, "OPENAI_API_KEY": "sk-test-key-not-real"}


@contextmanager
def emulator(*extra: str) -> Iterator[str]:
    """``llmpipe emulate`` answering :data:`TEXT`, for the block; yields its OpenAI base URL."""
    with emulator_process("--text", TEXT, *extra) as base:
        yield base + "/v1"


def batch_command(jobs: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sinks.cli", "batch", str(jobs), "--out", str(out),
        "--provider", "openai", "--base-url", base_url, "--model", "emulated-gpt", *extra,
    ]  # fmt: skip


def complete_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def write_jobs(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"j{i}", "prompt": f"Job {i}"}) + "\n" for i in range(n))
    )
    return path


def job_of(line: dict[str, Any]) -> str:
    return "j" + line["body"]["messages"][-1]["content"].split()[-1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_midway_then_the_same_command_again(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 40)
    out, log = tmp_path / "out", tmp_path / "requests.jsonl"
    with emulator("--tokens-per-second", "40", "--log", str(log)) as base_url:
        command = batch_command(jobs, out, base_url, "--concurrency", "4")
        proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(complete_lines(out / "results.jsonl")) < 8:
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        done_before = {line["custom_id"] for line in complete_lines(out / "results.jsonl")}
        assert 8 <= len(done_before) < 40
        again = subprocess.run(
            command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60, check=False
        )
        assert again.returncode == 0, again.stderr
        assert f"{len(done_before)} already done" in again.stdout
    ids = [f"j{i}" for i in range(40)]
    results = [line["custom_id"] for line in complete_lines(out / "results.jsonl")]
    assert sorted(results) == sorted(ids)  # each job recorded once
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{i}.md" for i in ids] + ["errors.jsonl", "results.jsonl"]
    )  # every document, once; no temporary file left
    for i in ids:
        assert (out / f"{i}.md").read_text() == TEXT  # none truncated
    sent = Counter(job_of(line) for line in complete_lines(log))
    assert set(sent) == set(ids)
    for i in done_before:
        assert sent[i] == 1, i  # never sent again once recorded done


def test_json_progress_and_limits(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    with jobs.open("a") as f:
        f.write("{not json\n")
    out = tmp_path / "out"
    # The provider answers the first two requests with a 429 asking for 0.2 s.
    with emulator("--tokens-per-second", "0", "--fault", "status:429:0.2:2") as base_url:
        command = batch_command(jobs, out, base_url, "--concurrency", "2", "--rpm", "600")
        result = subprocess.run(
            [*command, "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1, result.stderr  # the invalid line
    events = [json.loads(line) for line in result.stdout.splitlines()]
    types = Counter(e["type"] for e in events)
    assert types["job_done"] == 6
    assert types["rate_limited"] == 2
    assert types["line_skipped"] == 1
    assert events[-1]["type"] == "batch_ended"
    stats = events[-1]["statistics"]
    assert (stats["done"], stats["invalid"], stats["rate_limited"]) == (6, 1, 2)
    assert stats["limiter"]["requests_per_minute"] == 600
    assert result.stderr == ""  # not a terminal, --json: no progress display


def test_quiet_when_not_a_terminal_and_a_summary_at_the_end(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3)
    command = [
        sys.executable, "-m", "sinks.cli", "batch", str(jobs), "--out", str(tmp_path / "o"),
        "--scripted", "Hi there.", "--rate", "0",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("3 done, 0 failed, 0 already done, 0 invalid lines;")


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sinks.cli", "batch", str(tmp_path / "none.jsonl"), "--out", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no such jobs file" in result.stderr


def test_progress_display_on_a_terminal(tmp_path: Path) -> None:
    """Standard error a terminal (a pty): rich draws the bar, the counts, tokens per second
    and requests per minute against --rpm; the summary still goes to standard output."""
    import pty

    jobs = write_jobs(tmp_path / "jobs.jsonl", 3)
    command = [
        sys.executable, "-m", "sinks.cli", "batch", str(jobs), "--out", str(tmp_path / "o"),
        "--scripted", "Hi there.", "--rate", "0", "--rpm", "600",
    ]  # fmt: skip
    master, slave = pty.openpty()
    env = {**ENV, "COLUMNS": "160", "TERM": "xterm-256color"}
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave, text=True
    ) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        assert proc.wait(timeout=60) == 0
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert "batch" in shown
    assert "3/3" in shown
    assert "done 3 failed 0 running 0" in shown
    assert "tok/s" in shown
    assert "/600 req/min" in shown
    assert stdout.startswith("3 done, 0 failed")
