"""The state one HTTP app shares between its routes: config, producer factory, store, limits,
metrics, the lifespan nursery, and the shutdown signal.

:func:`get_runtime` finds it from any Starlette ``app`` built by :func:`create_app` (the
WebSocket endpoint in ``_ws.py`` uses it to reach the factory, the config and the metrics).
Everything here lives in the app's trio thread; no locks are needed because nothing awaits
between a check and the update it guards.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import attrs
import trio
from starlette.responses import JSONResponse

from pipeline.stores import StreamStore

from ._context import ProducerFactory, ServerConfig
from ._metrics import Metrics

__all__ = ["AppRuntime", "HTTPError", "get_runtime", "json_error"]

STATE_KEY: Final = "llmpipe"


class HTTPError(Exception):
    """A request is refused with ``status`` and the JSON ``payload`` (``{"error": {...}}``)."""

    def __init__(
        self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status}: {payload}")
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(self.payload, status_code=self.status, headers=self.headers)


def json_error(
    status: int,
    type_: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> HTTPError:
    """An :class:`HTTPError` with body ``{"error": {"type": type_, "message": ..., **extra}}``."""
    return HTTPError(status, {"error": {"type": type_, "message": message, **extra}}, headers)


@attrs.define(eq=False)
class Generation:
    """A resumable generation running in this process (in the lifespan nursery)."""

    stream_id: str
    client: str = "unknown"  # who started it (the per-client limit of generations)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    reason: str | None = None  # why it was cancelled: "cancelled", "idle", "shutdown"

    def cancel(self, reason: str) -> None:
        """Stop the generation (idempotent; the first reason wins)."""
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()


@attrs.define(eq=False)
class AppRuntime:
    """Shared state of one app. ``store`` and ``nursery`` are set while the lifespan runs."""

    factory: ProducerFactory
    config: ServerConfig
    metrics: Metrics = attrs.Factory(Metrics)
    store: StreamStore | None = None
    nursery: trio.Nursery | None = None
    shutting_down: trio.Event = attrs.Factory(trio.Event)
    generations: dict[str, Generation] = attrs.Factory(dict)
    per_client: collections.Counter[str] = attrs.Factory(collections.Counter)
    active: int = 0

    def begin_shutdown(self) -> None:
        """Tell every open stream to send its final ``shutdown`` error and end. Idempotent;
        called by :func:`serve` when its shutdown trigger fires, before hypercorn's grace."""
        self.shutting_down.set()

    def check_auth(self, headers: Mapping[str, str]) -> None:
        """Raise a 401 :class:`HTTPError` unless the request carries the bearer token (when one
        is configured). The comparison takes constant time."""
        token = self.config.auth_token
        if token is None:
            return
        value = headers.get("authorization", "")
        scheme, _, given = value.partition(" ")
        if not value:
            raise json_error(
                401,
                "unauthorized",
                "missing bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="llmpipe"'},
            )
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise json_error(
                401,
                "unauthorized",
                "invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="llmpipe", error="invalid_token"'},
            )

    def _rate_limited(self, what: str, limit: int) -> HTTPError:
        self.metrics.requests_rejected.labels("429").inc()
        return json_error(
            429,
            "rate_limited",
            f"too many {what} from this client (limit {limit})",
            headers={"Retry-After": "1"},
            limit=limit,
        )

    def check_generation_limit(self, client: str) -> None:
        """429 when ``client`` has ``max_generations_per_client`` generations running."""
        limit = self.config.max_generations_per_client
        if sum(1 for g in self.generations.values() if g.client == client) >= limit:
            raise self._rate_limited("running generations", limit)

    @contextmanager
    def admit(self, client: str) -> Iterator[None]:
        """Hold one stream slot of ``client`` for the block; 429 past the per-client limit, 503
        past the server's total, 503 while shutting down."""
        if self.shutting_down.is_set():
            raise json_error(503, "shutting_down", "the server is shutting down", retryable=True)
        limit = self.config.max_streams_per_client
        if self.per_client[client] >= limit:
            raise self._rate_limited("concurrent streams", limit)
        if self.active >= self.config.max_streams_total:
            self.metrics.requests_rejected.labels("503").inc()
            raise json_error(
                503,
                "overloaded",
                "the server is at its stream limit",
                headers={"Retry-After": "1"},
                retryable=True,
            )
        self.per_client[client] += 1
        self.active += 1
        self.metrics.streams_active.inc()
        try:
            yield
        finally:
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]
            self.active -= 1
            self.metrics.streams_active.dec()


def get_runtime(app: Any) -> AppRuntime:
    """The :class:`AppRuntime` of an app built by :func:`create_app` (``LookupError`` if not)."""
    runtime = getattr(app.state, STATE_KEY, None)
    if not isinstance(runtime, AppRuntime):
        raise LookupError("not an app built by sinks.server.create_app")
    return runtime
