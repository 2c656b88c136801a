"""``pipeline.producers.open_backend``: one provider by name, one producer per request, and a
``Backend`` that is itself a server's producer factory (real SDKs over real loopback HTTP)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from pipeline import ConfigError, Done, Metadata, Pipeline, TextDelta
from pipeline.producers import (
    AnthropicProducer,
    OpenAIChatProducer,
    OpenAIResponsesProducer,
    ScriptedProducer,
    open_backend,
)
from pipeline.testing import RecordingSink
from pipeline.testing.emulator import Reply
from pipeline.wire import SSEDecoder
from sinks.server import ServerConfig, create_app, serve


async def test_bad_options_fail_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        async with open_backend("nope"):
            pass
    with pytest.raises(ConfigError, match="max_tokens"):
        async with open_backend("scripted", max_tokens=0):
            pass


@pytest.mark.parametrize(
    ("provider", "cls", "suffix"),
    [
        ("openai", OpenAIChatProducer, "/v1"),
        ("openai-responses", OpenAIResponsesProducer, "/v1"),
        ("anthropic", AnthropicProducer, ""),
    ],
)
async def test_each_provider_streams_through_its_sdk(
    provider: str,
    cls: type,
    suffix: str,
    emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-real")
    emu = await emulator(Reply("One backend, two requests.", tokens_per_second=0))
    async with open_backend(provider, base_url=emu.base_url + suffix, model="m1") as backend:
        for _ in range(2):  # one client, a producer per request
            producer = backend.producer(
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                max_tokens=7,
            )
            assert isinstance(producer, cls)
            sink = RecordingSink()
            await Pipeline(producer, sinks=[sink]).run()
            text = "".join(e.text for e in sink.events if isinstance(e, TextDelta))
            assert text == "One backend, two requests."
            assert isinstance(sink.events[-1], Done)
            assert any(isinstance(e, Metadata) for e in sink.events)
    bodies = [r.body for r in emu.requests]
    assert len(bodies) == 2
    assert all(b["model"] == "m1" for b in bodies)
    tokens = "max_output_tokens" if provider == "openai-responses" else "max_tokens"
    assert all(b[tokens] == 7 for b in bodies)
    if provider == "openai":
        assert bodies[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    else:  # the system prompt goes where the API wants it
        key = "instructions" if provider == "openai-responses" else "system"
        assert bodies[0][key] == "Be brief."


async def test_a_backend_is_the_apps_producer_factory() -> None:
    async with (
        open_backend("scripted", scripted_text="Served by a backend.", scripted_rate=0) as backend,
        trio.open_nursery() as nursery,
    ):
        assert isinstance(backend.producer([]), ScriptedProducer)
        app = create_app(backend, ServerConfig(providers=(backend.name,)))
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        decoder, texts = SSEDecoder(), []
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream(
                "POST", f"http://127.0.0.1:{port}/v1/stream", json={"prompt": "hi"}
            ) as response,
        ):
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                texts += [e.data for e in decoder.feed(chunk) if e.event == "text"]
        nursery.cancel_scope.cancel()
    assert "".join(json.loads(t)["text"] for t in texts) == "Served by a backend."
