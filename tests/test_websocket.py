"""``WS /v1/ws`` (sinks/server/_ws.py): turns, interrupts, history, protocol errors, disconnects.

Everything runs for real on loopback: the app from ``create_app`` served by hypercorn's trio
worker, a trio-websocket client, and (for upstream cancellation) the provider emulator behind the
OpenAI SDK.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import httpx
import pytest
import trio
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import (
    WebSocketConnection,
    open_websocket_url,
)

from pipeline import Producer
from pipeline.producers import OpenAIChatProducer, openai_client
from pipeline.testing import ScriptedProducer
from pipeline.testing.emulator import Emulator, Reply
from sinks.server import ProducerFactory, ServerConfig, StreamRequest, create_app
from sinks.server import serve as serve_app
from sinks.server._ws import trim_history

EmulatorFactory = Callable[..., Awaitable[Emulator]]
Serve = Callable[..., Awaitable[str]]
KEY = "sk-test-websocket"


@pytest.fixture
async def serve_ws() -> AsyncIterator[Serve]:
    """``url = await serve_ws(factory)``: ``/v1/ws`` of ``create_app(factory, config)``, served
    by hypercorn (trio, with the given ``options`` of its config) on 127.0.0.1, port 0; shut
    down gracefully after the test."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def start(
            factory: ProducerFactory,
            app_config: ServerConfig = ServerConfig(),  # noqa: B008 (frozen)
            **options: Any,
        ) -> str:
            app = create_app(factory, app_config)
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            config.loglevel = "WARNING"
            config.graceful_timeout = 1.0
            for name, value in options.items():
                setattr(config, name, value)
            binds: list[str] = await nursery.start(
                # (hypercorn's ``Framework`` type and Starlette's ASGI signature differ)
                partial(serve, cast(Any, app), config, shutdown_trigger=shutdown.wait)
            )
            return binds[0].replace("http://", "ws://") + "/v1/ws"

        yield start
        shutdown.set()


MakeEmulated = Callable[..., Awaitable[tuple[Emulator, ProducerFactory, list[StreamRequest]]]]


@pytest.fixture
async def emulator_producers(emulator: EmulatorFactory) -> AsyncIterator[MakeEmulated]:
    """``emu, factory, seen = await make(reply)``: an emulator and a factory that builds an
    :class:`OpenAIChatProducer` against it and records every request."""
    clients: list[Any] = []

    async def make(reply: Any) -> tuple[Emulator, ProducerFactory, list[StreamRequest]]:
        emu = await emulator(reply)
        client = openai_client(base_url=emu.openai_base_url, api_key=KEY)
        clients.append(client)
        seen: list[StreamRequest] = []

        @asynccontextmanager
        async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
            seen.append(request)
            yield OpenAIChatProducer(
                client,
                model=request.model or "emulated-gpt",
                messages=[dict(m) for m in request.messages],
                max_tokens=request.max_tokens,
            )

        return emu, factory, seen

    yield make
    for client in clients:
        await client.close()


def scripted_factory(
    texts: list[str], *, delay: float = 0.0
) -> tuple[ProducerFactory, list[StreamRequest]]:
    """A factory that answers request *i* with ``texts[i]``, one delta per word, and the list of
    the requests it saw."""
    seen: list[StreamRequest] = []

    @asynccontextmanager
    async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
        seen.append(request)
        yield ScriptedProducer.from_text(texts[len(seen) - 1], delay=delay)

    return factory, seen


async def send(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(json.dumps(obj))


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        message = await ws.get_message()
    assert isinstance(message, str)
    data = json.loads(message)
    assert isinstance(data, dict)
    return data


async def read_turn(ws: WebSocketConnection) -> list[dict[str, Any]]:
    """Messages up to and including the turn's end (``done``, turn ``error``, ``interrupted``)."""
    out: list[dict[str, Any]] = []
    while True:
        msg = await receive(ws)
        out.append(msg)
        if msg["type"] in ("done", "interrupted") or (msg["type"] == "error" and "turn" in msg):
            return out


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m["text"] for m in messages if m["type"] == "text")


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


async def test_full_turns_keep_history(serve_ws: Serve) -> None:
    factory, seen = scripted_factory(["Hello there, friend.", "Fine, thanks."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "messages": [user("Hi")], "model": "m"})
        first = await read_turn(ws)
        assert {m["turn"] for m in first} == {1}
        assert first[-1]["type"] == "done"
        assert first[-1]["stop_reason"] == "stop"
        assert text_of(first) == "Hello there, friend."
        seqs = [m["seq"] for m in first]
        assert seqs == sorted(seqs)
        assert seqs[0] >= 1

        await send(ws, {"type": "request", "prompt": "How are you?"})
        second = await read_turn(ws)
        assert {m["turn"] for m in second} == {2}
        assert text_of(second) == "Fine, thanks."

    assert list(seen[0].messages) == [user("Hi")]
    assert seen[0].model == "m"
    assert list(seen[1].messages) == [
        user("Hi"),
        assistant("Hello there, friend."),
        user("How are you?"),
    ]


