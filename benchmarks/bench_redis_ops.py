"""Redis operations per token and per stream of ``llmpipe serve --store redis://``, and what
``--workers`` buys at a fixed load, on a real ``redis-server`` started on a free port.

    .venv/bin/python benchmarks/bench_redis_ops.py           # N=100 streams of 100 tokens
    .venv/bin/python benchmarks/bench_redis_ops.py --quick   # smoke: 8 streams of 20 tokens
    .venv/bin/python benchmarks/bench_redis_ops.py --write   # ... and rewrite CAPACITY.md's block
    .venv/bin/python benchmarks/bench_redis_ops.py --n 150 --workers 1,2,1,2   # interleaved

Each run starts ``llmpipe serve --workers W --store redis://... --scripted TEXT --rate R``
(the scripted producer: the store's work does not depend on the upstream) and N users, each
running one resumable stream (``POST /v1/streams``, then ``GET`` its ``events_url`` to the end),
started evenly over one second. Every stream must deliver the whole text, in order.

* **Operations** (one extra run, ``--workers 1``, with Redis ``MONITOR`` on): every command
  Redis executed, split into the ones llmpipe sent (round trips; a script is one ``EVALSHA``,
  named by what it does) and the ones scripts ran inside Redis; per stream and per token.
* **Cost** (each ``--workers`` value, no ``MONITOR``): Redis CPU per token (``INFO cpu``, the
  whole server: networking included), the server's CPU per token (all its processes), the load
  generator's, and throughput. All on this machine's cores together: the load generator and
  Redis compete with the server, so a second worker cannot double anything here.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import trio
from _benchlib import (
    HERE,
    ROOT,
    Proc,
    Summary,
    add_harness_arguments,
    cpu_seconds,
    free_port,
    markdown_table,
    read_line,
    versions,
    wait_listening,
)

CAPACITY = HERE / "CAPACITY.md"
BEGIN, END = "<!-- redis-ops:begin -->", "<!-- redis-ops:end -->"


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- Redis ---------------------------------------------------------------------------------------


class Redis:
    """A private ``redis-server`` (no persistence) and a tiny RESP client for INFO/CONFIG."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
        self.port = free_port()
        popen = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.proc = Proc(popen, f"redis://127.0.0.1:{self.port}/0")
        wait_listening(self.port, timeout=10)
        self.url = self.proc.url

    def command(self, *args: str) -> str:
        with socket.create_connection(("127.0.0.1", self.port), 5) as sock:
            sock.sendall(_resp(args))
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
                    return data[1:-2].decode()
                if data.startswith(b"$"):
                    head, _, rest = data.partition(b"\r\n")
                    if len(rest) >= int(head[1:]) + 2:
                        return rest[: int(head[1:])].decode()
            raise RuntimeError(f"no reply to {args}")

    def info(self, section: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.command("INFO", section).splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key] = value
        return out

    def cpu(self) -> float:
        info = self.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop(self) -> None:
        self.proc.stop(signal.SIGTERM, 10)


def _resp(args: Sequence[str]) -> bytes:
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


# What llmpipe's scripts do, told apart by the first command each runs inside Redis.
SCRIPTS = (
    (re.compile(r'"HMGET" "[^"]+" "last_seq" "ended" "events" "counted"'), "append (script)"),
    (re.compile(r'"HMGET" "[^"]+" "last_seq" "ended" "events" "lease"'), "end if orphaned"),
    (re.compile(r'"HGETALL"'), "info (script)"),
    (re.compile(r'"HGET" "[^"]+" "ended"'), "renew lease (script)"),
    (re.compile(r'"EXISTS" "[^"]+"\s*$'), "create or set field (script)"),
)
MONITOR_LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "(\w+)"(.*)$')


