"""What the benchmark scripts share: the load average and the command line they report.

Imported by the scripts as a sibling module (they run as ``benchmarks/bench_*.py``, so this
folder is first on ``sys.path``).
"""

from __future__ import annotations

import os
import shlex
import sys

__all__ = ["command", "load_average"]


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``"a / b / c"`` (``"n/a"`` where unavailable)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def command() -> str:
    """The command that is running, as a user would type it from the repository root."""
    exe = sys.executable
    rel = os.path.relpath(exe)
    if not rel.startswith(".."):
        exe = rel
    return " ".join([shlex.quote(exe), *map(shlex.quote, sys.argv)])
