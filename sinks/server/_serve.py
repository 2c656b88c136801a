"""Serving the app in-process with hypercorn's trio worker, with a graceful shutdown."""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ._runtime import get_runtime

__all__ = ["GC_THRESHOLD", "serve"]

log = logging.getLogger("llmpipe.http")

GC_THRESHOLD: Final = (10_000, 10, 10)
"""The collector's thresholds for a serving process (``serve(..., gc_threshold=GC_THRESHOLD)``,
as ``llmpipe serve`` does): young collections after 10,000 net allocations instead of 700."""


def _shutdown_connections(port: int) -> int:
    """Shut down (``SHUT_RDWR``) every TCP connection of this process whose local port is
    ``port`` (the connections a server on that port accepted; its listening socket, which has
    no peer, is left alone). Returns how many.

    The last resort of a graceful shutdown: hypercorn shields its socket writes from
    cancellation, so a write to a client that stopped reading (or a send that waits for
    something that will never come) outlives the grace period, and with it the process. A shut
    down socket fails those writes at once. Linux (``/proc/self/fd``) and BSDs (``/dev/fd``);
    elsewhere it does nothing and returns 0.
    """
    for fd_dir in ("/proc/self/fd", "/dev/fd"):
        try:
            fds = [int(name) for name in os.listdir(fd_dir)]
        except (OSError, ValueError):
            continue
        break
    else:
        return 0
    count = 0
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # closed meanwhile, or not a socket
        with sock:
            try:
                if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != port:
                    continue
                sock.getpeername()  # a listening socket has none
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, IndexError, TypeError):
                continue
            count += 1
    return count


def _port_of(bind: str) -> int:
    port = urlsplit(bind).port
    if port is None:
        raise RuntimeError(f"hypercorn reported a bind without a port: {bind!r}")
    return port


async def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    freeze_heap: bool = False,
    gc_threshold: tuple[int, int, int] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve ``app`` on ``host:port`` (``port=0``: any free port) until shut down.

    ``reuse_port``: listen with ``SO_REUSEPORT``, so that several processes serve one port
    (the kernel spreads connections over them; ``llmpipe serve --workers N``).

    TLS: with ``certfile`` (PEM, the certificate chain) and ``keyfile`` (PEM, its private key)
    the server speaks HTTPS (and WSS) only, through hypercorn's TLS (HTTP/1.1 and HTTP/2 by
    ALPN); a missing or mismatched file raises at start, before the port is reported.

    Start it with ``port = await nursery.start(serve, app, host, 0)``: the bound port is
    reported through ``task_status`` once the socket listens (hypercorn reports its binds, the
    port is read from them).

    Shutdown: when ``shutdown_trigger`` returns, the app's open streams (for an app from
    :func:`create_app`) get a final ``error`` event of kind ``"shutdown"`` (retryable) and end;
    hypercorn stops accepting, waits at most ``config.shutdown_grace`` seconds for requests in
    flight, then runs the lifespan's end (resumable generations are cancelled; their stored
    events stay). Without a trigger it serves until cancelled (a cancel is abrupt: every task is
    cancelled, no final events). Hypercorn shields its socket writes from cancellation, so when
    the grace runs out, the connections still open are shut down at the socket
    (``_shutdown_connections``): whatever a client did, the shutdown takes the grace at
    most, plus the lifespan's end.

    The collector is process-wide state, so by default ``serve`` leaves it alone; a program
    that is the server (``llmpipe serve``) opts in to the two settings below, which the
    capacity figures in ``benchmarks/CAPACITY.md`` were measured with.

    ``freeze_heap`` (default off): once the socket listens, just before the port is reported,
    run ``gc.collect()`` then ``gc.freeze()``. Start-up leaves a large, long-lived heap (the
    imports alone hold over 200k GC-tracked objects: modules, classes, functions; the provider
    SDKs are the bulk of it), and every full (generation 2) collection traverses all of it:
    measured under load, pauses of 130-200 ms every few seconds, during which the trio event
    loop, and so every stream, stands still. Freezing moves everything alive at that point to
    the permanent generation, which collections skip (it is never freed, which is right for
    import-time objects). Objects created later are collected as usual. Leave it off when the
    caller manages the collector itself, or when ``serve`` runs in a process (tests, an app that
    serves on the side) whose heap at start-up is not meant to live for ever;
    ``gc.unfreeze()`` undoes it.

    ``gc_threshold`` (default ``None``: leave the collector's settings alone; a serving process
    passes :data:`GC_THRESHOLD`) is passed to ``gc.set_threshold`` at the same point. Streaming
    makes cyclic garbage at a steady rate (trio's cancel scopes in httpcore's reads and
    hypercorn's writes, the exceptions that end tasks), and with CPython's default ``(700, 10,
    10)`` the collector runs all the time and its older generations hold every live stream's
    objects: measured at 200 streams of 20 tokens/s, 1,635 young collections, 148 middle and 13
    full ones in 35 s, 2.6 s in all, full pauses up to 96 ms (the p99 delay was 108 ms). With
    ``(10_000, 10, 10)`` at 250 streams: 37 young (pauses up to ~25 ms) and 2 middle ones (up to
    55 ms), p99 delay 25 ms (``benchmarks/CAPACITY.md``). Garbage is still collected, in larger,
    rarer batches (up to ~10,000 more objects wait for the next young collection).
    """
    try:
        runtime = get_runtime(app)
    except LookupError:
        runtime = None
    config = HypercornConfig()
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    config.bind = [f"{bind_host}:{port}"]
    if reuse_port:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            listener.bind((host.strip("[]"), port))
            # hypercorn takes the descriptor over (it closes it when it stops serving)
            config.bind = [f"fd://{listener.detach()}"]
    if (certfile is None) != (keyfile is None):
        raise ValueError("TLS needs both certfile and keyfile")
    config.certfile = certfile
    config.keyfile = keyfile
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    if runtime is not None:
        config.graceful_timeout = runtime.config.shutdown_grace

    port_bound = port

    async def force_close_after(grace: float) -> None:
        await trio.sleep(grace)
        count = await trio.to_thread.run_sync(_shutdown_connections, port_bound)
        if count:
            log.warning(
                "the grace period (%.1f s) ran out: closed %d connection(s) at once", grace, count
            )

    async def trigger() -> None:
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        log.info("shutting down (grace %.1f s)", config.graceful_timeout)
        nursery.start_soon(force_close_after, config.graceful_timeout)
        if runtime is not None:
            runtime.begin_shutdown()

    async def run_hypercorn(task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn_serve(app, config, shutdown_trigger=trigger, task_status=task_status)
        nursery.cancel_scope.cancel()  # the last resort above, if it is still waiting

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run_hypercorn)
        port_bound = _port_of(binds[0])
        if freeze_heap:
            gc.collect()
            gc.freeze()
            log.debug("froze %d objects in the permanent generation", gc.get_freeze_count())
        if gc_threshold is not None:
            gc.set_threshold(*gc_threshold)
        task_status.started(port_bound)