async def test_reset_starts_a_new_conversation(serve_ws: Serve) -> None:
    factory, seen = scripted_factory(["One.", "Two."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "a"})
        await read_turn(ws)
        await send(ws, {"type": "request", "prompt": "b", "reset": True})
        assert text_of(await read_turn(ws)) == "Two."
    assert list(seen[1].messages) == [user("b")]


async def test_interrupt_closes_upstream_and_keeps_only_delivered_text(
    serve_ws: Serve,
    emulator_producers: MakeEmulated,
) -> None:
    long_reply = Reply(tuple(f" word{i}" for i in range(400)), tokens_per_second=200)
    emu, factory, seen = await emulator_producers([long_reply, Reply("Second answer.")])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "messages": [user("Tell me a story")]})
        got: list[dict[str, Any]] = []
        while len([m for m in got if m["type"] == "text"]) < 5:
            got.append(await receive(ws))
        interrupted_at = trio.current_time()
        await send(ws, {"type": "interrupt"})
        with trio.fail_after(2):
            disconnected_at = await emu.wait_disconnect(0)
        latency = disconnected_at - interrupted_at
        print(f"interrupt -> upstream closed: {latency * 1000:.1f} ms")
        assert latency < 0.05

        got += await read_turn(ws)
        end = got[-1]
        assert end == {"type": "interrupted", "turn": 1, "delivered_chars": end["delivered_chars"]}
        delivered = text_of(got)
        assert delivered
        assert end["delivered_chars"] == len(delivered)
        assert len(delivered) < len(long_reply.text)
        assert all(m.get("turn") == 1 for m in got)

        await send(ws, {"type": "request", "messages": [user("Go on")]})
        second = await read_turn(ws)
        assert second[-1]["type"] == "done"
        assert {m["turn"] for m in second} == {2}
        assert text_of(second) == "Second answer."

    expected = [user("Tell me a story"), assistant(delivered), user("Go on")]
    assert list(seen[1].messages) == expected
    assert emu.requests[1].body["messages"] == expected


async def test_request_right_after_interrupt_waits_for_it(serve_ws: Serve) -> None:
    factory, seen = scripted_factory(["a b c d e f g h i j k l m n o p", "Next."], delay=0.02)
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "first"})
        got = [await receive(ws)]
        # No waiting for ``interrupted``: the new request is queued behind the ending turn.
        await send(ws, {"type": "interrupt"})
        await send(ws, {"type": "request", "prompt": "second"})
        got += await read_turn(ws)
        assert got[-1]["type"] == "interrupted"
        second = await read_turn(ws)
        assert [m["turn"] for m in second] == [2] * len(second)
        assert text_of(second) == "Next."
    assert list(seen[1].messages) == [user("first"), assistant(text_of(got)), user("second")]


async def test_protocol_errors_keep_the_connection(serve_ws: Serve) -> None:
    factory, seen = scripted_factory(["slow answer here"] * 2, delay=0.05)
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await ws.send_message("{not json")
        msg = await receive(ws)
        assert msg["type"] == "error"
        assert "turn" not in msg
        assert msg["error"]["type"] == "invalid_request"
        assert msg["error"]["field"] == "body"

        await send(ws, [1, 2])
        assert (await receive(ws))["error"]["field"] == "body"
        await send(ws, {"type": "shout"})
        assert (await receive(ws))["error"]["field"] == "type"
        await ws.send_message(b"\x00binary")
        assert (await receive(ws))["error"]["field"] == "frame"
        await send(ws, {"type": "request", "messages": [user("x")], "max_tokens": 0})
        assert (await receive(ws))["error"]["field"] == "max_tokens"
        await send(ws, {"type": "request", "prompt": "x", "colour": "red"})
        assert (await receive(ws))["error"]["field"] == "colour"
        await send(ws, {"type": "request", "prompt": "x", "reset": "yes"})
        assert (await receive(ws))["error"]["field"] == "reset"
        await send(ws, {"type": "interrupt"})  # nothing running: ignored

        await send(ws, {"type": "request", "prompt": "go"})
        await send(ws, {"type": "request", "prompt": "again"})
        turn: list[dict[str, Any]] = []
        busy = None
        while busy is None:
            msg = await receive(ws)
            if "turn" in msg:
                turn.append(msg)
            else:
                busy = msg
        assert busy["type"] == "error"
        assert "in progress" in busy["error"]["message"]
        turn += await read_turn(ws)
        assert turn[-1]["type"] == "done"
        assert text_of(turn) == "slow answer here"
        await send(ws, {"type": "ping", "id": 7})
        assert await receive(ws) == {"type": "pong", "id": 7}
    assert len(seen) == 1


