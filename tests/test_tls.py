"""TLS: ``serve(certfile=, keyfile=)`` and ``llmpipe serve --certfile/--keyfile``, with a
self-signed certificate the test makes with the ``openssl`` command."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from pipeline.testing import ScriptedProducer
from pipeline.wire import SSEDecoder
from sinks.server import create_app, serve

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is not installed (apt-get install -y openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@asynccontextmanager
async def factory(request: object) -> AsyncIterator[ScriptedProducer]:
    yield ScriptedProducer.from_text("Over TLS. Every byte.")


async def test_sse_over_tls(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    app = create_app(factory)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, app, "127.0.0.1", 0, certfile=cert, keyfile=key))
        trusted = ssl.create_default_context(cafile=cert)
        async with httpx.AsyncClient(verify=trusted) as client:
            resp = await client.post(f"https://127.0.0.1:{port}/v1/stream", json={"prompt": "hi"})
            events = SSEDecoder().feed(resp.content)
        assert resp.status_code == 200
        assert "".join(e.data for e in events if e.event == "text").count("TLS") == 1
        assert events[-1].event == "done"
        async with httpx.AsyncClient() as client:  # the system's CAs do not trust it
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/health")
        async with httpx.AsyncClient() as client:  # and plain HTTP is not served
            with pytest.raises(httpx.HTTPError):
                await client.get(f"http://127.0.0.1:{port}/health")
        nursery.cancel_scope.cancel()


def test_serve_needs_both_files(certificate: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="both certfile and keyfile"):
        trio.run(partial(serve, create_app(factory), certfile=certificate[0]))


@pytest.mark.slow
async def test_cli_serves_https(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    proc = subprocess.Popen(  # noqa: ASYNC220 (a server for the test's length)
        [
            sys.executable, "-m", "sinks.cli", "serve", "--port", "0", "--scripted", "Hi there.",
            "--certfile", cert, "--keyfile", key,
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = await trio.to_thread.run_sync(proc.stderr.readline)
        assert " on https://127.0.0.1:" in line, line
        url = line.split(" on ", 1)[1].split("/ ", 1)[0]
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as client:
            assert (await client.get(url + "/health")).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()
