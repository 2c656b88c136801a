"""The server's trust boundary, on a real hypercorn server with real clients: secrets that must
never reach a client, the WebSocket's Origin check, subprotocol and connection limit, and
several principals (each one's resumable streams are its own).

Real time throughout (sockets are involved); every wait is bounded by a short ``fail_after``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from pipeline import ConfigError, Producer
from pipeline.producers import (
    SNIPPET_CHARS,
    AnthropicProducer,
    OpenAIChatProducer,
    RetryPolicy,
    anthropic_client,
    openai_client,
)
from pipeline.testing import CountingProducer, ScriptedProducer
from pipeline.testing.emulator import Reply, malformed_after
from sinks.cli import ExitCode, main
from sinks.server import (
    ServerConfig,
    StreamRequest,
    create_app,
    get_runtime,
    parse_tokens,
)

ServeApp = Callable[[Any], Awaitable[str]]  # the serve_app fixture (conftest.py)
ROOT = Path(__file__).resolve().parent.parent
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
KEY13 = "Zq8Xw2Lp9TmRv"  # a 13-character API key


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
    serve_app: ServeApp,
) -> None:
    """The provider quotes the API key in an event we cannot parse, at offsets where a cut of
    the quoted data falls inside the key (60, llmpipe's old cut, and ``SNIPPET_CHARS``): the
    client's error event holds no 4 characters of it (redaction first, then the cut)."""
    emu = await emulator(Reply(["Hel", "lo"], fault=malformed_after(1, frame(offset))))
    client, make = producer(emu.base_url)
    try:
        url = await serve_app(create_app(_factory(make)))
        async with httpx.AsyncClient() as http:
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


# -- principals --------------------------------------------------------------------------------

ALICE, BOB = "alice-token-1", "bob-token-2"
PRINCIPALS = (("alice", ALICE), ("bob", BOB))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_principal_reads_and_cancels_only_its_own_streams(
    store_url: str | None, serve_app: ServeApp
) -> None:
    """Another principal's stream is answered as one that does not exist (404, the same body
    but for the id), for reading and for cancelling; its creator reads and cancels it."""
    config = ServerConfig(auth_tokens=PRINCIPALS, store_url=store_url, heartbeat_interval=0.1)
    app = create_app(_factory(lambda r: CountingProducer(delay=0.01)), config)
    url = await serve_app(app)
    async with httpx.AsyncClient() as http:
        created = await http.post(url + "/v1/streams", json=BODY, headers=bearer(ALICE))
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        events_url = url + created.json()["events_url"]
        missing = await http.get(url + "/v1/streams/nope/events", headers=bearer(BOB))
        assert missing.status_code == 404
        for resp in (
            await http.get(events_url, headers=bearer(BOB)),
            await http.delete(url + f"/v1/streams/{stream_id}", headers=bearer(BOB)),
        ):
            assert resp.status_code == 404, resp.text
            error = resp.json()["error"]
            assert error == {**missing.json()["error"], "id": stream_id}
        with trio.fail_after(5):
            async with http.stream("GET", events_url, headers=bearer(ALICE)) as follow:
                assert follow.status_code == 200
                async for line in follow.aiter_lines():
                    if line.startswith("data:"):
                        break  # alice reads her stream
            cancel = await http.delete(url + f"/v1/streams/{stream_id}", headers=bearer(ALICE))
            assert cancel.status_code == 202
            resp = await http.get(events_url, headers=bearer(ALICE))
        assert '"kind":"cancelled"' in resp.text
        assert (await http.get(events_url, headers=bearer(BOB))).status_code == 404


async def test_metrics_need_a_token_when_auth_is_on(serve_app: ServeApp) -> None:
    config = ServerConfig(auth_tokens=PRINCIPALS)
    app = create_app(_factory(lambda r: CountingProducer(count=1)), config)
    url = await serve_app(app)
    async with httpx.AsyncClient() as http:
        refused = await http.get(url + "/metrics")
        wrong = await http.get(url + "/metrics", headers=bearer("nope-nope"))
        allowed = await http.get(url + "/metrics", headers=bearer(BOB))
        health = await http.get(url + "/health")
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert allowed.status_code == 200
    assert "llmpipe_requests_rejected_total" in allowed.text
    assert health.status_code == 200  # liveness stays open


def test_tokens_file() -> None:
    assert parse_tokens("# ops\nalice: a-token\n\nbob:b:token\n") == (
        ("alice", "a-token"),
        ("bob", "b:token"),
    )
    assert parse_tokens("just-one-token\n") == (("default", "just-one-token"),)
    for text, problem in [
        ("", "no token"),
        ("alice:x\nno-colon\n", "line 2: expected NAME:TOKEN"),
        ("al ice:x\n", "a name is"),
        ("alice:x y\n", "a token is"),
        ("alice:x\nalice:y\n", "given twice"),
        ("alice:same\nbob:same\n", "another principal's"),
    ]:
        with pytest.raises(ConfigError, match=problem) as info:
            parse_tokens(text, source="t.txt")
        assert str(info.value).startswith("t.txt")
        assert "same" not in str(info.value)  # a token is never quoted


# -- the token off the command line ------------------------------------------------------------


def start_serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinks.cli", "serve", "--port", "0", "--scripted", "Hi there.",
         "--rate", "0", "--shutdown-grace", "1", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "serving" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split(" on ", 1)[1].split("/ ", 1)[0]


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert proc.stderr is not None
    proc.stderr.close()


@pytest.mark.slow
async def test_serve_takes_its_tokens_from_the_environment_and_a_file(tmp_path: Path) -> None:
    """``LLMPIPE_AUTH_TOKEN`` and ``--auth-token-file``: the server requires the tokens, and
    ``ps`` (the process's command line) shows none of them; ``llmpipe client`` takes its token
    from ``LLMPIPE_AUTH_TOKEN`` too."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"alice:{ALICE}\nbob:{BOB}\n")
    env_token = "env-token-3"
    proc, url = start_serve("--auth-token-file", str(tokens), env={"LLMPIPE_AUTH_TOKEN": env_token})
    try:
        cmdline = (await trio.Path(f"/proc/{proc.pid}/cmdline").read_bytes()).decode()
        async with httpx.AsyncClient() as http:
            refused = await http.post(url + "/v1/stream", json=BODY)
            for token in (env_token, ALICE, BOB):
                assert token not in cmdline
                allowed = await http.post(url + "/v1/stream", json=BODY, headers=bearer(token))
                assert allowed.status_code == 200, allowed.text
                assert '"type":"done"' in allowed.text
        assert refused.status_code == 401
        client = await trio.to_thread.run_sync(
            partial(
                subprocess.run,
                [sys.executable, "-m", "sinks.cli", "client", url, "--prompt", "hi"],
                cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                env={**os.environ, "LLMPIPE_AUTH_TOKEN": BOB},
            )
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "Hi there."
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auth-token-file", "missing.txt"], "--auth-token-file: cannot read the tokens file"),
        (["--auth-token", ""], "principal 'default': a token is 1-4096 printable"),
    ],
    ids=["unreadable-file", "empty-token"],
)
def test_serve_with_a_bad_token_is_one_line(
    flags: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a server without auth: an unreadable tokens file or an empty token stops it."""
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    code = main(["serve", "--port", "0", "--scripted", "x", *flags], stderr=err)
    assert code == ExitCode.ERROR
    [line] = err.getvalue().strip().splitlines()
    assert line.startswith(f"llmpipe: {message}")
    assert line.endswith("see 'llmpipe serve --help'")


# -- the WebSocket's trust boundary ------------------------------------------------------------

HANDSHAKE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def handshake(url: str, **headers: str) -> httpx.Response:
    """A WebSocket handshake with plain httpx (for the refused ones: trio-websocket's client
    leaks its socket when a handshake is refused)."""
    async with httpx.AsyncClient() as http:
        return await http.get(url + "/v1/ws", headers={**HANDSHAKE, **headers})


async def one_turn(ws: Any) -> str:
    await ws.send_message(json.dumps({"type": "request", "prompt": "hi"}))
    text = ""
    with trio.fail_after(5):
        while (message := json.loads(await ws.get_message()))["type"] != "done":
            text += message.get("text", "")
    return text


async def test_websocket_only_from_the_page_s_own_origin_and_configured_ones(
    serve_app: ServeApp,
) -> None:
    """A page of another origin cannot open the WebSocket (403, through the error table); the
    page's own origin, a ``--cors-origin`` one and a client that is not a page (no Origin) can."""
    config = ServerConfig(cors_origins=("https://app.example",))
    app = create_app(_factory(lambda r: ScriptedProducer.from_text("Hi there.")), config)
    url = await serve_app(app)
    for origin in ("https://evil.example", "null", "http://127.0.0.1:1"):
        refused = await handshake(url, Origin=origin)
        assert refused.status_code == 403, origin
        error = refused.json()["error"]
        assert error["type"] == "forbidden"
        assert error["field"] == "Origin"
        assert "--cors-origin" in error["message"]
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    for origin in (url, "https://app.example", None):
        headers = [] if origin is None else [(b"origin", origin.encode())]
        async with open_websocket_url(ws_url, extra_headers=headers) as ws:
            assert await one_turn(ws) == "Hi there."
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(url + "/metrics")).text
    assert 'llmpipe_requests_rejected_total{status="403"} 3.0' in metrics


