"""``llmpipe serve``: the HTTP app (SSE, NDJSON, WebSocket, resumable streams, page)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TextIO

import trio

from pipeline import ConfigError, json_text, lone_exception
from pipeline.stores import StoreError, StreamNotFound, StreamStore, open_store

from ._env import auth_token_from_env
from ._providers import add_provider_options, backend_from_args

if TYPE_CHECKING:
    from ._main import IO

__all__ = ["NAME", "JsonLogFormatter", "add_parser", "run", "server_logging"]

NAME = "serve"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        NAME, help="serve SSE, NDJSON and WebSocket streams over HTTP"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    add_provider_options(parser)
    parser.add_argument(
        "--store",
        metavar="URL",
        help="where resumable streams live: memory (default) or redis://HOST:PORT/DB",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="serve with N processes on the one port (SO_REUSEPORT; auto: one per core). Each "
        "runs its own backend (the local model: one copy each); use --store redis:// so that "
        "any of them resumes or cancels any stream",
    )
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--keyfile", help="the PEM private key of --certfile")
    parser.add_argument(
        "--auth-token",
        help="require 'Authorization: Bearer TOKEN' (a flag shows in ps: prefer "
        "$LLMPIPE_AUTH_TOKEN, read when this flag is not given, or --auth-token-file)",
    )
    parser.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="bearer tokens of several principals, one NAME:TOKEN per line (or one bare "
        "token); each principal reads and cancels only the resumable streams it started",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="allow this origin (repeatable): CORS, and pages that may open the WebSocket "
        "(besides the page's own origin)",
    )
    parser.add_argument("--max-streams-per-client", type=int, default=8)
    parser.add_argument(
        "--max-generations-per-client",
        type=int,
        default=8,
        help="resumable generations (POST /v1/streams) one client may have running",
    )
    parser.add_argument(
        "--max-websockets-per-client",
        type=int,
        default=16,
        help="WebSocket connections (idle or not) one client address may have open",
    )
    parser.add_argument("--heartbeat", type=float, default=15.0, help="seconds between comments")
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=30.0,
        help="give up on a client that stays connected but reads nothing for this long "
        "(the buffering policy decides what that means for its stream)",
    )
    parser.add_argument(
        "--idle-cancel", type=float, default=60.0, help="cancel unread resumable streams after"
    )
    parser.add_argument("--shutdown-grace", type=float, default=5.0)
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="stderr log lines as text, or as one JSON object each (for log shippers)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="expected ends (a client that left, an interrupt, shutdown, idle cancel) are one "
        "info line each; bugs are errors with a traceback (default info)",
    )
    parser.add_argument(
        "--gc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="once listening, freeze the start-up heap (gc.freeze) and set the collector's "
        "thresholds (sinks.server.GC_THRESHOLD): full collections otherwise pause every stream for "
        "100+ ms under load (on by default in this command; the library leaves the collector "
        "alone)",
    )
    return parser


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the fields an expected end records (``extra={"llmpipe": {...}}``, see
    ``Metrics.expected_end``) and, for a bug, ``exception`` (the traceback as one string)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "llmpipe", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json_text(entry)


@contextlib.asynccontextmanager
async def server_logging(stream: TextIO, fmt: str, level: str) -> AsyncIterator[None]:
    """Log llmpipe's records (``llmpipe.*``) at ``level`` and hypercorn's warnings to
    ``stream`` for the block, as text or JSON lines; the handlers are removed at the end."""
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = {"llmpipe": getattr(logging, level.upper()), "hypercorn.error": logging.WARNING}
    saved = []
    for name, lvl in loggers.items():
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(max(lvl, getattr(logging, level.upper())))
        logger.propagate = False
    try:
        yield
    finally:
        for logger, lvl, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(lvl)
            logger.propagate = propagate


async def _check_store(store: StreamStore, url: str | None) -> None:
    """Talk to the store once before listening: a Redis that cannot be reached fails the start
    (instead of every resumable request, later, with a 503)."""
    try:
        await store.info("llmpipe-start-check")
    except StreamNotFound:
        pass
    except StoreError as exc:
        raise ConfigError(f"--store {url}: cannot reach it ({exc})") from None


def _bind_error(exc: Exception, args: argparse.Namespace) -> Exception:
    """A listening socket that could not be opened, as one line naming ``--host``/``--port``."""
    if not isinstance(exc, OSError):
        return exc
    where = f"{args.host}:{args.port}"
    if exc.errno == errno.EADDRINUSE:
        why = f"{where} is already in use (another server?); choose another --port, or 0 for any"
    elif exc.errno == errno.EACCES:
        why = f"no permission to listen on {where} (ports below 1024 need privileges)"
    else:
        why = f"cannot listen on {where}: {exc.strerror or exc} (check --host and --port)"
    return ConfigError(f"--port {args.port}: {why}")


def _workers(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    n = int(value)
    if n < 1:
        raise ValueError(value)
    return n


def _worker(args: argparse.Namespace, ready: Any) -> None:
    """One worker process of ``--workers N`` (spawned): serve on the shared port."""
    from ._main import IO

    args.worker_ready = ready.put
    sys.exit(trio.run(run, args, IO(sys.stdout, sys.stderr)))


async def _supervise(args: argparse.Namespace, io: IO) -> int:
    """Run ``args.workers`` processes serving one port (each binds it with SO_REUSEPORT; the
    port, when 0, is reserved here first by a bound socket that never listens). SIGTERM and
    SIGINT are passed on to every worker, each of which shuts down gracefully. Returns the
    highest exit code of the workers."""
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as reservation:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((args.host, args.port))
        port = reservation.getsockname()[1]
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Queue()
        child_args = argparse.Namespace(**{**vars(args), "port": port, "workers": 1})
        child_args.reuse_port = True
        procs = [ctx.Process(target=_worker, args=(child_args, ready)) for _ in range(args.workers)]
        for proc in procs:
            proc.start()
        try:
            pids = [
                await trio.to_thread.run_sync(functools.partial(ready.get, timeout=120))
                for _ in procs
            ]
            scheme = "https" if args.certfile else "http"
            print(
                f"llmpipe serving on {scheme}://{args.host}:{port}/ with {len(procs)} workers "
                f"(pids {' '.join(map(str, pids))})",
                file=io.err,
                flush=True,
            )
            await _until_signal()
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()  # SIGTERM: a graceful shutdown
            for proc in procs:
                await trio.to_thread.run_sync(proc.join)
    return max(proc.exitcode or 0 for proc in procs)


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def run(args: argparse.Namespace, io: IO) -> int:
    from ..server import GC_THRESHOLD, ServerConfig, create_app, read_tokens, serve

    auth_token = auth_token_from_env() if args.auth_token is None else args.auth_token
    auth_tokens: tuple[tuple[str, str], ...] = ()
    if args.auth_token_file is not None:
        try:
            auth_tokens = read_tokens(args.auth_token_file)
        except ConfigError as exc:
            raise ConfigError(f"--auth-token-file: {exc}") from None
    if args.workers > 1:
        return await _supervise(args, io)
    store = open_store(args.store)  # before anything starts: a bad URL or extra fails here
    async with (
        server_logging(io.err, args.log_format, args.log_level),
        store,
        backend_from_args(args) as backend,
    ):
        config = ServerConfig(
            providers=(backend.name,),
            max_streams_per_client=args.max_streams_per_client,
            max_generations_per_client=args.max_generations_per_client,
            max_websockets_per_client=args.max_websockets_per_client,
            heartbeat_interval=args.heartbeat,
            send_timeout=args.send_timeout,
            idle_cancel_after=args.idle_cancel,
            auth_token=auth_token,
            auth_tokens=auth_tokens,
            cors_origins=tuple(args.cors_origin),
            shutdown_grace=args.shutdown_grace,
            store_url=args.store,
        )
        await _check_store(store, args.store)
        app = create_app(backend, config, store=store)
        gc_threshold = GC_THRESHOLD if args.gc_tuning else None
        async with trio.open_nursery() as nursery:
            try:
                port = await nursery.start(
                    functools.partial(
                        serve,
                        app,
                        args.host,
                        args.port,
                        shutdown_trigger=_until_signal,
                        freeze_heap=args.gc_tuning,
                        gc_threshold=gc_threshold,
                        certfile=args.certfile,
                        keyfile=args.keyfile,
                        reuse_port=args.reuse_port,
                    )
                )
            except Exception as group:
                raise _bind_error(lone_exception(group), args) from None
            scheme = "https" if args.certfile else "http"
            print(
                f"llmpipe serving {backend.name} on {scheme}://{args.host}:{port}/ "
                "(page at /, API under /v1)",
                file=io.err,
                flush=True,
            )
            ready = getattr(args, "worker_ready", None)
            if ready is not None:  # a worker of --workers N
                ready(os.getpid())
    return 0
