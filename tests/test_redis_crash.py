"""Redis killed with SIGKILL (AOF on) in the middle of resumable generations, then restarted on
the same port: every stream ends, in order, with nothing lost or repeated.

* Redis back within the generation's retry bound: the generation goes on and ends with ``done``.
* Redis back after it: the generation gives up; its stream ends with a retryable error.
* The owner gone for good (its lease ran out while Redis was down): a reader in another app ends
  the stream (no heartbeats forever), and ``DELETE`` ends it too (204, not a 202 that does
  nothing).
* The server process that runs the generation and Redis both killed with SIGKILL: once Redis is
  back, a reader served by another process ends the stream after the owner's lease.
"""

from __future__ import annotations

import gc
import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from test_http_app import BODY, factory_of, read_sse, running

from pipeline import TextDelta
from pipeline.producers import ScriptedProducer
from pipeline.stores import RedisStore, StoreUnavailable
from pipeline.wire import SSEDecoder, SSEEvent
from sinks.server import ServerConfig, create_app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    # coredis leaves anyio memory streams of its dead connections unclosed when Redis dies.
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


class RestartableRedis:
    """A private redis-server with AOF (``appendfsync always``) in ``path``, on a fixed port, that
    a test can kill with SIGKILL and start again on the same port with the same data."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from conftest import _redis_ping

        exe = shutil.which("redis-server")
        assert exe is not None, "redis-server is not installed (apt-get install -y redis-server)"
        self.proc = subprocess.Popen(
            [
                exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.path),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _redis_ping(self.port):
            assert self.proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    from conftest import _free_port

    server = RestartableRedis(tmp_path, _free_port())
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.kill()
        # coredis drops the anyio streams of connections Redis broke without closing them:
        # collect them here, where their ResourceWarnings are expected, not in a later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


ROOT = Path(__file__).resolve().parent.parent
WORDS = [f"w{i} " for i in range(200)]


def _config(
    redis: RestartableRedis, *, store_retry_for: float = 30.0, owner_lease: float = 15.0
) -> ServerConfig:
    return ServerConfig(
        store_url=redis.url,
        heartbeat_interval=0.3,
        idle_cancel_after=60.0,
        store_retry_for=store_retry_for,
        owner_lease=owner_lease,
    )


async def _read_all(client: httpx.AsyncClient, url: str, after: str) -> list[SSEEvent]:
    """Follow ``url`` from ``after`` to the end, reconnecting as a client does when the server
    ends the response with a retryable ``store`` error."""
    out: list[SSEEvent] = []
    while True:
        try:
            async with client.stream("GET", url, headers={"Last-Event-ID": after}) as r:
                if r.status_code != 200:
                    await trio.sleep(0.2)
                    continue
                _, events = await read_sse(r)
        except httpx.HTTPError:
            await trio.sleep(0.2)
            continue
        for ev in events:
            data = json.loads(ev.data)
            if ev.event == "error" and data["kind"] == "store" and not ev.id:
                break  # the reader's own error frame: the store is down, reconnect
            out.append(ev)
            after = ev.id
            if ev.event in ("done", "error"):
                return out
        await trio.sleep(0.2)


def _check_in_order(events: list[SSEEvent]) -> None:
    """Seqs increase (the generation's spill file merges the deltas that wait while Redis is
    down, so they may skip numbers; the text checks say nothing was lost)."""
    seqs = [int(e.id) for e in events]
    assert seqs == sorted(set(seqs)), seqs


async def _crash_mid_generation(
    redis: RestartableRedis, down_for: float, *, store_retry_for: float, owner_lease: float
) -> list[SSEEvent]:
    """Start a generation, read 20 events, SIGKILL Redis for ``down_for`` s, restart it, and
    read the rest: every event the stream ends up with, checked to be in order."""
    factory = factory_of(lambda r: ScriptedProducer.from_deltas(WORDS, delay=0.01))
    config = _config(redis, store_retry_for=store_retry_for, owner_lease=owner_lease)
    app = create_app(factory, config)
    async with running(app) as url, httpx.AsyncClient(timeout=10) as client:
        created = (await client.post(url + "/v1/streams", json=BODY)).json()
        events_url = url + created["events_url"]
        async with client.stream("GET", events_url) as r:
            _, first = await read_sse(r, stop=lambda evs: len(evs) >= 20)
        first = first[:20]
        redis.kill()
        await trio.sleep(down_for)
        await trio.to_thread.run_sync(redis.start)
        with trio.fail_after(40):
            rest = await _read_all(client, events_url, first[-1].id)
    events = first + rest
    _check_in_order(events)
    return events


async def test_redis_back_within_the_bound_the_generation_goes_on(
    redis: RestartableRedis,
) -> None:
    events = await _crash_mid_generation(redis, 1.5, store_retry_for=20.0, owner_lease=5.0)
    assert events[-1].event == "done"
    assert "".join(json.loads(e.data).get("text", "") for e in events) == "".join(WORDS)


async def test_redis_back_after_the_bound_the_stream_ends_retryable(
    redis: RestartableRedis,
) -> None:
    # Down longer than store_retry_for: the generation gives up, ends the stream once back.
    events = await _crash_mid_generation(redis, 2.0, store_retry_for=1.0, owner_lease=30.0)
    end = json.loads(events[-1].data)
    assert events[-1].event == "error"
    assert end["retryable"] is True
    assert end["kind"] == "store"


async def test_an_orphaned_stream_is_ended_by_a_reader_and_by_delete(
    redis: RestartableRedis,
) -> None:
    # Two streams whose owner died while Redis was down: created with a short lease, written
    # to, never renewed; Redis killed and restarted (the AOF keeps the lease's expiry).
    async with RedisStore(redis.url) as store:
        for sid in ("read-me", "delete-me"):
            await store.create(sid, lease=0.5)
            await store.append(sid, [TextDelta("x", seq=1)])
    redis.kill()
    async with RedisStore(redis.url) as down:
        with pytest.raises(StoreUnavailable):
            await down.info("read-me")
    await trio.sleep(0.6)
    await trio.to_thread.run_sync(redis.start)

    app = create_app(factory_of(lambda r: ScriptedProducer.from_deltas(WORDS)), _config(redis))
    async with running(app) as url, httpx.AsyncClient(timeout=10) as client:
        with trio.fail_after(10):  # not heartbeats forever
            resp = await client.get(url + "/v1/streams/read-me/events")
        events = SSEDecoder().feed(resp.content)
        assert [e.event for e in events] == ["text", "error"]
        end = json.loads(events[-1].data)
        assert (end["kind"], end["retryable"]) == ("incomplete", True)
        assert end["partial_chars"] == 1  # the text the stream holds ("x")

        resp = await client.delete(url + "/v1/streams/delete-me")
        assert resp.status_code == 204
        resp = await client.get(url + "/v1/streams/delete-me/events")
        end = json.loads(SSEDecoder().feed(resp.content)[-1].data)
        assert (end["kind"], end["partial_chars"]) == ("cancelled", 1)


# A server process that owns the generations it starts (lease 1 s), on a free port it prints.
_OWNER = """
import functools, sys, trio
from contextlib import asynccontextmanager
from pipeline.producers import ScriptedProducer
from pipeline.stores import RedisStore
from sinks.server import ServerConfig, create_app, serve

