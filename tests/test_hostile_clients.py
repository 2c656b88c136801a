"""A real ``llmpipe serve`` process against clients that misbehave at the socket: a WebSocket
ping flood, clients that never read, HTTP/1.0 and ``Connection: close``. Whatever a client did,
the connection of a finished response is closed (or kept alive only for hypercorn's idle
timeout) and SIGTERM exits within the grace."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from sinks.server._errors import ClientGone
from sinks.server._stream import client_gone

ROOT = Path(__file__).resolve().parent.parent
GRACE = 2.0
EXIT_MARGIN = 1.5  # the lifespan's end, the interpreter's exit, a loaded machine
PING = b'{"type":"ping"}'


@contextmanager
def serve_process(*extra: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``llmpipe serve`` on a free port (scripted model, ``--shutdown-grace 2``); yields the
    process and its port; killed at the end if still running."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "sinks.cli", "serve", "--port", "0", "--scripted", "a b c",
            "--rate", "0", "--shutdown-grace", str(GRACE), *extra,
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        assert "serving" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield proc, int(line.split(" on ", 1)[1].split("/ ", 1)[0].rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def sigterm_exit_seconds(proc: subprocess.Popen[str]) -> float:
    """Send SIGTERM; the seconds until the process exited with 0 (at most 30 s, else fail)."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    return time.monotonic() - start


def websocket(port: int) -> socket.socket:
    """A raw WebSocket client connected to ``/v1/ws`` (the handshake done)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def text_frame(payload: bytes) -> bytes:
    """A masked text frame (a client's; the zero mask keeps the payload readable)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def stream_request(version: str = "1.1", headers: str = "", body: bytes = b"") -> bytes:
    body = body or json.dumps({"prompt": "hi"}).encode()
    return (
        f"POST /v1/stream HTTP/{version}\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open {timeout} s; got {data[-200:]!r}")
    return data


def wait_for_metric(port: int, line: str, within: float = 10.0) -> None:
    """Scrape ``/metrics`` until it has ``line`` (the server counts on its own time)."""
    deadline = time.monotonic() + within
    while True:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            if line in read_until_closed(sock, timeout=5.0).decode():
                return
        assert time.monotonic() < deadline, f"no {line!r} in /metrics"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("leave", [True, False], ids=["then-leaves", "then-stays"])
def test_sigterm_exits_within_the_grace_after_a_ping_flood(leave: bool) -> None:
    """50,000 pings and no read: the client then leaves (the server used to hang for good:
    the send of a pong waited on hypercorn, which waited for the app to read the disconnect),
    or stays connected, never reading (hypercorn's shielded writes; cut at the grace)."""
    with serve_process() as (proc, port):
        sock = websocket(port)
        sock.sendall(text_frame(PING) * 50_000)
        time.sleep(0.5)  # the pongs pile up unread: closing now resets the connection
        if leave:
            sock.close()
        else:  # a client this far ahead of the answers is disconnected (close code 1008)
            wait_for_metric(port, 'llmpipe_expected_ends_total{reason="inbox_full"} 1.0')
        seconds = sigterm_exit_seconds(proc)
        sock.close()
    assert seconds < GRACE + EXIT_MARGIN, seconds


@pytest.mark.parametrize(
    ("version", "headers"),
    [("1.0", ""), ("1.1", "Connection: close\r\n")],
    ids=["http1.0", "close"],
)
def test_a_finished_stream_closes_the_connection(version: str, headers: str) -> None:
    """HTTP/1.0 and ``Connection: close``: the server closes once the body ended (it used to
    keep the connection until the client left); SIGTERM then exits at once."""
    with serve_process() as (proc, port):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(stream_request(version, headers))
            data = read_until_closed(sock, timeout=5.0)
        assert b'"type":"done"' in data
        assert sigterm_exit_seconds(proc) < GRACE / 2


@pytest.mark.slow
def test_keep_alive_after_a_stream() -> None:
    """HTTP/1.1 keep-alive: after a stream the connection takes another request, then is
    closed by the idle timeout (hypercorn's 5 s); an idle kept-alive connection does not hold
    up SIGTERM."""
    with serve_process() as (proc, port):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(stream_request())
            sock.settimeout(5.0)
            data = b""
            while not data.endswith(b"0\r\n\r\n"):  # the chunked body's end
                data += sock.recv(65536)
            sock.sendall(stream_request())  # the same connection, reused
            data = read_until_closed(sock, timeout=10.0)
            assert data.count(b'"type":"done"') == 1, data
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(stream_request())
            idle.settimeout(5.0)
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                data += idle.recv(65536)
            assert sigterm_exit_seconds(proc) < GRACE / 2


def test_client_gone_is_told_from_bugs() -> None:
    gone = ClientGone("gone")
    assert client_gone(gone)
    assert client_gone(ExceptionGroup("", [gone, ClientGone("again")]))  # writer + heartbeat
    assert client_gone(
        BaseExceptionGroup("", [ExceptionGroup("", [gone]), trio.Cancelled._create()])
    )
    assert not client_gone(ExceptionGroup("", [gone, ValueError("bug")]))
    assert not client_gone(BaseExceptionGroup("", [trio.Cancelled._create()]))
    assert not client_gone(ValueError("bug"))


def test_clients_that_leave_are_one_json_line_each() -> None:
    """``--log-format json``: every client that leaves mid-stream is one info line (no
    traceback), counted in ``llmpipe_expected_ends``; the shutdown too."""
    words = " ".join(f"w{i}" for i in range(5000))
    with serve_process("--log-format", "json", "--scripted", words) as (proc, port):
        body = json.dumps({"prompt": "x", "buffering": {"policy": "block"}}).encode()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(stream_request(body=body))
                assert sock.recv(100)
        wait_for_metric(port, 'llmpipe_expected_ends_total{reason="client_gone"} 3.0')
        assert sigterm_exit_seconds(proc) < GRACE
        assert proc.stderr is not None
        lines = proc.stderr.read().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    ends = [r for r in records if r.get("event") == "stream_ended"]
    assert [(r["level"], r["reason"], r["route"]) for r in ends] == [
        ("info", "client_gone", "/v1/stream")
    ] * 3, records
    assert not [r for r in records if r["level"] not in ("info", "debug")], records
