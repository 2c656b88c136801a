"""Clients that stay connected but stop reading: the send deadline (``send_timeout``) and the
memory a frozen client costs, on a real hypercorn server with raw sockets that never read
(HTTP streams, and WebSocket turns through a wsproto client).

Real time (sockets); every wait is bounded.
"""

from __future__ import annotations

import gc
import json
import socket
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
from http_kit import eventually, factory_of, running
from httpx_ws import aconnect_ws
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from pipeline import Producer
from pipeline.testing import CountingProducer
from sinks.server import ServerConfig, StreamRequest, create_app, get_runtime

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}


async def frozen_client(
    port: int, method: str, path: str, body: bytes = b""
) -> trio.socket.SocketType:
    """A raw HTTP/1.1 client that sends its request and never reads (small receive buffer)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    await sock.send((head + "\r\n").encode() + body)
    return sock


async def until_parked(producers: list[CountingProducer], within: float = 20) -> None:
    """Until every producer waits on its full channel and its count has stopped moving."""
    with trio.fail_after(within):
        last: list[int] = []
        while True:
            now = [p.emitted for p in producers]
            parked = all(p.emitted and p.attempted == p.emitted + 1 for p in producers)
            if parked and now == last:
                return
            last = now
            await trio.sleep(0.3)


async def frozen_clients_are_given_up(
    connect: Callable[[int, dict[str, Any]], Awaitable[trio.socket.SocketType]],
    policy: str,
    label: str,
) -> None:
    """Four clients (``connect(port, request)``) freeze on endless generations. Until the send
    deadline each costs this process at most its buffer budget plus the write in flight: what
    the server holds for each (tracemalloc, after gc) once every producer is parked. Then the
    streams are given up: each producer is cancelled, the slots are free (the WebSocket
    sessions' too) and ``llmpipe_frozen_clients`` counts them."""
    k, max_bytes, send_timeout = 4, 32 * 1024, 2.0
    producers: list[CountingProducer] = []

    def make(request: StreamRequest) -> Producer:
        producers.append(CountingProducer(text="x" * 1000))
        return producers[-1]

    app = create_app(factory_of(make), ServerConfig(send_timeout=send_timeout))
    runtime = get_runtime(app)
    request = {**BODY, "buffering": {"policy": policy, "max_bytes": max_bytes}}
    async with running(app) as url:
        port = int(url.rsplit(":", 1)[1])
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            socks = [await connect(port, request) for _ in range(k)]
            await eventually(lambda: len(producers) == k, within=5)
            if policy != "spill":  # spill runs 16 MiB ahead on disk before the producer waits
                await until_parked(producers)
            else:
                await trio.sleep(0.5)
            gc.collect()
            per_client = (tracemalloc.get_traced_memory()[0] - base) / k
        finally:
            tracemalloc.stop()
        print(f"{label}{policy}: {per_client / 1024:.0f} KiB per frozen client")
        # The budget, the batch being written (its frames), hypercorn's and h11's copies of it.
        assert per_client < 4 * max_bytes + 256 * 1024, per_client
        for ch in runtime.metrics.live.channels:
            assert ch.statistics().bytes_queued <= max_bytes
        await eventually(lambda: all(p.closed_at is not None for p in producers), within=40)
        assert all(p.cancelled for p in producers)
        await eventually(lambda: runtime.active == 0 and runtime.websockets_active == 0, within=10)
        async with httpx.AsyncClient() as client:
            text = (await client.get(url + "/metrics")).text
        assert metric(text, "llmpipe_frozen_clients_total") == k
        assert metric(text, "llmpipe_streams_active") == 0
        for s in socks:
            s.close()


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["coalesce", "block", "spill"])
async def test_frozen_clients_memory_is_bounded_then_given_up(policy: str) -> None:
    """Frozen HTTP streams: bounded memory each, then given up (``frozen_clients_are_given_up``)."""

    def connect(port: int, request: dict[str, Any]) -> Awaitable[trio.socket.SocketType]:
        return frozen_client(port, "POST", "/v1/stream", json.dumps(request).encode())

    await frozen_clients_are_given_up(connect, policy, "")


