"""Cancellation: a client disconnects; how soon does the relay close its upstream connection?

    .venv/bin/python benchmarks/bench_cancel.py              # 1,000 disconnects per server
    .venv/bin/python benchmarks/bench_cancel.py --write      # ... and the plot (cancel_cdf.png)
    .venv/bin/python benchmarks/bench_cancel.py --quick      # smoke: 20, two servers (tests)
    .venv/bin/python benchmarks/bench_cancel.py --servers llmpipe --trace   # where the time goes

Three processes, as in ``bench_capacity.py``:

* **upstream** (this file, ``--upstream``): an OpenAI Chat Completions streaming endpoint on raw
  asyncio sockets. Each request streams ``--rate`` tokens/s for ``--seconds``; it reads the
  request's id from the prompt, stamps every token it writes and the moment its connection
  is closed by the relay (``CLOCK_MONOTONIC``, system-wide on Linux), and prints them all when
  its standard input closes.
* **server under test**: ``llmpipe serve --provider openai`` or ``benchmarks/guide_relay.py``
  (FastAPI + sse-starlette + the openai SDK; plain uvicorn, and uvicorn[standard]'s uvloop +
  httptools when installed), started as ``bench_capacity.py`` starts them.
* **clients** (this process): ``--disconnects`` streams, ``--concurrency`` at a time, each
  ``POST``\\ing a prompt with its id, reading until its first token, then for a random time
  (uniform in 0-``--max-wait`` s: a random point of the answer), then closing its socket.

``--trace`` runs llmpipe under ``_cancel_trace.py`` (probes patched into hypercorn and trio in
the server process) and prints each disconnect's spans: client closed -> server read the EOF
-> the app got ``http.disconnect`` -> upstream socket closed -> upstream read the EOF, llmpipe's
own CPU time in its part, the collector's pauses during the run and what one young collection
held, and the slowest disconnects with the long task steps inside them. (Wall time well above
CPU time in a span is the process waiting for a CPU.)

Per disconnect: the *close latency* is the upstream's close time minus the client's; *tokens
after* is how many tokens the upstream wrote after the client left (what the provider bills
for nobody). A relay that never closes its upstream connection lets the answer run to its end
(``--seconds``): those disconnects count as *not closed* and their latency as the rest of the
answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import HERE, ROOT, Proc, Summary, add_harness_arguments, pyplot, versions
from bench_capacity import http_chunk, sse_event, start_server, uvicorn_standard

PLOT = "cancel_cdf.png"
GOAL_MS = 10.0  # p99, client disconnect -> upstream connection closed
QUIET_LOAD = 0.5  # 1-minute load average of the machine before the run, at most
_ID = re.compile(rb"cancel-(\d+)")


def now_ns() -> int:
    return time.monotonic_ns()


# -- the upstream ----------------------------------------------------------------------------


async def upstream(rate: float, seconds: float) -> None:
    log: dict[str, dict[str, Any]] = {}
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        entry: dict[str, Any] = {"writes": [], "closed": None}
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in raw.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            m = _ID.search(body)
            log[m.group(1).decode() if m else f"unknown-{len(log)}"] = entry

            async def watch() -> None:
                with contextlib.suppress(ConnectionError):
                    while await reader.read(65536):
                        pass
                entry["closed"] = now_ns()

            watcher = asyncio.create_task(watch())
            writer.write(head + http_chunk(sse_event({"role": "assistant", "content": ""})))
            t0 = time.monotonic()
            for i in range(int(seconds * rate)):
                await asyncio.wait(
                    [watcher], timeout=max(0.0, t0 + (i + 1) / rate - time.monotonic())
                )
                if watcher.done():
                    return
                writer.write(http_chunk(sse_event({"content": f" w{i}"})))
                entry["writes"].append(now_ns())
            writer.write(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            entry["ended"] = now_ns()
            await asyncio.wait([watcher], timeout=1.0)
            watcher.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    server.close()
    print(json.dumps(log), flush=True)


# -- the clients -----------------------------------------------------------------------------


async def one_client(
    host: str, port: int, path: str, ident: int, wait: float, left: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"prompt": f"cancel-{ident}"}).encode()
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body)
    )
    data = b""
    while b" w0" not in data:  # the first token
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError(f"stream {ident} ended before its first token: {data[:300]!r}")
        data += chunk
    deadline = time.monotonic() + wait
    with contextlib.suppress(TimeoutError):
        while (rest := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(65536), rest):
                raise RuntimeError(f"stream {ident} ended before the disconnect")
    sock = writer.get_extra_info("socket")
    left[ident] = now_ns()
    # The FIN leaves now: asyncio's close() would close the socket only at the loop's next
    # iteration (after the other clients' callbacks), which the clock would charge to the relay.
    sock.shutdown(socket.SHUT_RDWR)
    writer.close()


async def clients(
    host: str, port: int, path: str, n: int, concurrency: int, max_wait: float, seed: int
) -> dict[int, int]:
    rng = random.Random(seed)
    waits = [rng.uniform(0, max_wait) for _ in range(n)]
    left: dict[int, int] = {}
    gate = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with gate:
            await one_client(host, port, path, i, waits[i], left)

    await asyncio.gather(*(run(i) for i in range(n)))
    return left


def start_traced(upstream_url: str, out: Path) -> Proc:
    """``llmpipe serve`` as ``start_server`` starts it, under ``_cancel_trace.py`` (``--trace``)."""
    env = {**os.environ, "OPENAI_API_KEY": "x", "OPENAI_BASE_URL": upstream_url + "/v1"}
    cmd = [sys.executable, str(HERE / "_cancel_trace.py"), str(out), "serve",
           "--provider", "openai", "--base-url", upstream_url + "/v1", "--model", "m",
           "--port", "0", "--max-streams-per-client", "100000"]  # fmt: skip
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, cwd=ROOT)
    return Proc.announced(p, rb"on (http://[\d.:]+)")


SPANS = ("left", "eof", "disconnect", "up_close", "closed")
"""The stamps of one disconnect, in order (``--trace``): the client closed; the server read its
EOF; the app got ``http.disconnect``; the upstream socket was closed; the upstream read EOF."""


def report_trace(out: Path, left: dict[int, int], log: dict[str, dict[str, Any]]) -> None:
    """Where each disconnect's time went (``--trace``), on standard error: each span of
    :data:`SPANS`, llmpipe's own CPU time in its part, the collector's pauses, and the slowest
    disconnects with the task steps (of 0.15 ms or more) and collections inside them."""
    trace = json.loads(out.read_text())
    reqs, collections, steps = trace["requests"], trace["gc"], trace["steps"]
    names = [f"{a}->{b}" for a, b in itertools.pairwise(SPANS)]
    spans: dict[str, list[float]] = {name: [] for name in [*names, "disconnect->up_close CPU"]}
    rows = []
    for ident, t_left in left.items():
        rec, up = reqs.get(str(ident), {}), log.get(str(ident), {})
        stamps = [t_left, *(rec.get(k) for k in SPANS[1:-1]), up.get("closed")]
        if any(t is None for t in stamps):
            continue
        first, last = rec["disconnect"], rec["up_close"]
        parts = [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
        parts.append((rec["up_close_cpu"] - rec["disconnect_cpu"]) / 1e6)
        for values, ms in zip(spans.values(), parts, strict=True):
            values.append(ms)
        gcs = [(e - s) / 1e6 for s, e, *_ in collections if s < stamps[-1] and e > stamps[0]]
        slow = [f"{(e - s) / 1e6:.2f}/{c / 1e6:.2f} {name.rsplit('.', 1)[-1]}"
                for s, e, name, c in steps if s < last and e > first]  # fmt: skip
        rows.append(((stamps[-1] - t_left) / 1e6, ident, parts, gcs, slow))

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    say(f"  trace: {len(rows)} of {len(left)} disconnects stamped")
    for span, values in spans.items():
        say(f"    {span:26} p50 {pct(values, 50):6.2f} ms  p99 {pct(values, 99):6.2f} ms  "
            f"max {max(values, default=float('nan')):6.2f} ms")  # fmt: skip
    top = sorted(trace["garbage"].items(), key=lambda kv: -kv[1])[:30]
    say("    one young collection, objects by type: " + ", ".join(f"{k} {v}" for k, v in top))
    t0, t1 = min(left.values()), max(left.values())
    for gen in range(3):
        pauses = [(e - s, c) for s, e, g, c in collections if g == gen and t0 <= s <= t1]
        wall, cpu = max(pauses, default=(0, 0))
        total_ms = sum(w for w, _ in pauses) / 1e6
        say(f"    gc generation {gen} during the run: {len(pauses)}, longest {wall / 1e6:.2f} ms "
            f"({cpu / 1e6:.2f} ms CPU), in all {total_ms:.1f} ms")  # fmt: skip
    say(f"    slowest (total ms: {' / '.join(spans)}; gc pauses in the window, ms):")
    for total, ident, parts, gcs, slow in sorted(rows, reverse=True)[:15]:
        in_window = f"; gc {', '.join(f'{g:.2f}' for g in gcs)}" if gcs else ""
        say(f"      {total:6.2f} (#{ident}): {' / '.join(f'{p:.2f}' for p in parts)}{in_window}")
        if slow:
            say(f"        steps between disconnect and up_close (wall/CPU ms): {'; '.join(slow)}")


def measure(server: str, args: argparse.Namespace) -> list[tuple[float, int, bool]]:
    """(close latency ms, tokens after, closed by the relay) per disconnect."""
    up = subprocess.Popen(
        [sys.executable, __file__, "--upstream", "--rate", str(args.rate),
         "--seconds", str(args.seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip
    assert up.stdout is not None
    assert up.stdin is not None
    srv = None
    try:
        url = up.stdout.readline().strip()
        trace = Path(tempfile.gettempdir()) / f"llmpipe_cancel_trace_{os.getpid()}.json"
        traced = args.trace and server == "llmpipe"
        srv = start_traced(url, trace) if traced else start_server(server, url, None)
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        path = "/chat" if server.startswith("relay") else "/v1/stream"
        asyncio.run(clients(host, int(port), path, 2, 1, 0.01, 0))  # warm-up: imports, pools
        left = asyncio.run(
            clients(host, int(port), path, args.disconnects, args.concurrency, args.max_wait, 1)
        )
        time.sleep(args.seconds + 1.5)  # every answer left running has ended
    finally:
        if srv is not None:
            srv.stop()
        out, _ = up.communicate("", timeout=60)
    log = json.loads(out.strip().splitlines()[-1])
    if traced:
        report_trace(trace, left, log)
    results = []
    for ident, t_left in left.items():
        entry = log[str(ident)]
        after = sum(1 for t in entry["writes"] if t > t_left)
        closed = entry["closed"] is not None and "ended" not in entry
        end = entry["closed"] if closed else entry.get("ended", entry["closed"])
        results.append(((end - t_left) / 1e6, after, closed))
    return results


def pct(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q / 100 * len(v)))] if v else float("nan")


def verdict(by_server: dict[str, list[tuple[float, int, bool]]]) -> str:
    """The goal, judged: llmpipe's p99 against ``GOAL_MS``, and its latency and tokens after the
    disconnect against each relay's."""
    if "llmpipe" not in by_server:
        return "llmpipe was not run: no verdict."
    mine = by_server["llmpipe"]
    p99 = pct([r[0] for r in mine], 99)
    after = sum(r[1] for r in mine) / len(mine)
    met = "**met**" if p99 < GOAL_MS else "**not met**"
    text = f"Goal (p99 < {GOAL_MS:g} ms): {met} by llmpipe (p99 {p99:.1f} ms"
    text += f", {after:.2f} tokens after the disconnect on average)"
    others = []
    for server, results in by_server.items():
        if server != "llmpipe":
            their = pct([r[0] for r in results], 99)
            their_after = sum(r[1] for r in results) / len(results)
            others.append(
                f"{server}: p99 {their:.1f} ms ({their / p99:.2f}x llmpipe's), "
                f"{their_after:.2f} tokens after"
            )
    return text + ("; " + "; ".join(others) if others else "") + "."


