"""The HTTP app on a real hypercorn server (127.0.0.1, port 0) with real httpx clients.

Real time throughout (sockets are involved); every wait is bounded by a short ``fail_after``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from http_kit import eventually, factory_of, running

from pipeline import (
    ChannelOverflowError,
    ConfigError,
    ConsumerGone,
    Done,
    Error,
    LLMPipeError,
    Producer,
    ProducerConnectionError,
    ProducerStatusError,
    TextDelta,
    event_from_json,
)
from pipeline.producers import OpenAIChatProducer, RetryPolicy, openai_client
from pipeline.stores import MemoryStore, StoreError, StoreFull
from pipeline.testing import CountingProducer, ScriptedProducer, Step
from pipeline.testing.emulator import Reply
from pipeline.wire import SSEDecoder, SSEEvent
from sinks.server import (
    RequestError,
    ServerConfig,
    StreamRequest,
    create_app,
    get_runtime,
)
from sinks.server._errors import (
    ClientGone,
    InvalidToken,
    MissingToken,
    NotFound,
    Overloaded,
    RateLimited,
    ShuttingDown,
    error_reply,
)

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}


async def read_sse(
    response: httpx.Response, stop: Callable[[list[SSEEvent]], bool] | None = None
) -> tuple[bytes, list[SSEEvent]]:
    """Read SSE until the body ends (or ``stop(events)``); returns the raw bytes and events."""
    decoder = SSEDecoder()
    raw = bytearray()
    events: list[SSEEvent] = []
    async for chunk in response.aiter_raw():
        raw += chunk
        events.extend(decoder.feed(chunk))
        if stop is not None and stop(events):
            break
    return bytes(raw), events


async def stalled_client(port: int, body: bytes) -> trio.socket.SocketType:
    """A raw client that sends ``POST /v1/stream`` and never reads (small receive buffer)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    head = (
        "POST /v1/stream HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await sock.send(head + body)
    return sock


def payloads(events: list[SSEEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events]


# -- the error table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "error", "headers"),
    [
        (
            RequestError("messages", "expected a non-empty list"),
            400,
            {
                "type": "invalid_request",
                "field": "messages",
                "message": "messages: expected a non-empty list",
            },
            {},
        ),
        (
            RequestError("frame", "at most 10 bytes", status=413),
            413,
            {"type": "invalid_request", "field": "frame", "message": "frame: at most 10 bytes"},
            {},
        ),
        (ConfigError("bad"), 400, {"type": "invalid_request", "message": "bad"}, {}),
        (
            MissingToken("missing"),
            401,
            {"type": "unauthorized", "message": "missing"},
            {"WWW-Authenticate": 'Bearer realm="llmpipe"'},
        ),
        (
            InvalidToken("invalid"),
            401,
            {"type": "unauthorized", "message": "invalid"},
            {"WWW-Authenticate": 'Bearer realm="llmpipe", error="invalid_token"'},
        ),
        (
            NotFound("no stream", id="abc"),
            404,
            {"type": "not_found", "message": "no stream", "id": "abc"},
            {},
        ),
        (
            RateLimited("too many", limit=2),
            429,
            {"type": "rate_limited", "message": "too many", "limit": 2, "retryable": True},
            {"Retry-After": "1"},
        ),
        (
            Overloaded("full"),
            503,
            {"type": "overloaded", "message": "full", "retryable": True},
            {"Retry-After": "1"},
        ),
        (
            ShuttingDown("bye"),
            503,
            {"type": "shutting_down", "message": "bye", "retryable": True},
            {},
        ),
        (
            StoreFull("budget"),
            503,
            {"type": "store_full", "message": "budget", "retryable": True},
            {},
        ),
        (
            StoreError("redis://secret@host down"),
            503,
            {"type": "store", "message": "the stream store is unavailable", "retryable": True},
            {},
        ),
        (
            ProducerConnectionError("refused"),
            503,
            {"type": "upstream", "kind": "connection", "message": "refused", "retryable": True},
            {},
        ),
        (
            ProducerStatusError("bad request", status_code=400),
            502,
            {"type": "upstream", "kind": "status", "message": "bad request", "retryable": False},
            {},
        ),
        (
            ChannelOverflowError("full"),
            502,
            {"type": "upstream", "kind": "overflow", "message": "full", "retryable": False},
            {},
        ),
        (
            RuntimeError("secret internals"),
            500,
            {"type": "internal", "kind": "internal", "message": "internal error"},
            {},
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_error_table(
    exc: Exception, status: int, error: dict[str, Any], headers: dict[str, str]
) -> None:
    reply = error_reply(exc)
    assert reply.status == status
    assert reply.body == {"error": error}
    assert dict(reply.headers) == headers
    assert reply.retryable is error.get("retryable", False)
    response = reply.response()
    assert response.status_code == status
    assert json.loads(response.body) == {"error": error}
    event = reply.event()
    assert (event.kind, event.message) == (error.get("kind", error["type"]), error["message"])
    assert event.retryable is reply.retryable


def test_server_errors_are_llmpipe_errors() -> None:
    assert issubclass(ClientGone, ConsumerGone)
    assert issubclass(RequestError, LLMPipeError)
    assert issubclass(RateLimited, LLMPipeError)


# -- the live stream -------------------------------------------------------------------------


async def test_sse_happy_path() -> None:
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text("Hello there, world.")))
    async with (
        running(app) as url,
        httpx.AsyncClient() as client,
        client.stream("POST", url + "/v1/stream", json=BODY) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        raw, events = await read_sse(resp)
    assert raw.startswith(b":"), raw[:40]  # a heartbeat comment is the first byte
    data = payloads(events)
    assert [e.event for e in events] == [d["type"] for d in data]
    assert [e.id for e in events] == [str(d["seq"]) for d in data]
    seqs = [d["seq"] for d in data]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert seqs[0] >= 1
    assert "".join(d["text"] for d in data if d["type"] == "text") == "Hello there, world."
    assert data[-1]["type"] == "done"


async def test_ndjson() -> None:
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text("one two three")))
    headers = {"Accept": "application/x-ndjson"}
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + "/v1/stream", json=BODY, headers=headers)
    assert resp.headers["content-type"] == "application/x-ndjson"
    events = [event_from_json(line) for line in resp.text.splitlines()]
    assert isinstance(events[-1], Done)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two three"