@dataclass
class Monitor:
    """Redis ``MONITOR`` in a thread: every command, by who sent it (llmpipe or a script)."""

    redis: Redis
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    inner: collections.Counter[str] = field(default_factory=collections.Counter)
    _sock: socket.socket | None = None
    _pending: int = 0  # EVALSHA lines not yet named by their first inner command

    def start(self) -> None:
        self._sock = socket.create_connection(("127.0.0.1", self.redis.port))
        self._sock.sendall(_resp(["MONITOR"]))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._sock is not None
        buf = b""
        with contextlib.suppress(OSError):
            while chunk := self._sock.recv(1 << 16):
                buf += chunk
                *lines, buf = buf.split(b"\r\n")
                for line in lines:
                    self._line(line.decode(errors="replace"))

    def _line(self, line: str) -> None:
        m = MONITOR_LINE.match(line)
        if m is None:
            return
        who, cmd, rest = m.group(1), m.group(2).upper(), m.group(3)
        if who == "lua":
            self.inner[cmd] += 1
            if self._pending:
                self._pending -= 1
                name = next((n for p, n in SCRIPTS if p.search(f'"{cmd}"{rest}')), "other script")
                self.sent["EVALSHA " + name] += 1
            return
        if cmd in ("EVALSHA", "EVAL"):
            self._pending += 1
        elif cmd not in ("INFO", "CONFIG", "MONITOR", "PING"):
            self.sent[cmd] += 1

    def stop(self) -> None:
        time.sleep(0.3)  # the last lines
        if self._sock is not None:
            self._sock.close()


# -- the server and the load ---------------------------------------------------------------------


def start_server(store: str, workers: int, text: str, rate: float) -> tuple[Proc, list[int]]:
    """The server, and the pids of its processes (the supervisor first)."""
    cmd = [sys.executable, "-m", "sinks.cli", "serve", "--port", "0", "--workers", str(workers),
           "--store", store, "--scripted", text, "--rate", str(rate),
           "--max-streams-per-client", "100000", "--max-generations-per-client", "100000",
           "--shutdown-grace", "2", "--log-level", "warning"]  # fmt: skip
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd=ROOT)
    # With workers, the supervisor's line (its workers' pids), not a worker's; else no pids.
    workers_pids = rb".*workers.*\(pids ([\d ]+)\)" if workers > 1 else rb"()"
    m = read_line(p.stderr, rb"on (http://[\d.:]+)" + workers_pids, timeout=60)
    return Proc(p, m.group(1).decode()), [p.pid, *map(int, m.group(2).split())]


@dataclass
class Load:
    url: str
    text: str
    tokens: int = 0
    streams: int = 0
    stretch: list[float] = field(default_factory=list)  # first-to-last token / the script's
    rate: float = 20.0
    failures: list[str] = field(default_factory=list)


async def one_stream(ld: Load, client: httpx.AsyncClient, start_at: float) -> None:
    await trio.sleep_until(start_at)
    created = (await client.post(ld.url + "/v1/streams", json={"prompt": "hi"})).json()
    got: list[str] = []
    times: list[float] = []
    end = ""
    async with client.stream("GET", ld.url + created["events_url"]) as response:
        buf = b""
        async for chunk in response.aiter_bytes():
            buf += chunk
            *frames, buf = buf.split(b"\n\n")
            for frame in frames:
                data = next((x[5:] for x in frame.split(b"\n") if x.startswith(b"data:")), None)
                if data is None:
                    continue
                event = json.loads(data)
                if event["type"] == "text":
                    got.append(event["text"])
                    times.append(trio.current_time())
                elif event["type"] in ("done", "error"):
                    end = event["type"]
    ld.tokens += len(got)
    if len(times) > 1:
        ld.stretch.append((times[-1] - times[0]) / ((len(times) - 1) / ld.rate))
    ld.streams += 1
    if end != "done" or "".join(got) != ld.text:
        ld.failures.append(f"stream {created['id']}: ended {end!r}, {len(got)} tokens")


async def run_load(url: str, text: str, n: int, ramp: float, rate: float) -> Load:
    ld = Load(url, text, rate=rate)
    limits = httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client, trio.open_nursery() as ns:
        t0 = trio.current_time() + 0.1
        for i in range(n):
            ns.start_soon(one_stream, ld, client, t0 + ramp * i / n)
    return ld


@dataclass
class Run:
    workers: int
    seconds: float
    tokens: int
    streams: int
    server_cpu: float
    per_process: list[float]
    redis_cpu: float
    loadgen_cpu: float
    commandstats: dict[str, int]
    stretch: list[float]
    sent: dict[str, int] = field(default_factory=dict)
    inner: dict[str, int] = field(default_factory=dict)


