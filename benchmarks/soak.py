"""Soak: many concurrent streams for a while, with every fault at once; nothing may be lost.

Runs in one process: the provider emulator, a private ``redis-server`` (AOF on, so a restart
keeps what it had), and two ``llmpipe`` servers on real loopback sockets (hypercorn), one with
the memory store and one with the Redis store, both relaying to the emulator through the real
``openai`` SDK. ``--streams`` client tasks loop for ``--minutes``, each picking at random:

``live``        ``POST /v1/stream`` read to the end (SSE, decoded with llmpipe's decoder);
``disconnect``  the same, but the client leaves after a few events; the emulator must see the
                upstream request end soon after (the server cancels it);
``resume``      ``POST /v1/streams`` on either store, followed by the resuming client
                (:func:`pipeline.client.stream_events`), which this script also cuts off at
                random and reopens from its last ``seq``;
``ws``          a ``/v1/ws`` turn, interrupted at random (barge-in) or read to its end.

About one stream in five gets an upstream fault from the emulator (a reset connection or an
error event after some tokens), and the Redis server is killed (``SIGKILL``) and restarted
every ``--redis-restart-every`` seconds.

Every stream's text is then checked against the text the emulator was scripted to send for it
(each prompt carries a number; the reply is a function of it): a stream that ended normally
must have it exactly; one that ended with an error, an interrupt or a disconnect must have a
prefix of it, and an error event's ``partial_chars`` must equal what this client received. Text
outside that (a gap, a duplicate, a reordering) counts as lost bytes. A stream that does not
end within ``--stream-timeout`` counts as hung. At the end the process's trio tasks, file
descriptors and RSS must be back near their values before the traffic.

    .venv/bin/python benchmarks/soak.py --streams 40 --minutes 5 [--json]

Exit status 0 when nothing was lost, nothing hung and nothing leaked; 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import attrs
import httpx
import trio
from httpx_ws import aconnect_ws

from pipeline import Done, Error, TextDelta
from pipeline.client import ClientError, StreamStatusError, open_event_stream, start_stream
from pipeline.producers import open_backend
from pipeline.testing.emulator import (
    Emulator,
    Reply,
    RequestRecord,
    error_event_after,
    open_emulator,
    reset_after,
)
from pipeline.wire import SSEDecoder
from sinks.server import ServerConfig, create_app, get_runtime, serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import Summary, add_harness_arguments, free_port

SLACK = 16  # tasks or file descriptors over the baseline that are not a leak (see soak())
KEEP_ALIVE_GRACE = 8.0  # seconds for idle kept-alive connections to close (hypercorn: 5 s)
WORDS = ("alpha", "beta", "gamma", "naïve", "café", "日本語", "🎉", "delta", "x", "stream")


def text_for(n: int) -> list[str]:
    """The tokens the emulator sends for prompt number ``n`` (a function of ``n`` alone)."""
    rng = random.Random(n)
    return [f"{rng.choice(WORDS)}{n % 7} " for _ in range(rng.randint(15, 60))]


def prompt_for(n: int, fault: str) -> str:
    return f"soak {n} {fault}"


def reply_for(record: RequestRecord) -> Reply:
    """The emulator's answer: the tokens of the prompt's number, its fault, 400 tokens/s."""
    messages = record.body.get("messages") or []
    _, n, fault = str(messages[-1]["content"]).split()
    tokens = text_for(int(n))
    kind, _, at = fault.partition(":")
    fault_obj: Any = None
    if kind == "reset":
        fault_obj = reset_after(int(at))
    elif kind == "error":
        fault_obj = error_event_after(int(at), "Overloaded", error_type="server_error")
    return Reply(tokens, tokens_per_second=400, fault=fault_obj)


@attrs.define
class Tally:
    streams: Counter[str] = attrs.Factory(Counter)
    outcomes: Counter[str] = attrs.Factory(Counter)
    faults: Counter[str] = attrs.Factory(Counter)
    bytes_checked: int = 0
    bytes_lost: int = 0
    hung: int = 0
    failures: list[str] = attrs.Factory(list)

    def check(
        self, scenario: str, n: int, got: str, ended: str, partial: int | None, kind: str = ""
    ) -> None:
        """``got`` is what the client received; ``ended`` done | error | cut (a disconnect or
        an interrupt); ``partial`` an error event's partial_chars."""
        expected = "".join(text_for(n))
        self.outcomes[f"{scenario}:{ended}"] += 1
        self.bytes_checked += len(got.encode())
        ok = got == expected if ended == "done" else expected.startswith(got)
        if partial is not None and partial != len(got):
            self.failures.append(
                f"{scenario} #{n}: {kind} error's partial_chars {partial}, received {len(got)}"
            )
        if not ok:
            common = _common_prefix(got, expected)
            self.bytes_lost += len(got[common:].encode()) + (
                len(expected[common:].encode()) if ended == "done" else 0
            )
            self.failures.append(f"{scenario} #{n} ({ended}): text differs at char {common}")


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@attrs.define
class RedisProcess:
    """A private redis-server with AOF, restartable on the same port."""

    port: int
    directory: Path
    process: trio.Process | None = None
    restarts: int = 0

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            ],
            stdout=DEVNULL,
            stderr=DEVNULL,
        )  # fmt: skip
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                    await stream.send_all(b"PING\r\n")
                    answer = await stream.receive_some(64)
                    await stream.aclose()
                    if answer.startswith(b"+PONG"):
                        return
                except OSError:
                    pass
                await trio.sleep(0.05)

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()
            self.process = None


