"""Python calls per relayed token, llmpipe against floor-httpx: counted, not timed.

CPU time per token on a shared machine moves by 15 % or more between two runs of the same
server (``CAPACITY.md``); the number of Python function calls a server makes per relayed token
does not, so a change to the per-token path can be judged by it in seconds. Each server runs
under a ``sys.setprofile`` hook that counts every call, and every resumption of a coroutine
(each frame of an ``await`` chain is resumed at every checkpoint below it: a deep chain costs at
each of hypercorn's two checkpoints per write). Counted between two snapshots: after one
warm-up stream (imports, caches), over ``--streams`` streams of ``--tokens`` tokens from the
stamped upstream of ``bench_capacity.py``, one at a time. Calls are not all equal (a JSON parse
is one call), so this is a guide to where the frames are, not to CPU time.

    .venv/bin/python benchmarks/calls_per_token.py                  # 3 streams of 400 tokens
    .venv/bin/python benchmarks/calls_per_token.py --top 40
    .venv/bin/python benchmarks/calls_per_token.py --opcodes --streams 2 --tokens 300

``--opcodes`` counts the bytecodes each function executes instead (a ``sys.settrace`` hook
with ``f_trace_opcodes``; each call or resumption counts one more): closer to the work done
than a count of calls, and as repeatable, but the server runs tens of times slower.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import ROOT, Proc, command
from bench_capacity import Load, start_server, start_upstream, streams_in_turn

SERVERS = ("llmpipe", "floor-httpx")
Counts = dict[str, int]  # "function (file)" -> calls


def _child(out: str, mode: str, argv: list[str]) -> None:
    """Run ``argv`` (``-m module args`` or ``script args``) counting calls (``mode``
    ``calls``) or bytecodes (``opcodes``); each SIGUSR1 writes the counts so far to ``out``.N
    (N = 1, 2, ...)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    snapshots = 0

    def on_call(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[code.co_filename, code.co_name] += 1

    def on_opcode(frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        counts[code.co_filename, code.co_name] += 1
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        return on_opcode

    def install(on: bool) -> None:
        if mode == "opcodes":
            sys.settrace(on_opcode if on else None)
        else:
            sys.setprofile(on_call if on else None)

    def snapshot(signum: int, frame: object) -> None:
        nonlocal snapshots
        install(False)  # the snapshot's own calls are not the server's
        snapshots += 1
        data = {f"{name} ({_short(path)})": n for (path, name), n in list(counts.items())}
        Path(f"{out}.{snapshots}").write_text(json.dumps(data))
        install(True)

    signal.signal(signal.SIGUSR1, snapshot)
    if argv[0] == "-m":  # as ``python -m``: the working directory first on the path
        sys.path.insert(0, os.getcwd())
        sys.argv = [argv[1], *argv[2:]]
        install(True)
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:  # as ``python script``: the script's folder first
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
        sys.argv = argv
        install(True)
        runpy.run_path(argv[0], run_name="__main__")


def _short(path: str) -> str:
    for marker in ("site-packages/", f"{ROOT}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


def count(
    server: str, upstream: str, streams: int, tokens: int, workdir: str, mode: str = "calls"
) -> Counts:
    """Calls (or bytecodes, ``mode="opcodes"``) ``server`` made over ``streams`` streams (after
    a warm-up one)."""
    out = os.path.join(workdir, server)
    python = (sys.executable, __file__, "_child", out, mode)
    srv: Proc = start_server(server, upstream, None, python=python)
    try:
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        load = Load(host, int(port), "/v1/stream", True, 1.0, start=0)  # every stream kept
        asyncio.run(streams_in_turn(load, 1))
        snaps = []
        for n in (0, streams):
            asyncio.run(streams_in_turn(load, n))
            srv.popen.send_signal(signal.SIGUSR1)
            path = Path(f"{out}.{len(snaps) + 1}")
            deadline = time.monotonic() + 30
            while not path.exists() or not path.stat().st_size:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{server}: no snapshot {path}")
                time.sleep(0.05)
            time.sleep(0.2)  # written whole (one write_text)
            snaps.append(json.loads(path.read_text()))
        if sum(s.tokens for s in load.streams) < streams * tokens:
            raise SystemExit(f"{server}: fewer tokens than asked ({len(load.streams)} streams)")
    finally:
        srv.stop()
    before, after = snaps
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=400, help="per stream")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument(
        "--opcodes", action="store_true", help="count bytecodes executed instead of calls"
    )
    args = parser.parse_args()
    mode = "opcodes" if args.opcodes else "calls"
    unit = "bytecodes" if args.opcodes else "calls"
    up = start_upstream("stamped", args.tokens, 200.0, None)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            counts = {
                s: count(s, up.url, args.streams, args.tokens, workdir, mode) for s in SERVERS
            }
    finally:
        up.popen.kill()
    total = args.streams * args.tokens
    print(f"`{command()}`: {args.streams} streams of {args.tokens} tokens, after a warm-up one")
    print()
    print(f"| server | Python {unit} per token (stream set-up included) |")
    print("|---|---:|")
    for server in SERVERS:
        print(f"| {server} | {sum(counts[server].values()) / total:.1f} |")
    ours, floor = counts["llmpipe"], counts["floor-httpx"]
    print()
    print(f"| {unit} per token: llmpipe | floor-httpx | function |")
    print("|---:|---:|---|")
    keys = sorted(ours.keys() | floor.keys(), key=lambda k: floor.get(k, 0) - ours.get(k, 0))
    for key in keys[: args.top]:
        print(f"| {ours.get(key, 0) / total:.2f} | {floor.get(key, 0) / total:.2f} | `{key}` |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:  # _child OUT MODE ARGV...: a server under the counter
        _child(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