@pytest.mark.parametrize(
    ("content", "content_type", "status", "field"),
    [
        (b"{not json", "application/json", 400, "body"),
        (b'{"prompt": 3}', "application/json", 400, "messages"),
        (json.dumps({**BODY, "provider": "nope"}).encode(), "application/json", 400, "provider"),
        (json.dumps(BODY).encode(), "text/plain", 415, "Content-Type"),
        (json.dumps({**BODY, "x": "y" * 3000}).encode(), "application/json", 413, "body"),
    ],
    ids=["malformed", "no-messages", "unknown-provider", "not-json", "too-large"],
)
async def test_request_errors(content: bytes, content_type: str, status: int, field: str) -> None:
    config = ServerConfig(max_body_bytes=2000)
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text("x")), config)
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(
            url + "/v1/stream", content=content, headers={"Content-Type": content_type}
        )
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert error["field"] == field
        assert error["message"]
        # the same validation guards resumable streams
        resp = await client.post(
            url + "/v1/streams", content=content, headers={"Content-Type": content_type}
        )
        assert resp.status_code == status


async def test_auth() -> None:
    config = ServerConfig(auth_token="s3cret")
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text("ok")), config)
    async with running(app) as url, httpx.AsyncClient() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            resp = await client.post(url + "/v1/stream", json=BODY, headers=headers)
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.json()["error"]["type"] == "unauthorized"
        resp = await client.get(url + "/v1/streams/abc/events")
        assert resp.status_code == 401
        resp = await client.post(
            url + "/v1/stream", json=BODY, headers={"Authorization": "Bearer s3cret"}
        )
        assert resp.status_code == 200
        assert '"type":"done"' in resp.text
        assert (await client.get(url + "/health")).json() == {"status": "ok", "pid": os.getpid()}


