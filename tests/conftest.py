"""Shared pytest fixtures."""

from __future__ import annotations

# --- emulator fixture (pipeline.testing.emulator) -------------------------------------------------
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
import trio

if TYPE_CHECKING:
    from pipeline.testing.emulator import Emulator, ReplySource

EmulatorFactory = Callable[..., Awaitable["Emulator"]]


@pytest.fixture
def emulator(nursery: trio.Nursery) -> EmulatorFactory:
    """A factory: ``emu = await emulator(Reply("Hi there"))`` starts a loopback provider
    emulator on a free port (default reply: ``DEFAULT_REPLY``); it serves until the end of the
    test (it runs in pytest-trio's ``nursery`` fixture)."""
    from pipeline.testing.emulator import DEFAULT_REPLY, serve_emulator

    async def start(reply: ReplySource = DEFAULT_REPLY) -> Emulator:
        started: Emulator = await nursery.start(serve_emulator, "127.0.0.1", 0, reply)
        return started

    return start


# --- end of emulator fixture --------------------------------------------------------------------


# --- redis fixture (pipeline.stores.RedisStore) ---------------------------------------------------
# A private redis-server for the test session, on a free loopback port (never the machine's
# shared Redis on 6379). Missing redis-server is a failure, not a skip: CI installs it.
from collections.abc import Iterator  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a private ``redis-server`` started for the session
    (no persistence), stopped at the end."""
    import shutil
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not installed: the RedisStore tests need it "
            "(apt-get install -y redis-server)"
        )
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10.0
        while not _redis_ping(port):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"redis-server exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer PING on port {port} within 10 s")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


# --- end of redis fixture -----------------------------------------------------------------------


# --- the HTTP app (sinks.server) ------------------------------------------------------------------
from typing import Any  # noqa: E402

ServeApp = Callable[[Any], Awaitable[str]]


@pytest.fixture
def serve_app(nursery: trio.Nursery) -> ServeApp:
    """``url = await serve_app(app)``: serve an app of ``sinks.server.create_app`` with
    ``sinks.server.serve`` on 127.0.0.1, a free port, until the end of the test (in pytest-trio's
    ``nursery``); ``url`` is ``http://127.0.0.1:PORT``."""
    from functools import partial

    from sinks.server import serve

    async def start(app: Any) -> str:
        port: int = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        return f"http://127.0.0.1:{port}"

    return start


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The app's ``store_url``: in memory, or a private redis-server (``redis_url``)."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


# --- timeouts that fail only their own test ---------------------------------------------------
# pytest-timeout's signal method raises from a SIGALRM handler wherever the main thread is: in a
# trio test that is usually inside trio's scheduler, which is left broken for every later test
# ("Attempted to call run() from inside a run()"). So each trio test runs beside a watchdog of
# its own that waits in a worker thread (wall time: MockClock does not move it) and, a little
# before pytest-timeout would fire, cancels the test and fails it through trio. pytest-timeout
# stays the last resort for a test stuck where trio cannot cancel it (a blocking call).
import functools  # noqa: E402
import inspect  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402


def _timeout_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0)


def _with_watchdog(test: Callable[..., Awaitable[None]], timeout: float) -> Callable[..., Any]:
    seconds = timeout - min(5.0, timeout / 10)

    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> None:
        timed_out = False
        async with trio.open_nursery() as nursery:

            async def watchdog() -> None:
                nonlocal timed_out
                stop = threading.Event()
                try:
                    ended = await trio.to_thread.run_sync(
                        stop.wait, seconds, abandon_on_cancel=True
                    )
                finally:
                    stop.set()  # the test ended first: the worker thread returns at once
                if not ended:
                    timed_out = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watchdog, name="trio watchdog")
            try:
                await test(*args, **kwargs)
            finally:
                nursery.cancel_scope.cancel()
        if timed_out:
            pytest.fail(f"timed out after {seconds:g} s (its timeout is {timeout:g} s)")

    return guarded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = getattr(item, "obj", None)
        timeout = _timeout_of(item)
        if inspect.iscoroutinefunction(test) and timeout > 0 and not hasattr(test, "hypothesis"):
            item.obj = _with_watchdog(test, timeout)  # type: ignore[attr-defined]