@asynccontextmanager
async def open_redis() -> AsyncIterator[RedisProcess]:
    with tempfile.TemporaryDirectory(prefix="llmpipe-soak-") as tmp:
        redis = RedisProcess(free_port(), Path(tmp))
        await redis.start()
        try:
            yield redis
        finally:
            with trio.CancelScope(shield=True):
                await redis.kill()


async def read_sse(response: httpx.Response, on_event: Callable[[dict[str, Any]], bool]) -> None:
    """Feed each event's JSON to ``on_event`` until it returns True or the body ends."""
    decoder = SSEDecoder()
    async for chunk in response.aiter_bytes():
        for event in decoder.feed(chunk):
            if on_event(json.loads(event.data)):
                return


@attrs.define
class Soak:
    live_url: str
    redis_url: str | None
    emulator_records: dict[int, RequestRecord]
    tally: Tally
    rng: random.Random
    stream_timeout: float
    counter: int = 0

    def next_stream(self) -> tuple[int, str]:
        self.counter += 1
        n = self.counter
        roll = self.rng.random()
        fault = "none"
        if roll < 0.1:
            fault = f"reset:{self.rng.randint(1, 12)}"
        elif roll < 0.2:
            fault = f"error:{self.rng.randint(1, 12)}"
        self.tally.faults[fault.split(":")[0]] += 1
        return n, fault

    async def run_one(self, client: httpx.AsyncClient) -> None:
        scenario = self.rng.choice(["live", "disconnect", "resume", "resume", "ws"])
        n, fault = self.next_stream()
        self.tally.streams[scenario] += 1
        body = {"messages": [{"role": "user", "content": prompt_for(n, fault)}]}
        with trio.move_on_after(self.stream_timeout) as scope:
            if scenario in ("live", "disconnect"):
                await self.live(client, scenario, n, body)
            elif scenario == "resume":
                await self.resume(client, n, body)
            else:
                await self.ws(client, n, body)
        if scope.cancelled_caught:
            self.tally.hung += 1
            self.tally.failures.append(f"{scenario} #{n} ({fault}): no end in time")

    async def live(self, client: httpx.AsyncClient, scenario: str, n: int, body: Any) -> None:
        got: list[str] = []
        end: list[tuple[str, int | None]] = []
        leave_after = self.rng.randint(1, 20) if scenario == "disconnect" else None

        def on_event(e: dict[str, Any]) -> bool:
            if e["type"] == "text":
                got.append(e["text"])
                return leave_after is not None and len(got) >= leave_after
            if e["type"] == "done":
                end.append(("done", None))
                return True
            if e["type"] == "error":
                end.append(("error", e.get("partial_chars")))
                return True
            return False

        async with client.stream("POST", self.live_url + "/v1/stream", json=body) as response:
            if response.status_code != 200:
                self.tally.failures.append(f"{scenario} #{n}: HTTP {response.status_code}")
                return
            await read_sse(response, on_event)
        ended, partial = end[0] if end else ("cut", None)
        self.tally.check(scenario, n, "".join(got), ended, partial)
        if ended == "cut" and scenario == "disconnect":
            # The server must cancel the upstream request: the emulator sees it end.
            with trio.move_on_after(5) as scope:
                while (record := self.emulator_records.get(n)) is None:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # (a dict another task fills; polling is enough)
                await record.ended.wait()
            if scope.cancelled_caught:
                self.tally.failures.append(f"disconnect #{n}: the upstream request went on")

    async def resume(self, client: httpx.AsyncClient, n: int, body: Any) -> None:
        base = self.redis_url if self.redis_url and self.rng.random() < 0.5 else self.live_url
        store = "redis" if base == self.redis_url else "memory"
        got: list[str] = []
        last = 0
        try:
            events_url = await start_stream(base, body, client=client)
        except StreamStatusError as exc:
            # Refused before it started (503 while the store restarts): a clear answer the
            # client can retry, nothing lost.
            self.tally.outcomes[f"resume-{store}:refused {exc.status_code}"] += 1
            if exc.status_code != 503:
                self.tally.failures.append(f"resume-{store} #{n}: not started: {exc}")
            return
        while True:
            cut_after = self.rng.randint(1, 30)  # this client's own disconnect
            seen = 0
            try:
                async with open_event_stream(
                    events_url, client=client, last_event_id=last or None, read_timeout=10
                ) as events:
                    async for event in events:
                        last = max(last, event.seq)
                        if isinstance(event, TextDelta):
                            got.append(event.text)
                        elif isinstance(event, Done):
                            self.tally.check(f"resume-{store}", n, "".join(got), "done", None)
                            return
                        elif isinstance(event, Error):
                            self.tally.check(
                                f"resume-{store}",
                                n,
                                "".join(got),
                                "error",
                                event.partial_chars,
                                event.kind,
                            )
                            return
                        seen += 1
                        if seen >= cut_after:
                            break  # leave; reopen from `last`
            except ClientError as exc:
                self.tally.check(f"resume-{store}", n, "".join(got), "cut", None)
                self.tally.failures.append(f"resume-{store} #{n}: the client gave up: {exc}")
                return

    async def ws(self, client: httpx.AsyncClient, n: int, body: Any) -> None:
        got: list[str] = []
        interrupt_after = self.rng.randint(1, 25) if self.rng.random() < 0.5 else None
        ws_url = self.live_url + "/v1/ws"
        async with aconnect_ws(ws_url, client) as ws:
            await ws.send_json({"type": "request", **body})
            sent_interrupt = False
            while True:
                message = await ws.receive_json()
                kind = message.get("type")
                if kind == "text":
                    got.append(message["text"])
                    if interrupt_after and len(got) >= interrupt_after and not sent_interrupt:
                        await ws.send_json({"type": "interrupt"})
                        sent_interrupt = True
                elif kind == "done":
                    self.tally.check("ws", n, "".join(got), "done", None)
                    return
                elif kind == "error" and "turn" in message:
                    self.tally.check("ws", n, "".join(got), "error", message.get("partial_chars"))
                    return
                elif kind == "interrupted":
                    if message.get("delivered_chars") != len("".join(got)):
                        self.tally.failures.append(
                            f"ws #{n}: delivered_chars {message.get('delivered_chars')}, "
                            f"received {len(''.join(got))}"
                        )
                    self.tally.check("ws", n, "".join(got), "cut", None)
                    return
                elif kind == "error":
                    self.tally.failures.append(f"ws #{n}: protocol error {message}")
                    return