def run_one(redis: Redis, workers: int, n: int, tokens: int, rate: float, monitor: bool) -> Run:
    text = "".join(f" w{i}" for i in range(tokens))
    server, pids = start_server(redis.url, workers, text, rate)
    try:
        redis.command("FLUSHALL")
        redis.command("CONFIG", "RESETSTAT")
        mon = Monitor(redis) if monitor else None
        if mon is not None:
            mon.start()
        cpu0 = [cpu_seconds(p) for p in pids]
        rcpu0, own0, t0 = redis.cpu(), own_cpu(), time.monotonic()
        try:
            ld = trio.run(run_load, server.url, text, n, 1.0, rate)
        except BaseException:
            time.sleep(0.5)
            sys.stderr.write(b"".join(server.log[-40:]).decode(errors="replace"))
            raise
        seconds = time.monotonic() - t0
        per = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        rcpu, own = redis.cpu() - rcpu0, own_cpu() - own0
        if mon is not None:
            mon.stop()
        stats = {
            k.removeprefix("cmdstat_"): int(re.search(r"calls=(\d+)", v).group(1))  # type: ignore[union-attr]
            for k, v in redis.info("commandstats").items()
        }
    finally:
        server.stop(signal.SIGTERM, 20)
    if ld.failures or ld.streams != n:
        raise SystemExit(f"{len(ld.failures)} streams failed: {ld.failures[:5]}")
    if ld.tokens != n * tokens:
        raise SystemExit(f"{ld.tokens} tokens delivered, expected {n * tokens}")
    print(
        f"checked: workers={workers}: all {n} streams delivered all {tokens} tokens",
        file=sys.stderr,
    )
    return Run(
        workers, seconds, ld.tokens, ld.streams, sum(per), per, rcpu, own, stats,
        sorted(ld.stretch),
        dict(mon.sent) if mon else {}, dict(mon.inner) if mon else {},
    )  # fmt: skip


