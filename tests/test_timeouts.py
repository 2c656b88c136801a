"""A test that times out fails alone: the trio watchdog of ``conftest.py`` cancels it through
trio, and later tests run as usual (pytest-timeout's signal, raised inside trio's scheduler,
left every later trio test failing with "Attempted to call run() from inside a run()")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STUCK_THEN_FINE = """
import pytest
import trio


@pytest.mark.timeout(2)
async def test_stuck() -> None:
    await trio.sleep_forever()


async def test_after_it(autojump_clock: object) -> None:
    await trio.sleep(1000)


def test_a_sync_one_after_it() -> None:
    trio.run(trio.sleep, 0)
"""


def test_a_timeout_fails_only_its_own_test(tmp_path: Path) -> None:
    (tmp_path / "test_stuck.py").write_text(STUCK_THEN_FINE)
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
            "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
            str(tmp_path / "test_stuck.py"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])},
        check=False,
    )  # fmt: skip
    assert "1 failed, 2 passed" in result.stdout, result.stdout + result.stderr
    assert "Failed: timed out after 1.8 s (its timeout is 2 s)" in result.stdout, result.stdout