@asynccontextmanager
async def factory(request):
    yield ScriptedProducer.from_deltas([f"w{i} " for i in range(10_000)], delay=0.01)

async def main():
    async with RedisStore(sys.argv[1]) as store:
        config = ServerConfig(store_url=sys.argv[1], owner_lease=1.0)
        app = create_app(factory, config, store=store)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, app, "127.0.0.1", 0)
            print(port, flush=True)

trio.run(main)
"""


@pytest.fixture
def owner(redis: RestartableRedis) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The owner server process (:data:`_OWNER`) on ``redis``, and its URL; killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER, redis.url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_the_owner_process_and_redis_killed_a_reader_elsewhere_ends_the_stream(
    redis: RestartableRedis, owner: tuple[subprocess.Popen[str], str]
) -> None:
    proc, owner_url = owner
    async with httpx.AsyncClient(timeout=10) as client:
        created = (await client.post(owner_url + "/v1/streams", json=BODY)).json()
        async with client.stream("GET", owner_url + created["events_url"]) as r:
            _, first = await read_sse(r, stop=lambda evs: len(evs) >= 10)
    proc.send_signal(signal.SIGKILL)
    redis.kill()
    await trio.to_thread.run_sync(redis.start)

    app = create_app(factory_of(lambda r: ScriptedProducer.from_deltas(WORDS)), _config(redis))
    async with running(app) as url, httpx.AsyncClient(timeout=10) as client:
        with trio.fail_after(15):  # the lease (1 s) and a heartbeat, not forever
            resp = await client.get(
                url + created["events_url"], headers={"Last-Event-ID": first[9].id}
            )
    rest = SSEDecoder().feed(resp.content)
    _check_in_order(first[:10] + rest)
    assert rest[-1].event == "error"
    end = json.loads(rest[-1].data)
    assert (end["kind"], end["retryable"]) == ("incomplete", True)
    text = "".join(json.loads(e.data)["text"] for e in first[:10] + rest if e.event == "text")
    assert end["partial_chars"] == len(text)