async def test_ping_pong_while_idle_and_during_a_turn(serve_ws: Serve) -> None:
    factory, _ = scripted_factory(["a b c d e f"], delay=0.05)
    # A keep-alive timeout far shorter than the idle time: an open WebSocket is not idle for
    # hypercorn, and we set no receive deadline of our own.
    url = await serve_ws(factory, keep_alive_timeout=0.05)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "ping"})
        assert await receive(ws) == {"type": "pong"}
        await trio.sleep(0.3)
        with trio.fail_after(2):
            await ws.ping(b"protocol-level")  # answered by the server's WebSocket layer
        await send(ws, {"type": "request", "prompt": "letters"})
        await send(ws, {"type": "ping", "id": "during"})
        got: list[dict[str, Any]] = []
        while not got or got[-1]["type"] != "done":
            got.append(await receive(ws))
        assert {"type": "pong", "id": "during"} in got
        assert text_of(got) == "a b c d e f"


async def test_client_disconnect_mid_turn_closes_upstream(
    serve_ws: Serve,
    emulator_producers: MakeEmulated,
) -> None:
    reply = Reply(tuple(f" t{i}" for i in range(400)), tokens_per_second=200)
    emu, factory, _ = await emulator_producers(reply)
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "stream"})
        while (await receive(ws))["type"] != "text":
            pass
        left_at = trio.current_time()
    with trio.fail_after(2):
        disconnected_at = await emu.wait_disconnect(0)
    print(f"client gone -> upstream closed: {(disconnected_at - left_at) * 1000:.1f} ms")
    assert disconnected_at - left_at < 0.5
    record = await emu.wait_ended(0)
    assert record.outcome == "disconnected"


async def test_factory_failure_is_a_turn_error(serve_ws: Serve) -> None:
    calls = 0

    @asynccontextmanager
    async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("no such model")
        yield ScriptedProducer.from_text("ok")

    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "first"})
        [err] = await read_turn(ws)
        assert err["type"] == "error"
        assert err["turn"] == 1
        assert "no such model" in err["message"]
        await send(ws, {"type": "request", "prompt": "retry"})
        assert text_of(await read_turn(ws)) == "ok"


@pytest.mark.parametrize(("max_bytes", "overflows"), [(64, True), (1 << 20, False)])
async def test_turn_honours_the_request_buffering(
    serve_ws: Serve, max_bytes: int, overflows: bool
) -> None:
    """``buffering`` reaches the turn's channel as it does ``POST /v1/stream``'s: with policy
    ``fail`` and a budget under two deltas, the producer's burst (no scheduling point between
    deltas) overflows it and the turn ends with an ``overflow`` error; with room it does not.
    (The default, ``coalesce``, would have made the producer wait: never an error.)"""
    deltas = ["x" * 100] * 10

    @asynccontextmanager
    async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
        yield ScriptedProducer.from_deltas(deltas)

    url = await serve_ws(factory)
    buffering = {"policy": "fail", "max_bytes": max_bytes}
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "burst", "buffering": buffering})
        turn = await read_turn(ws)
    end = turn[-1]
    if overflows:
        assert (end["type"], end["kind"], end["turn"]) == ("error", "overflow", 1)
        assert len(text_of(turn)) < len("".join(deltas))
    else:
        assert end["type"] == "done"
        assert text_of(turn) == "".join(deltas)


def test_trim_history_drops_oldest_and_pins_system() -> None:
    system = {"role": "system", "content": "be brief"}
    convo = [system]
    for i in range(10):
        convo += [user(f"u{i}"), assistant(f"a{i}")]
    kept = trim_history(convo, max_messages=5, max_chars=10_000)
    assert kept == [system, user("u8"), assistant("a8"), user("u9"), assistant("a9")]
    # Never starts with an assistant message after the pinned part.
    kept = trim_history(convo, max_messages=4, max_chars=10_000)
    assert kept == [system, user("u9"), assistant("a9")]
    # Characters: the newest message is always kept, even alone over the bound.
    kept = trim_history([user("x" * 50), assistant("y" * 50)], max_messages=64, max_chars=60)
    assert kept == [assistant("y" * 50)]


