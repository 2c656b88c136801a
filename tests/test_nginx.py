"""``examples/nginx.conf`` in front of the server: a real nginx (Debian's package), started by
the test with the example's addresses replaced by free ports and a short proxy_read_timeout.

Checks ordering, not timing: the first event comes through the proxy before the upstream is
allowed to send the rest (nothing buffers it), heartbeats keep a quiet stream open past the
proxy's read timeout (and without them the proxy cuts it: the config is in force), and a client
that disconnects at the proxy cancels the upstream request (the emulator sees it).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from http_kit import eventually, factory_of

from pipeline import Done, Emit, Producer, TextDelta
from pipeline.producers import OpenAIChatProducer, openai_client
from pipeline.testing.emulator import Reply
from pipeline.wire import SSEDecoder, SSEEvent
from sinks.server import ServerConfig, StreamRequest, create_app, get_runtime, serve

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nginx.conf"
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
PROXY_READ_TIMEOUT = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nginx_config(prefix: Path, upstream_port: int, port: int) -> str:
    """The example, with its addresses and read timeout replaced, in a config of its own."""
    site = EXAMPLE.read_text()
    for old, new in [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("proxy_read_timeout 60s;", f"proxy_read_timeout {PROXY_READ_TIMEOUT:g}s;"),
    ]:
        assert site.count(old) == 1, old
        site = site.replace(old, new)
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nmaster_process off;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n{temp}\n{site}\n}}\n"
    )


@asynccontextmanager
async def nginx_in_front(upstream_port: int, tmp_path: Path) -> AsyncIterator[str]:
    """Run nginx with the example config in front of ``upstream_port``; yields its URL."""
    exe = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if exe is None:
        pytest.fail("nginx is not installed (bash tests/setup.sh, or apt-get install -y nginx)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(tmp_path, upstream_port, port))
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once; trio's process API has no Popen)
        [exe, "-e", str(tmp_path / "error.log"), "-p", str(tmp_path), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with trio.fail_after(10):
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"nginx exited with {proc.returncode}: {err}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    await trio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


@asynccontextmanager
async def proxied(app: Any, tmp_path: Path) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        async with nginx_in_front(port, tmp_path) as url:
            yield url
        nursery.cancel_scope.cancel()


class Gated:
    """Emits ``first``, waits for ``release``, then (after ``pause`` s) ``rest`` and Done."""

    def __init__(self, release: trio.Event | None = None, pause: float = 0.0) -> None:
        self.release = release
        self.pause = pause

    async def stream(self, emit: Emit, /) -> None:
        await emit(TextDelta("first"))
        if self.release is not None:
            await self.release.wait()
        await trio.sleep(self.pause)
        await emit(TextDelta(" rest"))
        await emit(Done("stop"))


async def events_of(response: httpx.Response, until: Callable[[SSEEvent], bool]) -> list[SSEEvent]:
    decoder, events = SSEDecoder(), []
    async for chunk in response.aiter_raw():
        for ev in decoder.feed(chunk):
            events.append(ev)
            if until(ev):
                return events
    return events


def is_text(ev: SSEEvent) -> bool:
    return ev.event == "text"


@pytest.mark.parametrize("accept", ["text/event-stream", "application/x-ndjson"])
async def test_first_event_passes_the_proxy_before_the_rest_exists(
    tmp_path: Path, accept: str
) -> None:
    release = trio.Event()
    app = create_app(factory_of(lambda r: Gated(release)))
    headers = {"Accept": accept}
    async with (
        proxied(app, tmp_path) as url,
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url + "/v1/stream", json=BODY, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        assert "x-accel-buffering" not in resp.headers  # nginx consumes it
        raw = bytearray()
        chunks = resp.aiter_raw()
        with trio.fail_after(5):  # a buffering proxy would hold it until the end: stuck
            while b"first" not in raw:
                raw += await anext(chunks)
        assert not release.is_set()
        assert b"rest" not in raw
        release.set()
        async for chunk in chunks:
            raw += chunk
    assert raw.index(b"first") < raw.index(b"rest") < raw.index(b"done")


@pytest.mark.parametrize(("heartbeat", "survives"), [(0.25, True), (30.0, False)])
async def test_heartbeats_keep_a_quiet_stream_open_past_the_read_timeout(
    tmp_path: Path, heartbeat: float, survives: bool
) -> None:
    """Quiet for 2.5x the proxy's read timeout: heartbeats keep it open; without them (the
    control) nginx cuts the stream, so the short timeout is really in force."""
    app = create_app(
        factory_of(lambda r: Gated(pause=2.5 * PROXY_READ_TIMEOUT)),
        ServerConfig(heartbeat_interval=heartbeat),
    )
    async with (
        proxied(app, tmp_path) as url,
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url + "/v1/stream", json=BODY) as resp,
    ):
        try:
            events = await events_of(resp, lambda ev: ev.event == "done")
        except httpx.RemoteProtocolError:  # nginx cut the chunked body
            events = []
    texts = "".join(json.loads(e.data)["text"] for e in events if is_text(e))
    if survives:
        assert texts == "first rest"
        assert events[-1].event == "done"
    else:
        assert not any(e.event == "done" for e in events)


async def test_disconnect_at_the_proxy_cancels_the_upstream(emulator: Any, tmp_path: Path) -> None:
    emu = await emulator(Reply(["tok "] * 2000, tokens_per_second=200))
    sdk = openai_client(base_url=emu.openai_base_url, api_key="k")

    def make(request: StreamRequest) -> Producer:
        return OpenAIChatProducer(
            sdk, model="emulated-gpt", messages=[dict(m) for m in request.messages]
        )

    app = create_app(factory_of(make))
    try:
        async with proxied(app, tmp_path) as url, httpx.AsyncClient(timeout=10) as client:
            async with client.stream("POST", url + "/v1/stream", json=BODY) as resp:
                seen = 0

                def five_texts(ev: SSEEvent) -> bool:
                    nonlocal seen
                    seen += is_text(ev)
                    return seen >= 5

                await events_of(resp, five_texts)
            with trio.fail_after(5):
                await emu.wait_disconnect(0)
            assert emu.requests[0].outcome == "disconnected"
            runtime = get_runtime(app)
            await eventually(lambda: not runtime.active, within=5)
    finally:
        await sdk.close()