def _pooled(emu: Emulator) -> int:
    """The emulator's open connections (the provider client's pool, kept alive)."""
    return sum(c.closed_at is None for c in emu.connections)


def _tasks(emu: Emulator) -> int:
    """trio's living tasks, less the emulator's one per pooled connection."""
    return trio.lowlevel.current_statistics().tasks_living - _pooled(emu)


def _fds(emu: Emulator) -> int:
    """Open file descriptors, less the two per pooled connection (both ends are here)."""
    return len(os.listdir("/proc/self/fd")) - 2 * _pooled(emu)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("OPENAI_API_KEY", "soak-key")
    records: dict[int, RequestRecord] = {}
    tally = Tally()

    def reply(record: RequestRecord) -> Reply:
        records[int(str(record.body["messages"][-1]["content"]).split()[1])] = record
        return reply_for(record)

    config = ServerConfig(
        max_streams_per_client=10_000,
        max_generations_per_client=10_000,
        heartbeat_interval=1.0,
        idle_cancel_after=30.0,
        shutdown_grace=2.0,
    )
    async with (
        open_emulator(reply) as emu,
        open_redis() as redis,
        open_backend("openai", base_url=emu.openai_base_url, model="soak") as backend,
        trio.open_nursery() as servers,
    ):
        memory_app = create_app(backend, config)
        redis_app = create_app(
            backend, attrs.evolve(config, store_url=f"redis://127.0.0.1:{redis.port}")
        )
        memory_port = await servers.start(serve, memory_app, "127.0.0.1", 0)
        redis_port = await servers.start(serve, redis_app, "127.0.0.1", 0)
        live_url = f"http://127.0.0.1:{memory_port}"
        redis_url = f"http://127.0.0.1:{redis_port}" if not args.no_redis else None
        rng = random.Random(args.seed)
        run = Soak(live_url, redis_url, records, tally, rng, args.stream_timeout)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=args.streams)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            # Warm up (imports; the connection pools grow to the concurrency), then take the
            # baseline.
            warm = {"messages": [{"role": "user", "content": prompt_for(0, "none")}]}
            async with trio.open_nursery() as nursery:
                for _ in range(args.streams):
                    nursery.start_soon(run.live, client, "live", 0, warm)
            tally.outcomes.clear()
            gc.collect()
            # The provider's connection pool may grow with the concurrency: each connection it
            # keeps is a serving task in the in-process emulator (and two fds), not a leak.
            base = (_tasks(emu), _fds(emu), _rss_mb())
            deadline = trio.current_time() + args.minutes * 60
            started = time.monotonic()

            async def worker() -> None:
                while trio.current_time() < deadline:
                    await run.run_one(client)

            async def chaos() -> None:
                while True:
                    await trio.sleep(args.redis_restart_every)
                    await redis.kill()
                    await trio.sleep(0.5)
                    await redis.start()
                    redis.restarts += 1

            async with trio.open_nursery() as outer:
                if redis_url is not None:
                    outer.start_soon(chaos)
                async with trio.open_nursery() as workers:
                    for _ in range(args.streams):
                        workers.start_soon(worker)
                outer.cancel_scope.cancel()  # the workers are done: so is the chaos
            elapsed = time.monotonic() - started
        # Everything the traffic opened must be gone: the servers' streams, tasks, sockets.
        # (a generation whose store restarted may retry its writes for store_retry_for, 30 s)
        with trio.move_on_after(60):
            while any(  # noqa: ASYNC110 (polling the apps' counters)
                get_runtime(app).active or get_runtime(app).generations
                for app in (memory_app, redis_app)
            ):
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        # A connection whose last response ended whole stays open, idle, until the server's
        # keep-alive timeout (hypercorn's 5 s) closes it: give them that long to go.
        with trio.move_on_after(KEEP_ALIVE_GRACE):
            while _tasks(emu) > base[0] + SLACK or _fds(emu) > base[1] + SLACK:  # noqa: ASYNC110
                await trio.sleep(0.25)
        gc.collect()
        after = (_tasks(emu), _fds(emu), _rss_mb())
        servers.cancel_scope.cancel()
    # A leak grows with the streams (over a thousand here): a few tasks or fds more than the
    # baseline (connections the pools keep on either side, timers) are within SLACK.
    leaks = []
    if after[0] > base[0] + SLACK:
        leaks.append(f"trio tasks {base[0]} -> {after[0]}")
    if after[1] > base[1] + SLACK:
        leaks.append(f"file descriptors {base[1]} -> {after[1]}")
    if after[2] > base[2] + args.rss_slack_mb:
        leaks.append(f"RSS {base[2]:.0f} -> {after[2]:.0f} MB")
    return {
        "streams": sum(tally.streams.values()),
        "by_scenario": dict(tally.streams),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "faults_injected": {
            "upstream_reset": tally.faults["reset"],
            "upstream_error_event": tally.faults["error"],
            "redis_restarts": redis.restarts,
            "client_disconnects": tally.outcomes["disconnect:cut"]
            + sum(v for k, v in tally.outcomes.items() if k.startswith("resume")),
            "ws_interrupts": tally.outcomes["ws:cut"],
        },
        "bytes_checked": tally.bytes_checked,
        "bytes_lost": tally.bytes_lost,
        "hung": tally.hung,
        "failures": tally.failures[:20],
        "failure_count": len(tally.failures),
        "baseline": {"tasks": base[0], "fds": base[1], "rss_mb": round(base[2], 1)},
        "after": {"tasks": after[0], "fds": after[1], "rss_mb": round(after[2], 1)},
        "leaks": leaks,
        "seconds": round(elapsed, 1),
    }


