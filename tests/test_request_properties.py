"""Whatever a client sends, the answer is a 4xx naming the problem, never a 5xx: property tests
(hypothesis) of the parsers every request body and WebSocket frame goes through, then the
bodies and frames that used to fail (deep nesting, lone surrogates) against a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import open_websocket_url

from pipeline import TextDelta, event_from_json, event_to_json, json_text
from pipeline.testing import ScriptedProducer
from pipeline.wire import SSEDecoder, encode_event
from sinks.server import RequestError, ServerConfig, StreamRequest, create_app, serve
from sinks.server._context import MAX_JSON_DEPTH, SpeechRequest, decode_json

PROVIDERS = ("default",)
T = TypeVar("T")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value, strings with any code point (lone surrogates included)."""

FIELDS = ("messages", "prompt", "provider", "model", "max_tokens", "temperature", "buffering")
bodies = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=5
) | st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.dictionaries(st.sampled_from(["role", "content", "name"]), json_values)
            | st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "x"]), "content": st.text()}
            ),
            max_size=3,
        )
    },
    optional={
        "max_tokens": json_values,
        "temperature": json_values,
        "buffering": st.dictionaries(st.sampled_from(["policy", "max_bytes"]), json_values),
    },
)
"""Request bodies that look like requests, most of them wrong somewhere."""


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # lone surrogates as \\ud800 escapes


def parse(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | RequestError:
    """``fn``'s value, or the RequestError it raised (anything else fails the test)."""
    try:
        return fn(*args, **kwargs)
    except RequestError as exc:
        return exc


def check_refusal(exc: RequestError) -> None:
    """A 4xx naming the problem, whose JSON answer can be sent (UTF-8)."""
    assert 400 <= exc.status < 500
    assert exc.field
    json_text(exc.to_json()).encode()


@given(st.binary() | st.text().map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_decode_json_raises_only_request_error(data: bytes) -> None:
    result = parse(decode_json, data)
    if isinstance(result, RequestError):
        check_refusal(result)


@given(json_values | bodies)
def test_request_parsers_raise_only_request_error(value: object) -> None:
    """A decoded body, as ``POST /v1/stream`` and a WebSocket turn parse it: valid, or a
    RequestError whose answer can be sent (no surrogate echoed, nothing else raised)."""
    body = parse(decode_json, _json_bytes(value))
    request = (
        body
        if isinstance(body, RequestError)
        else parse(StreamRequest.from_json, body, providers=PROVIDERS)
    )
    if isinstance(request, RequestError):
        check_refusal(request)
    else:
        for message in request.messages:
            message["content"].encode()  # what reaches the producer is text
    speech = parse(SpeechRequest.from_json, value)
    if isinstance(speech, RequestError):
        check_refusal(speech)


@given(st.text())
def test_events_round_trip_any_text(text: str) -> None:
    """An event's JSON is always UTF-8 (lone surrogates escaped) and parses back to the same
    event, bar a split surrogate pair, which comes back joined."""
    event = TextDelta(text, seq=3)
    line = event_to_json(event)
    line.encode()
    again = event_from_json(line)
    assert isinstance(again, TextDelta)
    assert again.text.encode("utf-16", "surrogatepass") == text.encode("utf-16", "surrogatepass")
    frames = SSEDecoder().feed(encode_event(line, event="text"))
    assert [json.loads(f.data)["text"] for f in frames] == [again.text]


def test_decode_json_limits() -> None:
    deep = "[" * 1000 + "]" * 1000
    with pytest.raises(RequestError, match="nested deeper than"):
        decode_json(deep)
    with pytest.raises(RequestError, match="nested deeper than"):
        decode_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    decode_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    with pytest.raises(RequestError) as info:
        decode_json('{"messages": [{"role": "user", "content": "a\\ud800"}]}')
    assert info.value.field == "messages[0].content"
    assert "U+D800" in str(info.value)
    with pytest.raises(RequestError) as info:
        decode_json('{"\\udfff": 1}')
    assert info.value.field == "body"
    assert decode_json('{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001f600"}  # a pair


# -- against a real server ---------------------------------------------------------------------


@asynccontextmanager
async def running() -> AsyncIterator[str]:
    @asynccontextmanager
    async def factory(request: StreamRequest) -> AsyncIterator[ScriptedProducer]:
        yield ScriptedProducer.from_text("ok")

    app = create_app(factory, ServerConfig(providers=PROVIDERS))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def hostile_bodies() -> Iterator[tuple[bytes, str]]:
    """(body, the field the answer names)."""
    yield b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}", "body"
    yield b"[" * 100_000, "body"
    yield b'{"prompt": "\\ud800"}', "prompt"
    yield b'{"messages": [{"role": "user", "content": "hi \\udc00"}]}', "messages[0].content"
    yield b'{"prompt": "x", "model": "\\ud800"}', "model"
    yield b'{"\\ud800": 1}', "body"
    yield b'{"prompt": "x", "max_tokens": 1e999}', "max_tokens"
    yield b'{"prompt": "x", "temperature": NaN}', "temperature"
    yield b"\xff\xfe{}", "body"


async def test_hostile_bodies_get_a_4xx_naming_the_problem() -> None:
    async with running() as host, httpx.AsyncClient() as client:
        for body, field in hostile_bodies():
            for path in ("/v1/stream", "/v1/streams"):
                resp = await client.post(
                    f"http://{host}{path}",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                assert resp.status_code == 400, (body[:60], resp.status_code, resp.text)
                assert resp.json()["error"]["field"] == field, body[:60]


async def test_hostile_frames_get_an_error_frame_and_the_connection_stays() -> None:
    async with running() as host, open_websocket_url(f"ws://{host}/v1/ws") as ws:
        for body, _ in hostile_bodies():
            frame = body.decode("utf-8", "replace").replace('{"', '{"type": "request", "', 1)
            await ws.send_message(frame)
            with trio.fail_after(5):
                answer: dict[str, Any] = json.loads(await ws.get_message())
            assert answer["type"] == "error", answer
            assert answer["error"]["type"] == "invalid_request", answer
        await ws.send_message(json.dumps({"type": "ping", "id": 7}))
        with trio.fail_after(5):
            assert json.loads(await ws.get_message()) == {"type": "pong", "id": 7}


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=3))
def test_websocket_frames_parse_or_answer(frames: list[object]) -> None:
    """Every frame a client can send goes through decode_json, then, for a request, the same
    request parsers: each one gives a value or a RequestError with a sendable answer."""
    for value in frames:
        body = parse(decode_json, json_text(value))
        if isinstance(body, dict):
            fields = {k: v for k, v in body.items() if k not in ("type", "reset", "speech")}
            body = parse(StreamRequest.from_json, fields, providers=PROVIDERS)
        if isinstance(body, RequestError):
            check_refusal(body)