def redis_benchmark(redis: Redis, quick: bool) -> dict[str, float]:
    """``redis-benchmark`` requests per second of the plain commands llmpipe's path uses
    (50 clients, no pipelining), on this machine with everything else idle."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {}
    n = "20000" if quick else "200000"
    tests = {
        "XADD": ["XADD", "bench:s", "MAXLEN", "~", "1000", "*", "e", "x" * 60],
        "HSET": ["HSET", "bench:h", "f", "v"],
        "XREAD": ["XREAD", "COUNT", "10", "STREAMS", "bench:s", "0-0"],
    }
    out: dict[str, float] = {}
    for name, args in tests.items():
        res = subprocess.run(
            [exe, "-p", str(redis.port), "-q", "-n", n, "-c", "50", *args],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        m = re.findall(r"([\d.]+) requests per second", res.stdout)
        if m:
            out[name] = float(m[-1])
    redis.command("FLUSHALL")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100, help="streams, all at once (default 100)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per stream (default 100)")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s per stream (20)")
    parser.add_argument("--workers", default="1,2", help="--workers values to run, in order")
    add_harness_arguments(parser, "the Redis block of benchmarks/CAPACITY.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.tokens, args.rate = 8, 20, 40.0
    workers = [int(w) for w in args.workers.split(",")]
    started = time.monotonic()
    redis = Redis()
    try:
        ops = run_one(redis, 1, args.n, args.tokens, args.rate, monitor=True)
        runs = [run_one(redis, w, args.n, args.tokens, args.rate, monitor=False) for w in workers]
        bench = redis_benchmark(redis, args.quick)
        redis_version = redis.info("server").get("redis_version", "?")
    finally:
        redis.stop()
    text = report(args, ops, runs, bench, redis_version)
    print(text)
    if args.write and not args.quick:
        old = CAPACITY.read_text(encoding="utf-8")
        head, _, rest = old.partition(BEGIN)
        _, _, tail = rest.partition(END)
        CAPACITY.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
        print(f"wrote {CAPACITY.relative_to(ROOT)}")
    cost_rows = [
        [
            str(r.workers),
            f"{r.tokens / r.seconds:,.0f}",
            f"{r.server_cpu / r.tokens * 1e6:.0f}",
            f"{r.redis_cpu / r.tokens * 1e6:.0f}",
            f"{r.loadgen_cpu / r.tokens * 1e6:.0f}",
        ]
        for r in runs
    ]
    Summary(
        name="redis-ops",
        title="Redis operations and --workers (llmpipe serve --store redis://)",
        claim=f"{sum(ops.sent.values()) / ops.tokens:.2f} Redis round trips per token",
        columns=[
            "workers",
            ">tokens/s",
            ">server µs/token",
            ">Redis µs/token",
            ">loadgen µs/token",
        ],
        rows=cost_rows,
        versions=versions("trio", "hypercorn", "coredis", "httpx"),
        quick=args.quick,
        seconds=time.monotonic() - started,
    ).save(args.summary, echo=False)
    return 0


def pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def report(
    args: argparse.Namespace, ops: Run, runs: list[Run], bench: dict[str, float], version: str
) -> str:
    n, k = ops.streams, ops.tokens / ops.streams
    lines = [
        f"`{' '.join(['benchmarks/bench_redis_ops.py', *(sys.argv[1:])])}`: N={n} resumable "
        f"streams of {k:.0f} tokens at {args.rate:g} tokens/s, started over 1 s; Redis {version} "
        f"on this machine.",
        "",
        "Round trips llmpipe sends (Redis `MONITOR`, `--workers 1`):",
        "",
    ]
    rows = [
        [cmd, f"{c:,}", f"{c / n:.2f}", f"{c / ops.tokens:.3f}"]
        for cmd, c in sorted(ops.sent.items(), key=lambda kv: -kv[1])
    ]
    total = sum(ops.sent.values())
    rows.append(["**all**", f"{total:,}", f"{total / n:.2f}", f"{total / ops.tokens:.3f}"])
    lines.append(markdown_table(["command", ">calls", ">per stream", ">per token"], rows))
    lines += ["", "Commands the scripts run inside Redis (no round trip each):", ""]
    inner = sum(ops.inner.values())
    rows = [
        [cmd, f"{c:,}", f"{c / n:.2f}", f"{c / ops.tokens:.3f}"]
        for cmd, c in sorted(ops.inner.items(), key=lambda kv: -kv[1])
    ]
    rows.append(["**all**", f"{inner:,}", f"{inner / n:.2f}", f"{inner / ops.tokens:.3f}"])
    lines.append(markdown_table(["command", ">calls", ">per stream", ">per token"], rows))
    lines += ["", "Cost by `--workers` (no `MONITOR`; CPU of all the server's processes):", ""]
    rows = [
        [
            str(r.workers),
            f"{r.seconds:.1f}",
            f"{r.tokens / r.seconds:,.0f}",
            f"{r.server_cpu / r.seconds:.0%}",
            " / ".join(f"{c / r.seconds:.0%}" for c in r.per_process),
            f"{r.server_cpu / r.tokens * 1e6:.0f}",
            f"{r.redis_cpu / r.tokens * 1e6:.0f}",
            f"{r.loadgen_cpu / r.tokens * 1e6:.0f}",
            f"{pct(r.stretch, 0.5):.3f} / {pct(r.stretch, 0.99):.3f}",
        ]
        for r in runs
    ]
    lines.append(
        markdown_table(
            [
                "workers",
                ">wall s",
                ">tokens/s",
                ">server CPU",
                "per process (supervisor first)",
                ">server µs/token",
                ">Redis µs/token",
                ">loadgen µs/token",
                ">stream stretch p50 / p99",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Stream stretch: a stream's first-to-last token time over the script's ((K-1)/rate; the "
        "scripted model sleeps 1/rate after each token, so a lagging server stretches it); "
        "1.000 = on time.",
    ]
    if bench:
        lines += [
            "",
            "`redis-benchmark -c 50 -n 200000` (plain commands, no pipelining, this machine): "
            + ", ".join(f"{name} {rps:,.0f}/s" for name, rps in bench.items())
            + ".",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
