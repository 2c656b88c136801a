"""The Redis operations benchmark runs (``--quick``, as a subprocess): every stream of every run
delivers its whole text, and the operations it counts (Redis ``MONITOR``) are llmpipe's store
path: one ``append`` script per stored batch (at most one per token, each running one ``XADD``
per event), one ``create`` per stream, readers' ``XRANGE``/``XREAD``.

Correctness only: no timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def row(out: str, name: str) -> tuple[int, float, float]:
    m = re.search(rf"^\| {re.escape(name)} \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert m, (name, out)
    return int(m.group(1).replace(",", "")), float(m.group(2)), float(m.group(3))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_redis_ops_benchmark_quick_counts_the_store_path() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_redis_ops.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checked = re.findall(r"^checked: workers=(\d): all 8 streams delivered all 20 tokens$",
                         result.stderr, re.M)  # fmt: skip
    assert checked == ["1", "1", "2"], result.stderr  # the MONITOR run, then --workers 1,2
    out = result.stdout
    appends, _, per_token = row(out, "EVALSHA append (script)")
    assert 0 < per_token <= 1.0  # batches of one or more events: never more than one a token
    # Each event stored (20 tokens and the end, per stream) is one XADD inside a script.
    xadds, _, _ = row(out, "XADD")
    assert xadds == 8 * 21, out
    assert appends <= xadds
    workers = re.findall(r"^\| (\d) \| [\d.]+ \| [\d,]+ \| \d+%", out, re.M)
    assert workers == ["1", "2"], out  # a cost row per --workers value
    assert "wrote" not in out  # --quick never writes CAPACITY.md
