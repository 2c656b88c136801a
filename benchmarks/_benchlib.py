"""What the benchmarks share: machine and versions, interleaved medians, the summary each one
hands to the harness, and plots.

Imported by the scripts as a sibling module (they run as ``benchmarks/bench_*.py``, so this
folder is first on ``sys.path``; ``python -m benchmarks`` runs each script that way, in its own
process) and by the harness as ``benchmarks._benchlib``.

The harness protocol: the harness runs ``benchmarks/bench_x.py [--quick | --write] --summary
PATH``; the script measures, writes its detailed file and its plots when ``--write`` is given,
and always writes a :class:`Summary` (JSON) to ``PATH``, which the harness turns into a section
of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "HERE",
    "ROOT",
    "Proc",
    "Summary",
    "add_harness_arguments",
    "available",
    "command",
    "cpu_seconds",
    "free_port",
    "interleaved",
    "load_average",
    "machine",
    "markdown_table",
    "median",
    "pyplot",
    "read_line",
    "versions",
    "wait_listening",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
T = TypeVar("T")


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``"a / b / c"`` (``"n/a"`` where unavailable)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def command(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it from the repository root
    (``--summary PATH``, the harness's private channel, left out)."""
    exe = sys.executable
    rel = os.path.relpath(exe)
    if not rel.startswith(".."):
        exe = rel
    args = list(sys.argv if argv is None else argv)
    if "--summary" in args:
        i = args.index("--summary")
        del args[i : i + 2]
    if args and args[0].endswith(os.path.join("benchmarks", "__main__.py")):
        args[0:1] = ["-m", "benchmarks"]
    elif args and os.path.isabs(args[0]):
        rel0 = os.path.relpath(args[0])
        args[0] = rel0 if not rel0.startswith("..") else args[0]
    return " ".join([shlex.quote(exe), *map(shlex.quote, args)])


def machine() -> str:
    """OS, architecture, CPUs and Python, in one line."""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def versions(*distributions: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"absent"`` for a missing one)."""
    out: dict[str, str] = {}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server process the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, timeout: float = 30) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def read_line(stream: object, pattern: bytes, timeout: float = 30) -> re.Match[bytes]:
    """The match of ``pattern`` in the first line of ``stream`` (a process's pipe) it matches;
    ``RuntimeError`` when the stream ends first."""
    deadline = time.monotonic() + timeout
    assert hasattr(stream, "readline")
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        m = re.search(pattern, line)
        if m:
            return m
    raise RuntimeError(f"the process did not report {pattern.decode()!r}")


@dataclass
class Proc:
    """A process a benchmark started, and its URL. What it writes to its pipe (stderr, else
    stdout) is kept in ``log`` by a thread: a full pipe would block the process."""

    popen: subprocess.Popen[bytes]
    url: str
    log: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        pipe = self.popen.stderr or self.popen.stdout
        if pipe is not None:
            threading.Thread(target=lambda: self.log.extend(pipe), daemon=True).start()

    @classmethod
    def announced(cls, popen: subprocess.Popen[bytes], pattern: bytes) -> Proc:
        """The process, its URL the first group of ``pattern`` in a line it writes to its pipe
        (:func:`read_line`)."""
        return cls(popen, read_line(popen.stderr or popen.stdout, pattern).group(1).decode())

    def stop(self, sig: int = signal.SIGINT, timeout: float = 8) -> None:
        """Send ``sig`` unless the process has ended; kill it if it runs ``timeout`` s more."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def interleaved(
    variants: Mapping[str, Callable[[], T]], repeat: int, progress: bool = False
) -> dict[str, list[T]]:
    """Run every variant ``repeat`` times, interleaved (round ``r`` starts at variant ``r``), so
    that a change in the machine's load hits every variant alike; the results by variant."""
    names = list(variants)
    out: dict[str, list[T]] = {name: [] for name in names}
    for r in range(repeat):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            out[name].append(variants[name]())
            if progress:
                print(f"  round {r + 1}/{repeat}: {name}", file=sys.stderr, flush=True)
    return out


def available(makers: Mapping[str, Callable[[], T | str]]) -> tuple[dict[str, T], dict[str, str]]:
    """The baselines that could be built, and why each other one could not: each maker returns
    the baseline, or a string saying why not (an optional library that is not installed)."""
    found: dict[str, T] = {}
    missing: dict[str, str] = {}
    for name, make in makers.items():
        made = make()
        if isinstance(made, str):
            missing[name] = made
        else:
            found[name] = made
    return found, missing


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub table; columns whose name starts with ``>`` are right-aligned (the ``>`` is
    dropped)."""
    heads = [c.removeprefix(">") for c in columns]
    align = ["---:" if c.startswith(">") else "---" for c in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Summary:
    """One benchmark's section of ``RESULTS.md``: what it measures against what, a table (its
    columns as in :func:`markdown_table`), notes, the detailed file and plots beside it."""

    name: str
    title: str
    claim: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    detail: str | None = None
    plots: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    quick: bool = False
    machine: str = field(default_factory=machine)
    load: str = field(default_factory=load_average)
    command: str = field(default_factory=command)
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())
    seconds: float = 0.0
    harness: str = ""  # the harness's command line, when it ran the script

    def save(self, path: str | Path | None, echo: bool = True) -> None:
        """Write the summary as JSON to ``path`` (nothing when ``path`` is ``None``); with
        ``echo``, also print the table, for a run by hand."""
        if echo:
            print(f"\n## {self.title}\n\n{markdown_table(self.columns, self.rows)}")
            for note in self.notes:
                print(f"* {note}")
        if path is not None:
            Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Summary:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return cls(**data)


def add_harness_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--quick``, ``--write`` (``what`` says what it rewrites) and ``--summary PATH``."""
    parser.add_argument("--quick", action="store_true", help="smoke test: small, never writes")
    parser.add_argument("--write", action="store_true", help=f"rewrite {what}")
    parser.add_argument("--summary", help="write the harness's summary (JSON) to this file")


@contextmanager
def pyplot(path: Path) -> Iterator[Any]:
    """matplotlib's ``pyplot`` (Agg) for one figure, saved to ``path`` at the end; yields
    ``None`` when matplotlib is not installed (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no {path.name}", file=sys.stderr)
        yield None
        return
    plt.figure(figsize=(7, 4), dpi=100)
    try:
        yield plt
        plt.grid(alpha=0.3)
        plt.tight_layout()
        plt.savefig(path, metadata={"Software": None})
    finally:
        plt.close("all")