async def test_per_client_limit() -> None:
    config = ServerConfig(max_streams_per_client=2, heartbeat_interval=0.05)
    app = create_app(factory_of(lambda r: CountingProducer(delay=0.02)), config)
    async with running(app) as url, httpx.AsyncClient() as client:
        async with (
            client.stream("POST", url + "/v1/stream", json=BODY) as first,
            client.stream("POST", url + "/v1/stream", json=BODY) as second,
        ):
            assert first.status_code == second.status_code == 200
            resp = await client.post(url + "/v1/stream", json=BODY)
            assert resp.status_code == 429
            assert "limit 2" in resp.json()["error"]["message"]
            assert resp.headers["retry-after"]
        # both closed: the slots are free again (the server sees the close in milliseconds)
        await eventually(lambda: not get_runtime(app).active, within=2)
        async with client.stream("POST", url + "/v1/stream", json=BODY) as third:
            assert third.status_code == 200


async def test_per_client_limit_of_generations() -> None:
    """Resumable generations outlive their requests: a client may have only so many running."""
    config = ServerConfig(max_generations_per_client=2)
    app = create_app(factory_of(lambda r: CountingProducer(delay=0.02)), config)
    async with running(app) as url, httpx.AsyncClient() as client:
        ids = []
        for _ in range(2):
            resp = await client.post(url + "/v1/streams", json=BODY)
            assert resp.status_code == 201
            ids.append(resp.json()["id"])
        resp = await client.post(url + "/v1/streams", json=BODY)
        assert resp.status_code == 429
        assert "limit 2" in resp.json()["error"]["message"]
        assert resp.headers["retry-after"]
        # one cancelled: a slot is free again once it has stopped
        assert (await client.delete(url + f"/v1/streams/{ids[0]}")).status_code == 202
        await eventually(lambda: len(get_runtime(app).generations) == 1, within=2)
        assert (await client.post(url + "/v1/streams", json=BODY)).status_code == 201


async def test_error_after_first_event_is_an_event() -> None:
    steps = [TextDelta("partial "), Step(raise_=ProducerConnectionError("reset by peer"))]
    app = create_app(factory_of(lambda r: ScriptedProducer(steps)))
    async with (
        running(app) as url,
        httpx.AsyncClient() as client,
        client.stream("POST", url + "/v1/stream", json=BODY) as resp,
    ):
        assert resp.status_code == 200
        _, events = await read_sse(resp)
    last = json.loads(events[-1].data)
    assert events[-1].event == "error"
    assert last["kind"] == "connection"
    assert last["retryable"] is True
    assert events[-1].id == str(last["seq"])


async def test_unreachable_provider_is_503() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    client_ = openai_client(base_url=f"http://127.0.0.1:{dead}/v1", api_key="k")

    def make(request: StreamRequest) -> Producer:
        return OpenAIChatProducer(
            client_,
            model="m",
            messages=[dict(m) for m in request.messages],
            retry=RetryPolicy(max_attempts=1),
        )

    app = create_app(factory_of(make))
    try:
        async with running(app) as url, httpx.AsyncClient() as client:
            resp = await client.post(url + "/v1/stream", json=BODY)
        assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert error["kind"] == "connection"
        assert error["retryable"] is True
    finally:
        await client_.close()


async def test_heartbeats_while_idle() -> None:
    config = ServerConfig(heartbeat_interval=0.05)
    steps = [Step(TextDelta("a"), delay=0.0), Step(TextDelta("b"), delay=0.35), Done()]
    app = create_app(factory_of(lambda r: ScriptedProducer(steps)), config)
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + "/v1/stream", json=BODY)
    comments = [line for line in resp.text.split("\n") if line.startswith(":")]
    assert resp.text.startswith(":")
    assert len(comments) >= 4, resp.text


