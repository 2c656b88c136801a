"""The server's trust boundary, on a real hypercorn server with real clients: secrets that must
never reach a client, the WebSocket's Origin check, subprotocol and connection limit, and
several principals (each one's resumable streams are its own).

Real time throughout (sockets are involved); every wait is bounded by a short ``fail_after``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from pipeline import Producer
from pipeline.producers import (
    SNIPPET_CHARS,
    AnthropicProducer,
    OpenAIChatProducer,
    RetryPolicy,
    anthropic_client,
    openai_client,
)
from pipeline.testing.emulator import Reply, malformed_after
from sinks.server import StreamRequest, create_app, serve

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
KEY13 = "Zq8Xw2Lp9TmRv"  # a 13-character API key


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free port for the block (cancelled at the end)."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def pieces(secret: str, size: int = 4) -> list[str]:
    """Every ``size``-character piece of ``secret``."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


# -- secrets -----------------------------------------------------------------------------------


def _openai_frame(offset: int) -> bytes:
    junk = "x" * (offset - len('{"choices":"'))
    return f'data: {{"choices":"{junk}{KEY13} and more, cut off\n\n'.encode()


def _anthropic_frame(offset: int) -> bytes:
    # Valid JSON of the wrong shape: the parser's message quotes the value (int() fails on it).
    junk = "x" * offset
    data = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": junk + KEY13}}
    return f"event: message_delta\ndata: {json.dumps(data)}\n\n".encode()


def _openai_producer(base_url: str) -> tuple[Any, Callable[[StreamRequest], Producer]]:
    client = openai_client(base_url=base_url + "/v1", api_key=KEY13)

    def make(request: StreamRequest) -> Producer:
        messages = [dict(m) for m in request.messages]
        return OpenAIChatProducer(
            client, model="emulated-gpt", messages=messages, retry=RetryPolicy(max_attempts=1)
        )

    return client, make


def _anthropic_producer(base_url: str) -> tuple[Any, Callable[[StreamRequest], Producer]]:
    client = anthropic_client(base_url=base_url, api_key=KEY13)

    def make(request: StreamRequest) -> Producer:
        messages = [dict(m) for m in request.messages]
        return AnthropicProducer(
            client, model="emulated-claude", messages=messages, retry=RetryPolicy(max_attempts=1)
        )

    return client, make


def _factory(make: Callable[[StreamRequest], Producer]) -> Any:
    @asynccontextmanager
    async def factory(request: StreamRequest) -> AsyncIterator[Producer]:
        yield make(request)

    return factory


@pytest.mark.parametrize(
    ("frame", "producer"),
    [(_openai_frame, _openai_producer), (_anthropic_frame, _anthropic_producer)],
    ids=["openai", "anthropic"],
)
@pytest.mark.parametrize("offset", [48, 55, SNIPPET_CHARS - 6, SNIPPET_CHARS + 20])
async def test_a_key_in_a_malformed_upstream_event_never_reaches_the_client(
    emulator: Any,
    frame: Callable[[int], bytes],
    producer: Callable[[str], tuple[Any, Callable[[StreamRequest], Producer]]],
    offset: int,
) -> None:
    """The provider quotes the API key in an event we cannot parse, at offsets where a cut of
    the quoted data falls inside the key (60, llmpipe's old cut, and ``SNIPPET_CHARS``): the
    client's error event holds no 4 characters of it (redaction first, then the cut)."""
    emu = await emulator(Reply(["Hel", "lo"], fault=malformed_after(1, frame(offset))))
    client, make = producer(emu.base_url)
    try:
        async with running(create_app(_factory(make))) as url, httpx.AsyncClient() as http:
            resp = await http.post(url + "/v1/stream", json=BODY)
    finally:
        await client.close()
    assert resp.status_code == 200, resp.text
    last = [line for line in resp.text.splitlines() if line.startswith("data:")][-1]
    error = json.loads(last.removeprefix("data:"))
    assert error["type"] == "error"
    assert error["kind"] == "protocol", error
    leaked = [piece for piece in pieces(KEY13) if piece in resp.text]
    assert not leaked, (leaked, error["message"])