async def test_fail_policy_ends_a_frozen_stream_with_overflow() -> None:
    """Under ``fail`` the deadline ends the stream at once with an ``overflow`` error, even
    while its buffer still has room (the producer is slow and far from filling it)."""
    producer = CountingProducer(text="y" * 4000, delay=0.002)
    app = create_app(factory_of(lambda r: producer), ServerConfig(send_timeout=0.5))
    runtime = get_runtime(app)
    body = json.dumps({**BODY, "buffering": {"policy": "fail", "max_bytes": 1 << 24}}).encode()
    async with running(app) as url:
        port = int(url.rsplit(":", 1)[1])
        sock = await frozen_client(port, "POST", "/v1/stream", body)
        await eventually(lambda: producer.closed_at is not None, within=20)
        assert producer.cancelled
        await eventually(lambda: runtime.active == 0, within=5)
        async with httpx.AsyncClient() as client:
            text = (await client.get(url + "/metrics")).text
        assert metric(text, 'llmpipe_errors_total{kind="overflow"}') == 1
        assert metric(text, "llmpipe_frozen_clients_total") == 1
        sock.close()


async def test_frozen_resume_reader_is_given_up_and_the_generation_goes_on() -> None:
    """A resume reader that freezes is given up at the deadline; its generation, which writes
    into the store, is not slowed and goes on to its end."""
    producer = CountingProducer(text="z" * 2000, count=6000)
    app = create_app(
        factory_of(lambda r: producer), ServerConfig(send_timeout=0.5, idle_cancel_after=30)
    )
    runtime = get_runtime(app)
    async with running(app) as url, httpx.AsyncClient() as client:
        port = int(url.rsplit(":", 1)[1])
        created = (await client.post(url + "/v1/streams", json=BODY)).json()
        sock = await frozen_client(port, "GET", created["events_url"])
        await eventually(lambda: runtime.active == 1, within=5)
        await eventually(lambda: runtime.active == 0, within=20)
        text = (await client.get(url + "/metrics")).text
        assert metric(text, "llmpipe_frozen_clients_total") == 1
        await eventually(lambda: producer.closed_at is not None, within=20)
        assert not producer.cancelled
        assert producer.emitted == 6000
        sock.close()


# -- WebSocket: the same send deadline ---------------------------------------------------------


async def frozen_ws_client(port: int, request: dict[str, Any]) -> trio.socket.SocketType:
    """A real WebSocket client (wsproto over a raw socket with a small receive buffer): it
    opens ``/v1/ws``, sends one ``request`` frame and never reads again."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    ws = WSConnection(ConnectionType.CLIENT)
    await sock.send(ws.send(Request(host="t", target="/v1/ws")))
    with trio.fail_after(5):
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            ws.receive_data(await sock.recv(4096))
    await sock.send(ws.send(TextMessage(json.dumps({"type": "request", **request}))))
    return sock


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["coalesce", "block", "spill"])
async def test_frozen_websocket_clients_memory_is_bounded_then_given_up(policy: str) -> None:
    """Frozen WebSocket clients during a turn: bounded memory each (the frame in flight), then
    each turn is given up as an HTTP stream is, its connection slot free too."""
    await frozen_clients_are_given_up(frozen_ws_client, policy, "websocket ")


async def test_fail_policy_ends_a_frozen_websocket_turn_with_overflow() -> None:
    """Under ``fail`` the deadline ends the turn at once with an ``overflow`` error while the
    buffer still has room, and the session ends (its connection slot is free)."""
    producer = CountingProducer(text="y" * 4000, delay=0.002)
    app = create_app(factory_of(lambda r: producer), ServerConfig(send_timeout=0.5))
    runtime = get_runtime(app)
    request = {**BODY, "buffering": {"policy": "fail", "max_bytes": 1 << 24}}
    async with running(app) as url:
        port = int(url.rsplit(":", 1)[1])
        sock = await frozen_ws_client(port, request)
        await eventually(lambda: producer.closed_at is not None, within=20)
        assert producer.cancelled
        await eventually(lambda: runtime.active == 0 and runtime.websockets_active == 0, within=5)
        async with httpx.AsyncClient() as client:
            text = (await client.get(url + "/metrics")).text
        assert metric(text, 'llmpipe_errors_total{kind="overflow"}') == 1
        assert metric(text, "llmpipe_frozen_clients_total") == 1
        sock.close()


async def test_a_websocket_client_that_reads_is_not_given_up() -> None:
    """A client that reads, however slowly the turn goes, is never given up: a turn longer
    than many send deadlines ends with ``done`` and nothing counts as frozen."""
    producer = CountingProducer(text="w" * 100, count=200, delay=0.005)
    app = create_app(factory_of(lambda r: producer), ServerConfig(send_timeout=0.2))
    async with running(app) as url, httpx.AsyncClient() as client:
        async with aconnect_ws(url + "/v1/ws", client) as ws:
            await ws.send_json({"type": "request", **BODY})
            chars = 0
            while (event := await ws.receive_json())["type"] != "done":
                chars += len(event.get("text", ""))
        assert chars == 200 * 100
        text = (await client.get(url + "/metrics")).text
        assert metric(text, "llmpipe_frozen_clients_total") == 0