async def test_disconnect_cancels_upstream(emulator: Any) -> None:
    emu = await emulator(Reply(["tok "] * 2000, tokens_per_second=200))
    client_ = openai_client(base_url=emu.openai_base_url, api_key="k")

    def make(request: StreamRequest) -> Producer:
        return OpenAIChatProducer(
            client_, model="emulated-gpt", messages=[dict(m) for m in request.messages]
        )

    app = create_app(factory_of(make))
    try:
        async with running(app) as url, httpx.AsyncClient() as client:
            async with client.stream("POST", url + "/v1/stream", json=BODY) as resp:
                await read_sse(resp, stop=lambda evs: sum(e.event == "text" for e in evs) >= 5)
            closed_at = trio.current_time()
            with trio.fail_after(1):
                seen_at = await emu.wait_disconnect(0)
            latency = seen_at - closed_at
            assert latency < 0.1, latency
            assert emu.requests[0].outcome == "disconnected"
            await eventually(lambda: not get_runtime(app).active, within=1)
            metrics = (await client.get(url + "/metrics")).text
        assert "llmpipe_client_disconnects_total 1.0" in metrics
    finally:
        await client_.close()


async def test_stalled_client_is_bounded() -> None:
    """A client that sends its request and never reads: the server's memory stays bounded (the
    channel coalesces, then the producer blocks; or, when the write that found the socket's
    buffers full was the producer's own, the producer waits in it with nothing queued), and
    closing the socket cancels the producer."""
    producer = CountingProducer(text="x" * 1000)
    max_bytes = 32 * 1024
    app = create_app(factory_of(lambda r: producer), ServerConfig(heartbeat_interval=0.2))
    body = json.dumps({**BODY, "buffering": {"max_bytes": max_bytes}}).encode()
    async with running(app) as url:
        port = int(url.rsplit(":", 1)[1])
        sock = await stalled_client(port, body)
        # Wait until the producer is parked: its count stops moving.
        with trio.fail_after(10):
            last = -1
            while producer.emitted != last or producer.emitted == 0:
                last = producer.emitted
                await trio.sleep(0.3)
        runtime = get_runtime(app)
        [channel] = runtime.metrics.live.channels
        stats = channel.statistics()
        assert stats.bytes_queued <= max_bytes
        assert stats.items_coalesced > 0 or (stats.items_queued == 0 and stats.items_direct > 0)
        assert producer.attempted == producer.emitted + 1  # parked in emit
        assert producer.emitted < 50_000, producer.emitted  # well under 50 MB produced
        async with httpx.AsyncClient() as client:
            text = (await client.get(url + "/metrics")).text
        buffered = next(
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("llmpipe_buffer_bytes ")
        )
        assert buffered <= max_bytes
        sock.close()
        await eventually(lambda: producer.closed_at is not None, within=2)
        assert producer.cancelled


# -- resumable streams -----------------------------------------------------------------------


