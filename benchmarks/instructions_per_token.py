"""Machine instructions per relayed token, llmpipe against floor-httpx: counted, not timed.

CPU time per token on this shared machine moves by 15 % or more between two runs of the same
server, and by about ±3 % even side by side (``cpu_pair.py``); Python calls per token
(``calls_per_token.py``) are exact but weigh a JSON parse like an attribute read. This counts
what the CPU executes: each server runs under valgrind's callgrind, which counts the
instructions the process executes in user space (its own and the C libraries', not the
kernel's), with counting switched on after start-up. Counted between two points: after one
warm-up stream (imports, caches), over ``--streams`` streams of ``--tokens`` tokens each from
the stamped upstream of ``bench_capacity.py`` at ``--rate`` tokens/s (one event per upstream
read, as under load), one stream at a time. Two runs of the same server agree within about
0.3 %, so a change of 1 % can be judged in one run. Instructions are not time (a cache miss
costs far more than an instruction), so a ratio of instructions is a floor for the ratio of
CPU time, not the same figure: ``cpu_pair.py`` measures that.

    .venv/bin/python benchmarks/instructions_per_token.py
    .venv/bin/python benchmarks/instructions_per_token.py --servers llmpipe,llmpipe@../base

``SERVER@DIR`` runs that server from the checkout in ``DIR``, as in ``cpu_pair.py``. Needs
valgrind (``apt install valgrind``); a server under it runs about 50 times slower, hence the
low rate.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import command
from bench_capacity import Load, start_server, start_upstream, streams_in_turn


def count(server: str, upstream: str, streams: int, tokens: int, rate: float, workdir: str) -> int:
    """Instructions ``server`` executed over ``streams`` streams (after a warm-up one)."""
    out = Path(workdir) / f"server-{len(list(Path(workdir).iterdir()))}"
    valgrind = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", sys.executable)  # fmt: skip
    srv = start_server(server, upstream, None, python=valgrind)

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(srv.popen.pid)], check=True,
                       capture_output=True, timeout=60)  # fmt: skip

    try:
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        load = Load(host, int(port), "/v1/stream", True, rate, start=0)  # every stream kept
        control("--instr=on")
        asyncio.run(streams_in_turn(load, 1))
        control("--zero")
        asyncio.run(streams_in_turn(load, streams))
        control("--dump")
        got = sum(s.tokens for s in load.streams)
        if got < (streams + 1) * tokens:
            raise SystemExit(f"{server}: fewer tokens than asked ({got})")
    finally:
        srv.popen.send_signal(signal.SIGINT)
        try:
            srv.popen.wait(30)
        except subprocess.TimeoutExpired:
            srv.popen.kill()
    deadline = time.monotonic() + 30
    dump = Path(f"{out}.1")
    while not dump.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"{server}: no totals in {dump}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--servers", default="llmpipe,floor-httpx", help="comma-separated")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=300, help="per stream")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s of the upstream")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (hint: apt install valgrind)")
    servers = args.servers.split(",")
    up = start_upstream("stamped", args.tokens, args.rate, None)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            counts = {
                s: count(s, up.url, args.streams, args.tokens, args.rate, workdir) for s in servers
            }
    finally:
        up.popen.kill()
    total = args.streams * args.tokens
    print(
        f"`{command()}`: {args.streams} streams of {args.tokens} tokens at {args.rate:g} "
        "tokens/s, after a warm-up one; user-space instructions (valgrind callgrind)"
    )
    print()
    first = counts[servers[0]]
    print(f"| server | instructions per token (stream set-up included) | {servers[0]} / server |")
    print("|---|---:|---:|")
    for server in servers:
        print(f"| {server} | {counts[server] / total:,.0f} | {first / counts[server]:.3f} |")


if __name__ == "__main__":
    main()
