"""Capacity: how many 20 tokens/s streams one server process on one core relays in time.

    .venv/bin/python benchmarks/bench_capacity.py                 # full sweep, prints a table
    .venv/bin/python benchmarks/bench_capacity.py --write         # ... and writes CAPACITY.md
    .venv/bin/python benchmarks/bench_capacity.py --quick         # smoke: small N, 3 s streams

``--write`` also draws ``capacity_delay.png`` and ``capacity_cpu.png`` (p99 added delay and server
CPU per token against N, one line per server).

Three kinds of process (see ``CAPACITY.md`` for the numbers and the discussion):

* **upstream** (``_upstream``, on core 0): an OpenAI Chat Completions streaming endpoint on raw
  asyncio sockets. Each request gets ``--tokens`` deltas, token ``i`` at ``t_request + (i+1) /
  rate`` on an absolute schedule (no drift), written with one ``write`` each. Every delta's text
  is ``" w<i>:<µs>"``: the upstream's ``CLOCK_MONOTONIC`` (system-wide on Linux) when it wrote
  it. So the load generator measures each token's *added delay* exactly: its arrival time minus
  the time the model sent it, whatever the upstream's own pacing error.
  ``--upstream emulator`` uses llmpipe's provider emulator instead (``python -m sinks.cli
  emulate``): there the delay can only be measured against the schedule (first arrival +
  ``i / rate``), which counts the emulator's own drift as delay.
* **server under test** (pinned to core 1 with ``taskset -c 1``):
  ``llmpipe`` = ``llmpipe serve --provider openai --base-url <upstream>/v1`` as shipped;
  ``relay`` = ``benchmarks/guide_relay.py`` (FastAPI + sse-starlette on plain uvicorn: asyncio
  and h11, SDK chunk objects, one SSE event per token); ``relay-standard`` = the same on
  ``uvicorn[standard]``'s uvloop and httptools, as users deploy it (skipped when they are not
  installed: the ``bench`` extra); ``floor`` / ``floor-httpx`` = ``benchmarks/floor_relay.py``,
  the least a relay on trio + hypercorn can do per token (regex over the raw upstream bytes, one
  ``send`` per read; upstream on a bare socket / through httpx): the serving stack's ceiling.
* **load generator** (this process, on core 0): N concurrent ``POST`` streams on raw asyncio
  sockets, started evenly over ``--ramp`` seconds; it only splits the bytes on ``\\n\\n`` and
  finds the stamps. With coalescing several tokens arrive in one event: each token's arrival is
  that event's read time.

Per N: total tokens/s delivered, server CPU % (``/proc/<pid>/stat`` utime+stime over the run),
p50/p99/max added delay, p99 time to first token, delivered % of tokens, and the CPU of the
upstream and the load generator (core 0; if they saturate it the run says so). The *knee* of a
server is the largest N with p99 added delay < 50 ms and every token delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _benchlib import (
    HERE,
    ROOT,
    Proc,
    Summary,
    add_harness_arguments,
    cpu_seconds,
    free_port,
    median,
    pyplot,
    versions,
    wait_listening,
)

SLO_MS = 50.0
_STAMP = re.compile(rb"w(\d+):(\d+)")
_INDEX = re.compile(rb"w(\d+)")


def now_us() -> int:
    return time.monotonic_ns() // 1000


# ---------------------------------------------------------------------------------------------
# The stamped upstream (an OpenAI-compatible streaming endpoint, cheap on purpose)


def http_chunk(payload: bytes) -> bytes:
    """``payload`` as one HTTP/1.1 chunk (also used by ``bench_cancel.py``'s upstream)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse_event(delta: dict[str, object], finish: str | None = None) -> bytes:
    """One OpenAI ``chat.completion.chunk`` as an SSE event (also used by
    ``bench_stream_path.py``)."""
    doc = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def _sse(delta: dict[str, object], finish: str | None = None) -> bytes:
    return http_chunk(sse_event(delta, finish))


_PREFIX, _SUFFIX = _sse({"content": "@TOKEN@"}).split(b"@TOKEN@")
_PREFIX = _PREFIX.split(b"\r\n", 1)[1]  # drop the chunk-size line; recomputed per token
_SUFFIX = _SUFFIX.rsplit(b"\r\n", 1)[0]


async def upstream_main(port: int, tokens: int, rate: float) -> None:
    loop = asyncio.get_running_loop()
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another
                raw = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in raw.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                t0 = loop.time()
                writer.write(head + _sse({"role": "assistant", "content": ""}))
                for i in range(tokens):
                    delay = t0 + (i + 1) / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if writer.transport.is_closing():
                        return
                    body = b"%s w%d:%d%s" % (_PREFIX, i, now_us(), _SUFFIX)
                    writer.write(b"%x\r\n%s\r\n" % (len(body), body))
                    if writer.transport.get_write_buffer_size() > 1 << 16:
                        await writer.drain()
                writer.write(_sse({}, "stop") + http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------------------
# Processes


def pin(core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(core)]


def start_upstream(kind: str, tokens: int, rate: float, core: int | None) -> Proc:
    if kind == "stamped":
        cmd = [sys.executable, __file__, "_upstream", "--tokens", str(tokens), "--rate", str(rate)]
        p = subprocess.Popen([*pin(core), *cmd], stdout=subprocess.PIPE, cwd=ROOT)
        return Proc.announced(p, rb"(http://\S+)")
    text = "".join(f" w{i}" for i in range(tokens))
    cmd = [sys.executable, "-m", "sinks.cli", "emulate", "--port", "0", "--text", text,
           "--tokens-per-second", str(rate)]  # fmt: skip
    p = subprocess.Popen([*pin(core), *cmd], stderr=subprocess.PIPE, cwd=ROOT)
    return Proc.announced(p, rb"listening on (http://\S+)")


def start_server(
    kind: str,
    upstream: str,
    core: int | None,
    python: Sequence[str] = (sys.executable,),
    cwd: Path = ROOT,
) -> Proc:
    """Start server ``kind`` relaying ``upstream``, pinned to ``core``; ``python`` is the
    interpreter command it runs under (``calls_per_token.py`` puts a call counter there), ``cwd``
    the checkout whose llmpipe it runs. ``kind@DIR`` runs it from the checkout in ``DIR``
    instead (``cpu_pair.py`` and ``instructions_per_token.py`` compare two)."""
    kind, _, checkout = kind.partition("@")
    if checkout:
        cwd = Path(checkout).resolve()
    env = {**os.environ, "OPENAI_API_KEY": "x", "OPENAI_BASE_URL": upstream + "/v1"}
    if kind in ("relay", "relay-standard"):
        port = free_port()
        stack = ["uvloop", "httptools"] if kind == "relay-standard" else ["asyncio", "h11"]
        cmd = [*python, str(HERE / "guide_relay.py"), "--port", str(port),
               "--loop", stack[0], "--http", stack[1]]  # fmt: skip
        p = subprocess.Popen([*pin(core), *cmd], env=env, cwd=cwd)
        wait_listening(port)
        return Proc(p, f"http://127.0.0.1:{port}")
    if kind == "llmpipe":
        cmd = [*python, "-m", "sinks.cli", "serve", "--provider", "openai",
               "--base-url", upstream + "/v1", "--model", "m", "--port", "0",
               "--max-streams-per-client", "100000"]  # fmt: skip
    elif kind in ("floor", "floor-httpx"):
        client = "httpx" if kind == "floor-httpx" else "raw"
        cmd = [*python, str(HERE / "floor_relay.py"), "--base-url", upstream + "/v1",
               "--upstream-client", client]  # fmt: skip
    else:
        raise SystemExit(f"unknown server {kind!r} ({', '.join(SERVERS)})")
    p = subprocess.Popen([*pin(core), *cmd], env=env, stderr=subprocess.PIPE, cwd=cwd)
    return Proc.announced(p, rb"on (http://[\d.:]+)")


# ---------------------------------------------------------------------------------------------
# The load generator


@dataclass
class StreamResult:
    ok: bool = False
    tokens: int = 0
    ttft_ms: float | None = None
    error: str | None = None


@dataclass
class RunResult:
    server: str
    n: int
    seconds: float
    server_cpu: float
    upstream_cpu: float
    loadgen_cpu: float
    delays_ms: list[float] = field(default_factory=list)
    tokens_in_window: int = 0
    ttfts_ms: list[float] = field(default_factory=list)
    streams: list[StreamResult] = field(default_factory=list)
    tokens_per_stream: int = 0

    @property
    def delivered(self) -> float:
        """Tokens received / sent, over the streams that ended in the window (completed or
        failed); a stream cut by the window's end is not counted."""
        ended = [s for s in self.streams if s.ok or s.error]
        if not ended:
            return float("nan")
        return 100.0 * sum(s.tokens for s in ended) / (len(ended) * self.tokens_per_stream)

    def pct(self, q: float) -> float:
        if not self.delays_ms:
            return float("nan")
        d = sorted(self.delays_ms)
        return d[min(len(d) - 1, int(q / 100 * len(d)))]

    @property
    def ttft_p99(self) -> float:
        t = sorted(self.ttfts_ms)
        return t[min(len(t) - 1, int(0.99 * len(t)))] if t else float("nan")

    @property
    def ok(self) -> bool:
        failed = any(s.error for s in self.streams)
        return not failed and self.delivered >= 100.0 and self.pct(99) < SLO_MS

    def row(self) -> str:
        errors = sum(1 for s in self.streams if s.error)
        rate = self.tokens_in_window / self.seconds
        per_token = self.server_cpu * 1e4 / rate if rate else float("nan")  # µs of CPU
        return (
            f"| {self.n} | {rate:,.0f} "
            f"| {self.server_cpu:.0f} % | {per_token:.0f} "
            f"| {self.pct(50):.1f} | {self.pct(99):.1f} "
            f"| {max(self.delays_ms, default=float('nan')):.0f} | {self.ttft_p99:.0f} "
            f"| {self.delivered:.1f} %{f' ({errors} failed)' if errors else ''} "
            f"| {self.upstream_cpu:.0f} % / {self.loadgen_cpu:.0f} % "
            f"| {'yes' if self.ok else 'no'} |"
        )


HEADER = (
    "| N streams | tokens/s delivered | server CPU | server CPU per token (µs) "
    "| p50 added delay (ms) | p99 (ms) | max (ms) | p99 TTFT (ms) | delivered "
    "| upstream / loadgen CPU (core 0) | p99 < 50 ms, all delivered |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Load:
    """One step: ``n`` users, each running streams back to back; tokens are measured in the
    window ``[start, end]`` (µs), once every user is running."""

    host: str
    port: int
    path: str
    stamped: bool
    rate: float
    start: int = 1 << 62  # set when the window opens
    stop_after: int = 0  # tokens to read before leaving (0: the whole stream)
    end: int = 1 << 62  # set when it closes
    delays: list[float] = field(default_factory=list)
    in_window: int = 0
    ttfts: list[float] = field(default_factory=list)
    streams: list[StreamResult] = field(default_factory=list)


REQUEST_BODY = b'{"prompt": "Tell me a long story."}'


async def one_stream(ld: Load) -> None:
    res = StreamResult()
    req = (
        b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
        b"accept: text/event-stream\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    ) % (ld.path.encode(), ld.host.encode(), ld.port, len(REQUEST_BODY), REQUEST_BODY)
    arrivals: list[tuple[int, int]] = []  # (index, arrival µs) for schedule-based delays
    t_req = now_us()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(ld.host, ld.port)
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            res.error = head.split(b"\r\n", 1)[0].decode(errors="replace")
            return
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                res.error = "EOF before the done event"
                break
            t = now_us()
            buf += data
            cut = max(buf.rfind(b"\n\n"), buf.rfind(b"\n\r\n"))  # sse-starlette: CRLF
            if cut < 0:
                continue
            cut = buf.index(b"\n", cut + 1) + 1
            ready, buf = buf[:cut], buf[cut:]
            counted = ld.start <= t <= ld.end
            if ld.stamped:
                for m in _STAMP.finditer(ready):
                    res.tokens += 1
                    if counted:
                        ld.delays.append((t - int(m.group(2))) / 1000)
                        ld.in_window += 1
            else:
                for m in _INDEX.finditer(ready):
                    res.tokens += 1
                    arrivals.append((int(m.group(1)), t))
            if res.ttft_ms is None and res.tokens:
                res.ttft_ms = (t - t_req) / 1000
                if t_req >= ld.start:
                    ld.ttfts.append(res.ttft_ms)
            if b"event: done" in ready or (ld.stop_after and res.tokens >= ld.stop_after):
                res.ok = True
                break
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        res.error = repr(exc)
    finally:
        if writer is not None:
            writer.close()
        if arrivals:  # schedule-based: delay against the best-case start of this stream
            step = 1e6 / ld.rate
            t0 = min(a - i * step for i, a in arrivals)
            for i, a in arrivals:
                if ld.start <= a <= ld.end:
                    ld.delays.append((a - t0 - i * step) / 1000)
                    ld.in_window += 1
    if ld.start <= now_us() <= ld.end:  # ended in the window (a cancelled one never gets here)
        ld.streams.append(res)


async def streams_in_turn(ld: Load, n: int) -> None:
    """``n`` streams of ``ld``, one after the other."""
    for _ in range(n):
        await one_stream(ld)


async def user(ld: Load, first_at: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, first_at - loop.time()))
    while True:
        await one_stream(ld)


async def load(
    loads: Sequence[Load], n: int, ramp: float, measure: float, pids: Sequence[int]
) -> tuple[float, list[float]]:
    """Run ``n`` users per load (started evenly over ``ramp`` s; with several loads, their
    users alternate), measure for ``measure`` s; returns the window's length and the CPU of
    ``pids`` and of this process in it, in cores (CPU seconds per second)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.1
    k = len(loads)
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(user(ld, t0 + ramp * (i * k + j) / (n * k)))
            for i in range(n)
            for j, ld in enumerate(loads)
        ]
        await asyncio.sleep(t0 + ramp + 0.5 - loop.time())
        start = now_us()
        for ld in loads:
            ld.start = start
        cpu0 = [*(cpu_seconds(p) for p in pids), sum(os.times()[:2])]
        await asyncio.sleep(measure)
        end = now_us()
        for ld in loads:
            ld.end = end
        cpu1 = [*(cpu_seconds(p) for p in pids), sum(os.times()[:2])]
        for task in tasks:
            task.cancel()
    wall = (end - start) / 1e6
    return wall, [(b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]


def run_one(args: argparse.Namespace, server: str, n: int) -> RunResult:
    tokens = int(args.seconds * args.rate)
    up = start_upstream(args.upstream, tokens, args.rate, args.loadgen_core)
    srv = None
    spy = None
    try:
        srv = start_server(server, up.url, args.server_core)
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        path = "/chat" if server.startswith("relay") else "/v1/stream"
        stamped = args.upstream == "stamped"
        time.sleep(0.5)
        # Imports and the first connection: a few tokens, not a whole stream (that took 15 s
        # of each run's ~55).
        warm = Load(host, int(port), path, stamped, args.rate, stop_after=5)
        asyncio.run(asyncio.wait_for(one_stream(warm), 60))
        if args.profile:
            out = f"{args.profile}-{server}-{n}.txt"
            spy = subprocess.Popen(
                [*pin(args.loadgen_core), args.py_spy, "record", "--nonblocking", "-r", "250",
                 "-f", "raw", "-o", out, "-p", str(srv.popen.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        ld = Load(host, int(port), path, stamped, args.rate)
        wall, cpu = asyncio.run(
            load([ld], n, args.ramp, args.measure, [srv.popen.pid, up.popen.pid])
        )
        return RunResult(
            server=server,
            n=n,
            seconds=wall,
            server_cpu=100 * cpu[0],
            upstream_cpu=100 * cpu[1],
            loadgen_cpu=100 * cpu[2],
            delays_ms=ld.delays,
            tokens_in_window=ld.in_window,
            ttfts_ms=ld.ttfts,
            streams=ld.streams,
            tokens_per_stream=tokens,
        )
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        if srv is not None:
            srv.stop()
        up.popen.kill()
        up.popen.wait()


# ---------------------------------------------------------------------------------------------
# Report


def machine_info() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import importlib.metadata as md

    versions = []
    for pkg in ("trio", "hypercorn", "starlette", "openai", "httpx", "fastapi", "uvicorn",
                "sse-starlette"):  # fmt: skip
        with contextlib.suppress(md.PackageNotFoundError):
            versions.append(f"{pkg} {md.version(pkg)}")
    return (
        f"{os.cpu_count()} x {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}; " + ", ".join(versions)
    )


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_results(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what is between the markers in ``path`` (append the block if they are missing)."""
    old = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old.split(begin, 1)[0] + block + old.split(end, 1)[1]
    else:
        new = old + ("\n" if old else "") + block + "\n"
    path.write_text(new)


def knee(results: Sequence[RunResult]) -> int | None:
    good = [r.n for r in results if r.ok]
    return max(good) if good else None


# The goals of issue 11, both relative to baselines measured in the same run.
KNEE_GOAL = 1.5  # llmpipe's knee / relay-standard's, in every repeat
CPU_GOAL = 1.25  # llmpipe's CPU per token / floor-httpx's, at the same N and repeat
FLOORS = ("floor", "floor-httpx")


@dataclass
class Sweep:
    """Every run of an interleaved sweep: ``runs[server][repeat]`` in order of N."""

    servers: list[str]
    repeats: int
    runs: dict[str, list[list[RunResult]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.runs = {s: [[] for _ in range(self.repeats)] for s in self.servers}

    def knees(self, server: str) -> list[int | None]:
        return [knee(rs) for rs in self.runs[server]]

    def knee_labels(self, server: str, first: int) -> list[str]:
        """Knees as shown: ``>= N`` when the repeat never failed (its knee is beyond the N
        tried), ``< N`` when it failed at the smallest N tried (``first`` if none was)."""
        out = []
        for rs, k in zip(self.runs[server], self.knees(server), strict=True):
            if k is None:
                out.append(f"< {min((r.n for r in rs), default=first)}")
            else:
                out.append(f">= {k}" if all(r.ok for r in rs) else str(k))
        return out

    def at(self, server: str, rep: int, n: int) -> RunResult | None:
        return next((r for r in self.runs[server][rep] if r.n == n), None)

    def knee_ratios(self, server: str, base: str) -> list[float]:
        """``server``'s knee over ``base``'s, repeat by repeat (paired: the same interleaved
        round); a repeat where either has no knee is left out."""
        if server not in self.runs or base not in self.runs:
            return []
        pairs = zip(self.knees(server), self.knees(base), strict=True)
        return [k / b for k, b in pairs if k and b]

    # A knee shown as ">= N" (never failed) makes its ratio a bound, said in the notes.

    def cpu_ratios(self, server: str, base: str) -> dict[int, list[float]]:
        """CPU per token of ``server`` over ``base``'s at each N both ran, per repeat."""
        out: dict[int, list[float]] = {}
        if server not in self.runs or base not in self.runs:
            return out
        for rep in range(self.repeats):
            for r in self.runs[server][rep]:
                b = self.at(base, rep, r.n)
                if b is not None and cpu_per_token(b) > 0:
                    out.setdefault(r.n, []).append(cpu_per_token(r) / cpu_per_token(b))
        return out


def sweep(args: argparse.Namespace, servers: list[str], ns: list[int]) -> Sweep:
    """Run every server at each N, ``--repeat`` times, interleaved: at each N the servers take
    turns (the order rotates from one repeat to the next), so a noisy minute on the shared
    machine falls on every server rather than on one. A server's repeat stops after
    ``--stop-after`` failed steps; the floors (baselines for CPU per token) stop when every
    other server has."""
    result = Sweep(servers, args.repeat)
    misses = {(s, rep): 0 for s in servers for rep in range(args.repeat)}

    def active(s: str, rep: int) -> bool:
        if misses[s, rep] >= args.stop_after:
            return False
        if s in FLOORS and any(x not in FLOORS for x in servers):
            return any(
                misses[x, r] < args.stop_after
                for x in servers
                if x not in FLOORS
                for r in range(args.repeat)
            )
        return True

    for i, n in enumerate(ns):
        for rep in range(args.repeat):
            turn = [s for s in servers if active(s, rep)]
            if not turn:
                continue
            shift = (i + rep) % len(turn)
            for server in turn[shift:] + turn[:shift]:
                r = run_one(args, server, n)
                result.runs[server][rep].append(r)
                print(f"{server:>14} run {rep + 1} {r.row()}", flush=True)
                errs = {s.error for s in r.streams if s.error}
                if errs:
                    print(f"  errors: {sorted(errs)[:3]}", flush=True)
                misses[server, rep] = 0 if r.ok else misses[server, rep] + 1
        if not any(active(s, rep) for s in servers for rep in range(args.repeat)):
            break
    # A repeat that failed at the first N has no knee, and a ratio to it would be only a
    # bound (or be left out): that repeat runs once more at half the first N.
    low = ns[0] // 2
    for rep in range(args.repeat if low >= 1 else 0):
        turn = [s for s in servers if s not in FLOORS and result.knees(s)[rep] is None]
        shift = rep % len(turn) if turn else 0
        for server in turn[shift:] + turn[:shift]:
            r = run_one(args, server, low)
            result.runs[server][rep].insert(0, r)
            print(f"{server:>14} run {rep + 1} {r.row()}", flush=True)
    return result


def verdicts(sw: Sweep) -> list[str]:
    """The goals, judged from the sweep: one line each."""
    lines = []
    ratios = sw.knee_ratios("llmpipe", "relay-standard")
    if ratios:
        met = "met" if min(ratios) >= KNEE_GOAL else "not met"
        lines.append(
            f"- knee llmpipe / relay-standard, per repeat: "
            f"{', '.join(f'{x:.2f}x' for x in ratios)} (goal >= {KNEE_GOAL}x in every "
            f"repeat: {met})"
        )
    cpu = sw.cpu_ratios("llmpipe", "floor-httpx")
    knees = [k for k in sw.knees("llmpipe") if k] if "llmpipe" in sw.runs else []
    if cpu:
        upto = max(knees) if knees else max(cpu)
        judged = [x for n, xs in cpu.items() if n <= upto for x in xs]
        per_n = ", ".join(f"N={n}: {median(xs):.2f}x" for n, xs in sorted(cpu.items()))
        met = "met" if judged and median(judged) <= CPU_GOAL else "not met"
        lines.append(
            f"- CPU per token llmpipe / floor-httpx (median of the repeats): {per_n}; median up "
            f"to llmpipe's knee {median(judged):.2f}x (goal <= {CPU_GOAL}x: {met})"
        )
    for name in ("relay", "floor-httpx", "floor"):
        r = sw.knee_ratios("llmpipe", name)
        if r:
            lines.append(
                f"- knee llmpipe / {name}, per repeat: {', '.join(f'{x:.2f}x' for x in r)}"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    up = sub.add_parser("_upstream", help="(internal) the stamped upstream")
    up.add_argument("--port", type=int, default=0)
    up.add_argument("--tokens", type=int, default=300)
    up.add_argument("--rate", type=float, default=20.0)
    parser.add_argument(
        "--servers",
        help=f"comma-separated; default: {','.join(DEFAULT_SERVERS)}; also: floor "
        "(--quick: relay,llmpipe,floor)",
    )
    parser.add_argument(
        "--n", default="100,150,200,250,300,350,400", help="stops after --stop-after failed steps"
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="interleaved runs of every server at each N"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each stream")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s per stream")
    parser.add_argument(
        "--ramp", type=float, help="users start over this long (default: --seconds)"
    )
    parser.add_argument("--measure", type=float, default=15.0, help="measurement window, s")
    parser.add_argument("--upstream", choices=["stamped", "emulator"], default="stamped")
    parser.add_argument("--server-core", type=int, default=1)
    parser.add_argument("--loadgen-core", type=int, default=0)
    add_harness_arguments(parser, "CAPACITY.md's tables and the plots (quick: N=20, 2 s streams)")
    parser.add_argument("--out", default=str(HERE / "CAPACITY.md"))
    parser.add_argument("--profile", metavar="PREFIX", help="py-spy the server: PREFIX-S-N.txt")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--stop-after", type=int, default=1, help="failed steps before giving up")
    args = parser.parse_args(argv)
    if args.command == "_upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(upstream_main(args.port, args.tokens, args.rate))
        return 0
    if args.quick:
        args.n, args.seconds, args.measure, args.repeat = "20", 2.0, 2.0, 1
    if args.ramp is None:
        args.ramp = args.seconds
    if args.servers is None:
        args.servers = "relay,llmpipe,floor" if args.quick else ",".join(DEFAULT_SERVERS)
    if (os.cpu_count() or 1) < 2:
        args.server_core = args.loadgen_core = None
    with contextlib.suppress(OSError):
        if args.loadgen_core is not None:
            os.sched_setaffinity(0, {args.loadgen_core})
    ns = [int(x) for x in args.n.split(",")]
    servers = []
    for server in args.servers.split(","):
        if server == "relay-standard" and not uvicorn_standard():
            print("skipped: relay-standard: uvloop or httptools is not installed", flush=True)
            continue
        if server not in SERVERS:
            raise SystemExit(f"unknown server {server!r} ({', '.join(SERVERS)})")
        servers.append(server)
    lines = [f"Machine: {machine_info()}", ""]
    lines.append(
        f"N users, each running streams of {args.seconds:g} s at {args.rate:g} tokens/s back to "
        f"back, started evenly over {args.ramp:g} s; measured over the next {args.measure:g} s; "
        f"upstream: {args.upstream}; server on core {args.server_core}, upstream + load "
        f"generator on core {args.loadgen_core}. {args.repeat} interleaved run(s) of every "
        f"server at each N (`{' '.join(sys.argv[1:]) or 'defaults'}`)."
    )
    print("\n".join(lines), flush=True)
    sw = sweep(args, servers, ns)
    for server in servers:
        lines += ["", f"### {server}", "", HEADER.replace("| N streams |", "| N streams | run |")
                  .replace("|---|", "|---|---|", 1)]  # fmt: skip
        for r, rep in sorted(
            ((r, rep) for rep, rs in enumerate(sw.runs[server]) for r in rs),
            key=lambda x: (x[0].n, x[1]),
        ):
            lines.append(r.row().replace(f"| {r.n} |", f"| {r.n} | {rep + 1} |", 1))
    lines += ["", "Knees (largest N with p99 added delay < 50 ms and every token delivered):"]
    for server in servers:
        lines.append(f"- {server}: {', '.join(sw.knee_labels(server, ns[0]))}")
    lines += ["", "Goals (issue 11):", *verdicts(sw)]
    tail = lines[
        lines.index("Knees (largest N with p99 added delay < 50 ms and every token delivered):") :
    ]
    print("\n".join(tail), flush=True)
    failed_any = args.quick and any(
        s.error for rs in sw.runs.values() for run in rs for r in run for s in r.streams
    )
    if args.write:
        write_results(Path(args.out), "\n".join(lines))
        print(f"wrote {args.out}")
        plot(sw)
    summary(sw, args).save(args.summary)
    return 1 if failed_any else 0


SERVERS = ("relay", "relay-standard", "llmpipe", "floor", "floor-httpx")
DEFAULT_SERVERS = ("relay-standard", "llmpipe", "floor-httpx", "relay")
PLOTS = ("capacity_delay.png", "capacity_cpu.png")


def uvicorn_standard() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools"))


def cpu_per_token(r: RunResult) -> float:
    rate = r.tokens_in_window / r.seconds
    return r.server_cpu * 1e4 / rate if rate else float("nan")


def plot(sw: Sweep) -> None:
    for name, ylabel, value in (
        (PLOTS[0], "p99 added delay, ms (log)", lambda r: r.pct(99)),
        (PLOTS[1], "server CPU per relayed token, µs", cpu_per_token),
    ):
        with pyplot(HERE / name) as plt:
            if plt is None:
                return
            for server, reps in sw.runs.items():
                by_n: dict[int, list[float]] = {}
                for run in reps:
                    for r in run:
                        by_n.setdefault(r.n, []).append(value(r))
                xs = sorted(by_n)
                plt.plot(xs, [median(by_n[x]) for x in xs], marker="o", label=server)
            if name == PLOTS[0]:
                plt.axhline(SLO_MS, color="grey", linestyle="--", label=f"{SLO_MS:g} ms")
                plt.yscale("log")
            plt.xlabel("concurrent 20 tokens/s streams (N)")
            plt.ylabel(ylabel + " (median of the repeats)")
            plt.title("One server process on one core")
            plt.legend()


def summary(sw: Sweep, args: argparse.Namespace) -> Summary:
    rows = []
    first = min(int(x) for x in args.n.split(","))

    def ratios(server: str, base: str) -> str:
        return ", ".join(f"{x:.2f}" for x in sw.knee_ratios(server, base))

    for server in sw.servers:
        ks = sw.knees(server)
        at = [sw.at(server, rep, k) for rep, k in enumerate(ks) if k]
        cpu = sw.cpu_ratios(server, "floor-httpx")
        judged = [x for r in at if r is not None for x in cpu.get(r.n, [])]
        rows.append([
            server, ", ".join(sw.knee_labels(server, first)),
            ratios(server, "relay-standard"), ratios(server, "relay"),
            ", ".join(f"{r.pct(99):.1f}" for r in at if r is not None),
            ", ".join(f"{cpu_per_token(r):.0f}" for r in at if r is not None),
            f"{median(judged):.2f}" if judged else "",
        ])  # fmt: skip
    return Summary(
        name="capacity",
        title="Streams per core",
        claim=(
            f"How many {args.rate:g} tokens/s streams one server process on one core relays with "
            "p99 added delay under 50 ms and every token delivered (the knee): `llmpipe serve` "
            "against the guide relay (FastAPI + sse-starlette + the openai SDK) as users deploy "
            "it (uvicorn[standard]: uvloop + httptools) and on plain uvicorn, and the serving "
            "stack's floor (trio + hypercorn + httpx, no parsing). Goals (issue 11): a knee at "
            f"least {KNEE_GOAL}x relay-standard's in every repeat, and CPU per token at most "
            f"{CPU_GOAL}x floor-httpx's."
        ),
        columns=[
            "server",
            ">knee per repeat (streams)",
            ">vs relay-standard",
            ">vs relay",
            ">p99 added delay at the knee, ms",
            ">CPU per token at the knee, µs",
            ">CPU per token vs floor-httpx at the knee",
        ],
        rows=rows,
        notes=[
            f"N tried: {args.n}; {args.seconds:g} s streams, {args.measure:g} s window; "
            f"{args.repeat} interleaved repeat(s): at each N the servers take turns.",
            *[v.removeprefix("- ") for v in verdicts(sw)],
        ],
        detail="CAPACITY.md",
        plots=list(PLOTS) if args.write else [],
        versions=versions(
            "trio",
            "hypercorn",
            "uvicorn",
            "uvloop",
            "httptools",
            "sse-starlette",
            "fastapi",
            "openai",
            "httpx",
        ),
        quick=args.quick,
    )


if __name__ == "__main__":
    sys.exit(main())