async def test_resume_exactly_once(store_url: str | None) -> None:
    deltas = [f"w{i} " for i in range(60)]
    app = create_app(
        factory_of(lambda r: ScriptedProducer.from_deltas(deltas, delay=0.005)),
        ServerConfig(store_url=store_url),
    )
    async with running(app) as url, httpx.AsyncClient() as client:
        resp = await client.post(url + "/v1/streams", json=BODY)
        assert resp.status_code == 201
        created = resp.json()
        assert len(created["id"]) >= 20
        events_url = url + created["events_url"]
        assert resp.headers["location"] == created["events_url"]
        # A second subscriber follows the whole stream meanwhile.
        async with trio.open_nursery() as nursery:
            whole: list[SSEEvent] = []

            async def follow_all() -> None:
                async with client.stream("GET", events_url) as r:
                    whole.extend((await read_sse(r))[1])

            nursery.start_soon(follow_all)
            async with client.stream("GET", events_url) as r:
                assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
                _, first = await read_sse(r, stop=lambda evs: len(evs) >= 20)
            first = first[:20]
            headers = {"Last-Event-ID": first[-1].id}
            async with client.stream("GET", events_url, headers=headers) as r:
                _, rest = await read_sse(r)
        # with the query parameter instead of the header
        resp = await client.get(events_url, params={"last_event_id": first[9].id})
        tail = SSEDecoder().feed(resp.content)
    seqs = [int(e.id) for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [int(e.id) for e in whole] == seqs
    assert [e.data for e in first[10:] + rest] == [e.data for e in tail]
    text = "".join(json.loads(e.data).get("text", "") for e in first + rest)
    assert text == "".join(deltas)
    assert rest[-1].event == "done"


async def test_delete_cancels_generation(store_url: str | None) -> None:
    producer = CountingProducer(delay=0.005)
    app = create_app(factory_of(lambda r: producer), ServerConfig(store_url=store_url))
    async with running(app) as url, httpx.AsyncClient() as client:
        created = (await client.post(url + "/v1/streams", json=BODY)).json()
        await eventually(lambda: producer.emitted >= 5, within=2)
        resp = await client.delete(url + f"/v1/streams/{created['id']}")
        assert resp.status_code == 202
        await eventually(lambda: producer.closed_at is not None, within=2)
        assert producer.cancelled
        resp = await client.get(url + created["events_url"])
        events = SSEDecoder().feed(resp.content)
        assert events[-1].event == "error"
        end = json.loads(events[-1].data)
        assert (end["kind"], end["retryable"]) == ("cancelled", False)
        assert end["message"] == "the generation was cancelled (cancelled)"
        assert (await client.delete(url + f"/v1/streams/{created['id']}")).status_code == 204
        for method in ("GET", "DELETE"):
            path = "/v1/streams/nope/events" if method == "GET" else "/v1/streams/nope"
            resp = await client.request(method, url + path)
            assert resp.status_code == 404
            assert resp.json()["error"]["type"] == "not_found"


async def test_idle_generation_is_cancelled() -> None:
    producers: list[CountingProducer] = []

    def make(request: StreamRequest) -> Producer:
        producers.append(CountingProducer(delay=0.01))
        return producers[-1]

    config = ServerConfig(idle_cancel_after=0.3, heartbeat_interval=0.1)
    store = MemoryStore()
    app = create_app(factory_of(make), config, store=store)
    async with running(app) as url, httpx.AsyncClient() as client:
        followed = (await client.post(url + "/v1/streams", json=BODY)).json()
        orphan = (await client.post(url + "/v1/streams", json=BODY)).json()
        async with client.stream("GET", url + followed["events_url"]) as r:
            with trio.move_on_after(0.8):
                await read_sse(r)
            # nobody read the orphan: cancelled; the followed one still runs
            assert producers[1].cancelled
            assert producers[0].closed_at is None
        await eventually(lambda: producers[0].closed_at is not None, within=2)
        info = await store.info(orphan["id"])
        assert info.ended
        last = (await store.read(orphan["id"], info.last_seq - 1, 1))[0]
        assert last.type == "error"
    await store.aclose()


# -- metrics, CORS, shutdown -----------------------------------------------------------------


async def test_metrics_and_cors() -> None:
    config = ServerConfig(cors_origins=("http://example.com",))
    app = create_app(factory_of(lambda r: ScriptedProducer.from_text("a b c")), config)
    async with running(app) as url, httpx.AsyncClient() as client:
        await client.post(url + "/v1/stream", json=BODY)
        resp = await client.get(url + "/metrics")
        preflight = await client.options(
            url + "/v1/stream",
            headers={
                "Origin": "http://example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
    assert resp.headers["content-type"].startswith("text/plain")
    for name in (
        "llmpipe_streams_active",
        "llmpipe_time_to_first_token_seconds_bucket",
        "llmpipe_text_deltas_total",
        "llmpipe_text_chars_total",
        "llmpipe_buffer_bytes",
        "llmpipe_producer_blocked_seconds_total",
        "llmpipe_client_disconnects_total",
        "llmpipe_errors_total",
    ):
        assert name in resp.text, name
    assert preflight.headers["access-control-allow-origin"] == "http://example.com"
    plain = create_app(factory_of(lambda r: ScriptedProducer.from_text("a")))
    async with running(plain) as url, httpx.AsyncClient() as client:
        resp = await client.get(url + "/health", headers={"Origin": "http://example.com"})
    assert "access-control-allow-origin" not in resp.headers


async def test_stream_bodies_pass_added_middleware_and_keep_cors_headers() -> None:
    """Stream bodies skip the app's own middleware (it acts on headers only), never one added
    with ``add_middleware``: that sees every body message. The CORS headers stay on a stream."""
    seen: list[bytes] = []

    class Tap:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def tapped(message: Any) -> None:
                if message["type"] == "http.response.body":
                    seen.append(message.get("body", b""))
                await send(message)

            await self.app(scope, receive, tapped)

    # Paced: each delta is a write of its own (not one batch with the headers).
    make = factory_of(lambda r: CountingProducer(count=5, text="ab ", delay=0.02))
    text = "ab " * 5
    cors = ServerConfig(cors_origins=("http://example.com",))
    for tap in (False, True):
        app = create_app(make, cors)
        if tap:
            app.add_middleware(Tap)
        async with running(app) as url, httpx.AsyncClient() as client:
            resp = await client.post(
                url + "/v1/stream", json=BODY, headers={"Origin": "http://example.com"}
            )
        assert resp.headers["access-control-allow-origin"] == "http://example.com"
        events = [json.loads(line[6:]) for line in resp.text.splitlines() if line[:6] == "data: "]
        assert "".join(e["text"] for e in events if e["type"] == "text") == text
    assert len(seen) > 5  # the tapped run: each delta's write, and every byte, went through it
    assert b"".join(seen) == resp.content


async def test_shutdown_sends_shutdown_event() -> None:
    """Graceful shutdown: live and resuming readers get a final ``shutdown`` error, and the
    server exits within the grace even with a client that stopped reading."""
    config = ServerConfig(shutdown_grace=1.0, heartbeat_interval=0.1)
    stalled = CountingProducer(text="x" * 1000)

    def make(request: StreamRequest) -> Producer:
        if request.messages[0]["content"] == "stall":
            return stalled
        return CountingProducer(delay=0.01)

    store = MemoryStore()  # outlives the app: what a reader of another process would find
    app = create_app(factory_of(make), config, store=store)
    trigger = trio.Event()
    live: list[SSEEvent] = []
    resumed: list[SSEEvent] = []
    with trio.fail_after(10):
        async with running(app, trigger=trigger) as url, httpx.AsyncClient() as client:
            created = (await client.post(url + "/v1/streams", json=BODY)).json()
            body = json.dumps({"prompt": "stall"}).encode()
            sock = await stalled_client(int(url.rsplit(":", 1)[1]), body)

            async def read(method: str, path: str, out: list[SSEEvent], ready: Any) -> None:
                kwargs = {"json": BODY} if method == "POST" else {}
                async with client.stream(method, url + path, **kwargs) as r:
                    decoder = SSEDecoder()
                    async for chunk in r.aiter_raw():
                        out.extend(decoder.feed(chunk))
                        if len(out) >= 3 and ready is not None:
                            ready.set()
                            ready = None

            async with trio.open_nursery() as nursery:
                ready1, ready2 = trio.Event(), trio.Event()
                nursery.start_soon(read, "POST", "/v1/stream", live, ready1)
                nursery.start_soon(read, "GET", created["events_url"], resumed, ready2)
                await ready1.wait()
                await ready2.wait()
                await eventually(lambda: stalled.attempted > stalled.emitted > 0)
                trigger.set()
                triggered_at = trio.current_time()
        # the block waited for the server task to exit
        exit_seconds = trio.current_time() - triggered_at
    sock.close()
    assert exit_seconds < config.shutdown_grace + 0.5, exit_seconds
    assert stalled.cancelled
    for events in (live, resumed):
        last = events[-1]
        assert last.event == "error"
        data = json.loads(last.data)
        assert data["kind"] == "shutdown"
        assert data["retryable"] is True
        assert last.id == events[-2].id  # no id of its own: resuming continues after the last
    # The stored stream ends saying why, retryable: a generation stopped by a shutdown.
    stored_end = (await store.read(created["id"], 0, 100_000))[-1]
    assert isinstance(stored_end, Error)
    assert (stored_end.kind, stored_end.retryable) == ("cancelled", True)
    assert stored_end.message == "the generation was cancelled (shutdown)"