# --- mounted in the real app (sinks.server.create_app + serve) ------------------------------------


@asynccontextmanager
async def running_app(
    factory: ProducerFactory, config: ServerConfig
) -> AsyncIterator[tuple[str, trio.Event]]:
    """The app from ``create_app`` served by ``sinks.server.serve``; yields the WS URL and the
    event that triggers a graceful shutdown (set at the end if the test did not)."""
    app = create_app(factory, config)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            partial(serve_app, app, "127.0.0.1", 0, shutdown_trigger=shutdown.wait)
        )
        yield f"ws://127.0.0.1:{port}/v1/ws", shutdown
        shutdown.set()


async def test_mounted_in_app_with_auth() -> None:
    factory, seen = scripted_factory(["Mounted and working.", "Again.", "By subprotocol."])
    config = ServerConfig(auth_token="s3cret", shutdown_grace=1.0)
    async with running_app(factory, config) as (url, _):
        # (With plain httpx: trio-websocket leaks its socket when a handshake is refused.)
        handshake = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        async with httpx.AsyncClient() as http:
            refused = await http.get(url.replace("ws://", "http://"), headers=handshake)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "unauthorized"
        headers = [(b"authorization", b"Bearer s3cret")]
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await send(ws, {"type": "request", "prompt": "hi"})
            turn = await read_turn(ws)
            assert turn[-1]["type"] == "done"
            assert text_of(turn) == "Mounted and working."
            await send(ws, {"type": "request", "prompt": "more"})
            assert text_of(await read_turn(ws)) == "Again."
        # As a browser must send it: the token as a subprotocol; the server selects "llmpipe".
        async with open_websocket_url(url, subprotocols=["llmpipe", "bearer.s3cret"]) as ws:
            assert ws.subprotocol == "llmpipe"
            await send(ws, {"type": "request", "prompt": "hi"})
            assert text_of(await read_turn(ws)) == "By subprotocol."
        wrong = dict(handshake, **{"Sec-WebSocket-Protocol": "llmpipe, bearer.nope"})
        async with httpx.AsyncClient() as http:
            refused = await http.get(url.replace("ws://", "http://"), headers=wrong)
        assert refused.status_code == 401
    assert list(seen[1].messages) == [user("hi"), assistant("Mounted and working."), user("more")]


async def test_server_shutdown_ends_the_turn_and_closes() -> None:
    # httpx-ws here: trio-websocket's client leaks its socket when the server closes first.
    factory, _ = scripted_factory([" ".join(["word"] * 200)], delay=0.02)
    async with (
        running_app(factory, ServerConfig(shutdown_grace=2.0)) as (url, shutdown),
        httpx.AsyncClient() as http,
        aconnect_ws(
            url.replace("ws://", "http://"), http, session_class=AsyncWebSocketSession
        ) as ws,
    ):
        await ws.send_json({"type": "request", "prompt": "long"})
        with trio.fail_after(5):
            while (await ws.receive_json())["type"] != "text":
                pass
            shutdown.set()
            while (end := await ws.receive_json())["type"] == "text":
                pass
        assert end["type"] == "error"
        assert end["kind"] == "shutdown"
        assert end["retryable"] is True
        with trio.fail_after(2), pytest.raises(WebSocketDisconnect) as closed:
            await ws.receive_text()
        assert closed.value.code == 1001


async def test_turn_refused_by_the_stream_limit() -> None:
    """A turn the app's stream limits refuse ends with an ``error`` event made from the same
    answer as the HTTP refusal (429 ``rate_limited``, retryable), and is counted as one."""
    factory, _ = scripted_factory(["a b c d e f g h", "ok"], delay=0.05)
    config = ServerConfig(max_streams_per_client=1, shutdown_grace=1.0)
    async with (
        running_app(factory, config) as (url, _),
        open_websocket_url(url) as first,
        open_websocket_url(url) as second,
    ):
        await send(first, {"type": "request", "prompt": "long"})
        assert (await receive(first))["turn"] == 1  # its stream slot is taken
        await send(second, {"type": "request", "prompt": "too many"})
        [refused] = await read_turn(second)
        assert refused["type"] == "error"
        assert refused["kind"] == "rate_limited"
        assert refused["retryable"] is True
        assert "limit 1" in refused["message"]
        assert (await read_turn(first))[-1]["type"] == "done"
        async with httpx.AsyncClient() as http:
            metrics = (
                await http.get(url.replace("ws://", "http://")[: -len("/v1/ws")] + "/metrics")
            ).text
        assert 'llmpipe_requests_rejected_total{status="429"} 1.0' in metrics
