"""The soak, one minute of it: concurrent streams with every fault at once, nothing lost.

``benchmarks/soak.py`` (its docstring says what it does) runs as a subprocess with a private
redis-server it kills and restarts; every stream's text is checked against the emulator's
script, and the process's tasks, file descriptors and RSS must come back to their baseline.
The longer run and its figures are in the README (Reliability).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_minute_soak_loses_nothing_and_leaks_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/soak.py", "--streams", "16", "--minutes", "1",
         "--redis-restart-every", "15", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )  # fmt: skip
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["bytes_lost"] == 0, report["failures"]
    assert report["hung"] == 0, report["failures"]
    assert report["leaks"] == [], report
    assert report["failure_count"] == 0, report["failures"]
    assert result.returncode == 0
    # It did soak: every scenario and every fault happened.
    assert report["streams"] > 100
    assert set(report["by_scenario"]) == {"live", "disconnect", "resume", "ws"}
    faults = report["faults_injected"]
    assert faults["upstream_reset"]
    assert faults["upstream_error_event"]
    assert faults["redis_restarts"] >= 2
    assert faults["client_disconnects"]
    assert faults["ws_interrupts"]
    assert report["bytes_checked"] > 50_000