async def test_websocket_never_echoes_a_bearer_subprotocol(serve_app: ServeApp) -> None:
    config = ServerConfig(auth_token="s3cret-token")
    app = create_app(_factory(lambda r: ScriptedProducer.from_text("Hi there.")), config)
    url = await serve_app(app)
    for offered in ("bearer.s3cret-token", "bearer.s3cret-token, other"):
        refused = await handshake(url, **{"Sec-WebSocket-Protocol": offered})
        assert refused.status_code == 400, refused.headers
        assert "s3cret" not in str(refused.headers.raw) + refused.text
        assert refused.json()["error"]["field"] == "Sec-WebSocket-Protocol"
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    offered_ = ["bearer.s3cret-token", "llmpipe"]
    async with open_websocket_url(ws_url, subprotocols=offered_) as ws:
        assert ws.subprotocol == "llmpipe"
        assert await one_turn(ws) == "Hi there."


async def test_websocket_connections_per_client_are_limited(serve_app: ServeApp) -> None:
    """Idle connections count: past ``max_websockets_per_client`` the handshake gets a 429 with
    ``Retry-After``; a connection that closes frees its slot."""
    config = ServerConfig(max_websockets_per_client=2)
    app = create_app(_factory(lambda r: ScriptedProducer.from_text("Hi there.")), config)
    url = await serve_app(app)
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    async with open_websocket_url(ws_url), open_websocket_url(ws_url) as second:
        refused = await handshake(url)
        assert refused.status_code == 429
        assert refused.headers["retry-after"]
        error = refused.json()["error"]
        assert error["type"] == "rate_limited"
        assert "too many WebSocket connections from this client (limit 2)" in error["message"]
        assert await one_turn(second) == "Hi there."  # the open ones still work
    runtime = get_runtime(app)
    with trio.fail_after(2):
        while runtime.websockets_active:  # noqa: ASYNC110 (the server sees the closes)
            await trio.sleep(0.005)
    async with open_websocket_url(ws_url) as ws:
        assert await one_turn(ws) == "Hi there."