def summarise(result: dict[str, Any], args: argparse.Namespace) -> Summary:
    """The harness's section: what was injected, what was checked, what was lost."""
    faults = result["faults_injected"]
    rows = [
        ["streams", f"{result['streams']:,}"],
        ["upstream faults (resets, error events)", f"{faults['upstream_reset']:,}, "
         f"{faults['upstream_error_event']:,}"],
        ["Redis restarts (SIGKILL)", str(faults["redis_restarts"])],
        ["client disconnects, WebSocket interrupts", f"{faults['client_disconnects']:,}, "
         f"{faults['ws_interrupts']:,}"],
        ["bytes checked", f"{result['bytes_checked']:,}"],
        ["**bytes lost**", f"**{result['bytes_lost']:,}**"],
        ["hung streams, other failures", f"{result['hung']}, {result['failure_count']}"],
        ["leaks (tasks, fds, RSS back to baseline)", ", ".join(result["leaks"]) or "none"],
    ]  # fmt: skip
    return Summary(
        name="soak",
        title="Soak: nothing lost under every fault at once",
        claim=(
            f"{args.streams} client tasks for {args.minutes:g} min against two servers (memory "
            "and Redis stores) relaying the provider emulator: live streams, disconnects, "
            "resumes cut at random, WebSocket interrupts, upstream faults and Redis killed and "
            f"restarted every {args.redis_restart_every:g} s; every stream's text checked "
            "against the emulator's script. Goal: 0 bytes lost, nothing hung, no leak."
        ),
        columns=["", "value"],
        rows=rows,
        notes=[f for f in result["failures"][:5]],
        quick=args.quick,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=40, help="concurrent client tasks")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stream-timeout", type=float, default=60.0)
    parser.add_argument("--redis-restart-every", type=float, default=20.0)
    parser.add_argument("--rss-slack-mb", type=float, default=40.0)
    parser.add_argument("--no-redis", action="store_true", help="the memory store only")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_harness_arguments(parser, "nothing (the harness keeps the summary)")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.minutes, args.redis_restart_every = 4, 0.2, 5.0
    result = trio.run(soak, args)
    ok = not result["bytes_lost"] and not result["hung"] and not result["leaks"]
    ok = ok and not result["failure_count"]
    if args.summary is not None:
        summarise(result, args).save(args.summary, echo=not args.json)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
