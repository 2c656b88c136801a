"""``POST /api/chat`` read by the Vercel AI SDK's own client code, in Node.

``tests/browser/ai_sdk_chat.mjs`` uses the ``ai`` package (``DefaultChatTransport``, which
``useChat`` uses, and ``readUIMessageStream``) against a real app on loopback that relays to
the provider emulator (OpenAI and Anthropic modes) or the scripted producer. The SDK validates
every part against its own schema, so a part it does not know fails the run. The request
mapping (UI messages with parts) is checked on what the provider received.

Missing Node or ``tests/browser/node_modules/ai`` fail (``tests/setup.sh`` installs them).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pipeline.producers import open_backend
from pipeline.testing.emulator import Reply, ToolCall, error_event_after
from sinks.server import ServerConfig, create_app, serve

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
TEXT = "A useChat front end reads this, part by part: é€ and 😀 too."

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Async generator .* was garbage collected:ResourceWarning"),
]


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (apt-get install -y nodejs)", pytrace=False)
    if not (BROWSER_DIR / "node_modules" / "ai").is_dir():
        pytest.fail(
            "the ai package is not installed (npm ci --prefix tests/browser)", pytrace=False
        )
    return node


@asynccontextmanager
async def chat_server(provider: str, reply: Any = None, **config: Any) -> AsyncIterator[Any]:
    """An app relaying to ``provider`` (an emulator with ``reply``, or scripted ``TEXT``);
    yields ``(api_url, emulator or None)``."""
    async with trio.open_nursery() as nursery:
        emu = None
        if provider == "scripted":
            backend_cm = open_backend("scripted", scripted_text=TEXT, scripted_rate=0)
        else:
            from pipeline.testing.emulator import serve_emulator

            emu = await nursery.start(serve_emulator, "127.0.0.1", 0, reply)
            suffix = "/v1" if provider == "openai" else ""
            backend_cm = open_backend(provider, base_url=emu.base_url + suffix, model="m1")
        async with backend_cm as backend:
            app = create_app(backend, ServerConfig(providers=(backend.name,), **config))
            port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
            yield f"http://127.0.0.1:{port}/api/chat", emu
            nursery.cancel_scope.cancel()


async def read_with_ai_sdk(api: str, prompt: str, headers: dict[str, str] | None = None) -> Any:
    args = [_node(), "ai_sdk_chat.mjs", api, prompt]
    if headers:
        args.append(json.dumps(headers))
    with trio.fail_after(30):
        result = await trio.run_process(args, cwd=BROWSER_DIR, capture_stdout=True, check=False)
    assert result.returncode == 0, result
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-real")


def _text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "scripted"])
async def test_ai_sdk_reads_the_exact_text(provider: str) -> None:
    async with chat_server(provider, Reply(TEXT, input_tokens=8)) as (api, emu):
        result = await read_with_ai_sdk(api, "Say it")
    assert result["errors"] == []
    assert result["protocol"] == "v1"
    chunks = result["chunks"]
    assert chunks[:3] == ["start", "start-step", "text-start"]
    assert chunks[-3:] == ["text-end", "finish-step", "finish"]
    assert set(chunks[3:-3]) == {"text-delta"}
    message = result["message"]
    assert message["role"] == "assistant"
    assert message["id"].startswith("msg-")
    assert _text(message) == TEXT
    if emu is not None:
        # The UI message's text part became the provider's user message; usage is metadata.
        body = emu.requests[0].body
        assert body["messages"][-1]["content"] in ("Say it", [{"type": "text", "text": "Say it"}])
        usage = message["metadata"]["usage"]
        assert usage["inputTokens"] == 8
        assert usage["outputTokens"] == Reply(TEXT).completion_tokens


async def test_tool_call_parts() -> None:
    call = ToolCall("get_weather", {"city": "Paris"}, id="call_1")
    async with chat_server("openai", Reply("Checking.", tool_calls=[call])) as (api, _):
        result = await read_with_ai_sdk(api, "Weather?")
    assert result["errors"] == []
    assert "tool-input-start" in result["chunks"]
    assert "tool-input-available" in result["chunks"]
    parts = result["message"]["parts"]
    assert _text(result["message"]) == "Checking."
    (tool,) = [p for p in parts if p["type"] not in ("text", "step-start")]
    assert tool["type"] == "tool-get_weather"
    assert tool["toolCallId"] == "call_1"
    assert tool["state"] == "input-available"
    assert tool["input"] == {"city": "Paris"}


async def test_an_error_mid_stream_reaches_the_sdk_as_an_error_part() -> None:
    reply = Reply(TEXT, fault=error_event_after(3))
    async with chat_server("openai", reply) as (api, _):
        result = await read_with_ai_sdk(api, "Fail")
    assert result["chunks"][-2:] == ["error", "finish"]
    assert len(result["errors"]) == 1
    assert result["message"]["parts"][-1]["type"] == "text"


async def test_bad_requests_are_refused_before_streaming() -> None:
    async with chat_server("scripted") as (api, _), httpx.AsyncClient() as client:
        no_parts = {"id": "c", "messages": [{"id": "u", "role": "user"}], "trigger": "x"}
        response = await client.post(api, json=no_parts)
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "messages[0].parts"
        file_part = {"type": "file", "mediaType": "image/png", "url": "data:,"}
        with_file = {"messages": [{"id": "u", "role": "user", "parts": [file_part]}]}
        response = await client.post(api, json=with_file)
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "messages[0].parts[0]"


async def test_auth_token_is_required_and_sent_by_the_transport_headers() -> None:
    async with chat_server("scripted", auth_token="s3cret") as (api, _):
        refused = await read_with_ai_sdk(api, "Hi")
        accepted = await read_with_ai_sdk(api, "Hi", {"Authorization": "Bearer s3cret"})
    assert len(refused["errors"]) == 1
    assert "bearer token" in refused["errors"][0]
    assert _text(accepted["message"]) == TEXT
