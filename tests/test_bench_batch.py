"""The batch benchmark runs (``--quick``, as a subprocess) and both variants finish every job.

Correctness only: no timing is asserted. The script itself raises when a variant did not
complete every job, when the emulator answered a different number of requests than there are
jobs, or when any window held more than the emulator's limits.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_batch_benchmark_quick_every_job_done() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_batch.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    checked = dict(re.findall(r"^checked: (.+): all (\d+) jobs done$", result.stderr, re.M))
    assert checked == {"llmpipe": "60", "asyncio script": "60"}, result.stderr
    rows = re.findall(
        r"^\| (llmpipe|asyncio script) \| .* \| (\d+) \| (\d+) \|", result.stdout, re.M
    )
    assert [name for name, _, _ in rows] == ["llmpipe", "asyncio script"], result.stdout
    llmpipe_429s = rows[0][1]
    assert llmpipe_429s == "0"  # the limits configured in the runner are the provider's
    assert "wrote" not in result.stdout  # --quick never writes BATCH.md