def busy_machine(load: float) -> list[str]:
    """A note when the machine was busy before the run: three processes of ours (clients,
    server, upstream) each need a CPU at every disconnect, so the tail then measures the wait
    for one too."""
    if load < QUIET_LOAD:
        return []
    return [
        f"Not a quiet machine: 1-minute load average {load:.2f} on {os.cpu_count()} CPUs before "
        "the run started. Each disconnect wakes three processes (client, server, upstream), so "
        "p99 and max include waiting for a CPU; judge the goal on a quiet machine."
    ]


def plot(by_server: dict[str, list[tuple[float, int, bool]]]) -> None:
    with pyplot(HERE / PLOT) as plt:
        if plt is None:
            return
        for server, results in by_server.items():
            lat = sorted(r[0] for r in results)
            plt.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=server)
        plt.xscale("log")
        plt.xlabel("client disconnect → upstream connection closed, ms (log)")
        plt.ylabel("share of disconnects")
        plt.title("Cancellation: how soon the upstream is released")
        plt.legend()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_harness_arguments(parser, f"the plot ({PLOT})")
    parser.add_argument("--disconnects", type=int, default=1000, help="per server")
    parser.add_argument("--concurrency", type=int, default=10, help="clients at a time")
    parser.add_argument("--rate", type=float, default=50.0, help="upstream tokens/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each answer")
    parser.add_argument("--max-wait", type=float, default=0.5, help="after the first token")
    parser.add_argument("--servers", default="llmpipe,relay,relay-standard")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run llmpipe under _cancel_trace.py and print where each disconnect's time went",
    )
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.upstream:
        asyncio.run(upstream(args.rate, args.seconds))
        return 0
    if args.quick:
        args.disconnects, args.seconds, args.servers = 20, 1.0, "llmpipe,relay"
    load_before = os.getloadavg()[0]  # the rest of the machine's, before our processes start
    by_server: dict[str, list[tuple[float, int, bool]]] = {}
    skipped: dict[str, str] = {}
    for server in args.servers.split(","):
        if server == "relay-standard" and not uvicorn_standard():
            skipped[server] = "uvloop or httptools is not installed"
            continue
        by_server[server] = measure(server, args)
        lat = [r[0] for r in by_server[server]]
        print(f"  {server}: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms", file=sys.stderr)
    rows = []
    for server, results in by_server.items():
        lat = [r[0] for r in results]
        after = [r[1] for r in results]
        closed = sum(r[2] for r in results)
        rows.append([
            server, f"{len(results):,}", f"{closed / len(results):.1%}", f"{pct(lat, 50):.1f}",
            f"{pct(lat, 99):.1f}", "yes" if pct(lat, 99) < GOAL_MS else "**no**", f"{max(lat):.1f}",
            f"{sum(after) / len(after):.2f}", f"{max(after)}",
        ])  # fmt: skip
    rows += [[server, f"skipped: {why}", *[""] * 7] for server, why in skipped.items()]
    if args.write:
        plot(by_server)
    Summary(
        name="cancellation",
        title="Cancellation",
        claim=(
            "A client disconnects at a random point of a streamed answer: time until the relay "
            "closes its upstream connection (p50/p99), and tokens the upstream wrote after the "
            "disconnect, `llmpipe serve` against the guide relay (`benchmarks/guide_relay.py`). "
            "Goal: p99 < 10 ms."
        ),
        columns=[
            "server",
            ">disconnects",
            ">upstream closed by the relay",
            ">p50 ms",
            ">p99 ms",
            f">p99 < {GOAL_MS:g} ms",
            ">max ms",
            ">tokens after (mean)",
            ">tokens after (max)",
        ],
        rows=rows,
        notes=[
            verdict(by_server),
            *busy_machine(load_before),
            f"Upstream: {args.rate:g} tokens/s, answers of {args.seconds:g} s; clients: "
            f"{args.concurrency} at a time, each leaving 0-{args.max_wait:g} s after its first "
            "token. An upstream connection the relay never closed ends with the answer: its "
            "latency is the rest of the answer.",
            "The clock starts when a client shuts its socket down (the FIN leaves then; "
            "earlier runs stamped before asyncio's deferred close) and stops when the upstream "
            "reads EOF (it waits for it on its read side, not at its next write). "
            "`bench_cancel.py --servers llmpipe --trace` splits llmpipe's disconnects into "
            "client -> server EOF -> `http.disconnect` -> upstream socket closed -> upstream "
            "EOF, with the server's CPU time and GC pauses.",
        ],
        plots=[PLOT] if args.write else [],
        versions=versions("trio", "hypercorn", "uvicorn", "sse-starlette", "fastapi", "openai"),
        quick=args.quick,
    ).save(args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
