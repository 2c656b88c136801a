"""The state one HTTP app shares between its routes: config, producer factory, store, limits,
metrics, the lifespan nursery, and the shutdown signal.

:func:`create_app` builds one :class:`AppRuntime` and hands it to every route, the WebSocket
endpoint included; :func:`get_runtime` finds it from the app (for :func:`serve` and tests).
Everything here lives in the app's trio thread; no locks are needed because nothing awaits
between a check and the update it guards.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import attrs
import trio

from pipeline import DEFAULT_MAX_BYTES, EventReceiver, Pipeline
from pipeline.stores import StreamStore

from ._auth import DEFAULT_PRINCIPAL, authenticate, check_tokens
from ._context import OnDisconnect, ProducerFactory, ServerConfig, StreamRequest
from ._errors import (
    ErrorReply,
    Overloaded,
    RateLimited,
    ShuttingDown,
    error_reply,
)
from ._metrics import Metrics

__all__ = ["LIVE_MAX_SPILL_BYTES", "AppRuntime", "get_runtime"]

STATE_KEY: Final = "llmpipe"
LIVE_MAX_SPILL_BYTES: Final = 16 * 1024 * 1024
"""With ``buffering.policy == "spill"``, a live stream's client may lag this far (in a temporary
file) before the pipeline waits for it."""


@attrs.define(eq=False)
class Generation:
    """A resumable generation running in this process (in the lifespan nursery)."""

    stream_id: str
    client: str = "unknown"  # who started it (the per-client limit of generations)
    on_disconnect: OnDisconnect = "continue"
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    # why it was cancelled: "cancelled", "idle", "disconnected", "shutdown"
    reason: str | None = None

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
    websockets: collections.Counter[str] = attrs.Factory(collections.Counter)
    websockets_active: int = 0
    _tokens: list[tuple[str, bytes]] = attrs.field(init=False, factory=list)

    def begin_shutdown(self) -> None:
        """Tell every open stream to send its final ``shutdown`` error and end. Idempotent;
        called by :func:`serve` when its shutdown trigger fires, before hypercorn's grace."""
        self.shutting_down.set()

    def refuse(self, exc: Exception) -> ErrorReply:
        """The answer to a request refused before it streams (see ``_errors.py``), counted in
        ``llmpipe_requests_rejected`` by status. Every route and the WebSocket (its handshake,
        and a turn the stream limits refuse) answer refusals through here."""
        reply = error_reply(exc)
        self.metrics.requests_rejected.labels(str(reply.status)).inc()
        return reply

    def __attrs_post_init__(self) -> None:
        tokens = list(self.config.auth_tokens)
        if self.config.auth_token is not None:
            tokens.insert(0, (DEFAULT_PRINCIPAL, self.config.auth_token))
        self._tokens = [(name, token.encode()) for name, token in check_tokens(tokens)]

    def check_auth(self, headers: Mapping[str, str]) -> str | None:
        """The principal the request's bearer token names, ``None`` when auth is off (no
        token configured); raises :class:`MissingToken` or :class:`InvalidToken` (401). See
        :func:`~._auth.authenticate`."""
        if not self._tokens:
            return None
        return authenticate(self._tokens, headers)

    def check_generation_limit(self, client: str) -> None:
        """:class:`RateLimited` when ``client`` has ``max_generations_per_client`` generations
        running."""
        limit = self.config.max_generations_per_client
        if sum(1 for g in self.generations.values() if g.client == client) >= limit:
            raise _rate_limited("running generations", limit)

    @contextmanager
    def admit(self, client: str) -> Iterator[None]:
        """Hold one stream slot of ``client`` for the block. Raises :class:`ShuttingDown` while
        shutting down, :class:`RateLimited` past the per-client limit, :class:`Overloaded` past
        the server's total."""
        if self.shutting_down.is_set():
            raise ShuttingDown("the server is shutting down")
        limit = self.config.max_streams_per_client
        if self.per_client[client] >= limit:
            raise _rate_limited("concurrent streams", limit)
        if self.active >= self.config.max_streams_total:
            raise Overloaded("the server is at its stream limit")
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

    @contextmanager
    def admit_websocket(self, client: str) -> Iterator[None]:
        """Hold one WebSocket connection of ``client`` for the block, idle or not (its turns
        also take stream slots: :meth:`admit`). Raises :class:`ShuttingDown` while shutting
        down, :class:`RateLimited` past ``max_websockets_per_client``, :class:`Overloaded` past
        ``max_streams_total`` connections in all."""
        if self.shutting_down.is_set():
            raise ShuttingDown("the server is shutting down")
        limit = self.config.max_websockets_per_client
        if self.websockets[client] >= limit:
            raise _rate_limited("WebSocket connections", limit)
        if self.websockets_active >= self.config.max_streams_total:
            raise Overloaded("the server is at its WebSocket connection limit")
        self.websockets[client] += 1
        self.websockets_active += 1
        try:
            yield
        finally:
            self.websockets[client] -= 1
            if self.websockets[client] <= 0:
                del self.websockets[client]
            self.websockets_active -= 1

    @asynccontextmanager
    async def live_events(
        self, pipeline: Pipeline, request: StreamRequest
    ) -> AsyncIterator[EventReceiver]:
        """Run ``pipeline`` for a live stream (``POST /v1/stream``, a WebSocket turn) and hand
        out its events through a channel with the request's ``buffering`` (policy and
        ``max_bytes``; a ``spill`` file up to :data:`LIVE_MAX_SPILL_BYTES`), counted in the
        buffer metrics while the block runs. See :meth:`pipeline.Pipeline.events`."""
        async with pipeline.events(
            policy=request.policy,
            max_bytes=request.max_buffer_bytes or DEFAULT_MAX_BYTES,
            max_spill_bytes=LIVE_MAX_SPILL_BYTES,
        ) as events:
            self.metrics.live.add(events)
            try:
                yield events
            finally:
                self.metrics.live.remove(events)


def _rate_limited(what: str, limit: int) -> RateLimited:
    return RateLimited(f"too many {what} from this client (limit {limit})", limit=limit)


def get_runtime(app: Any) -> AppRuntime:
    """The :class:`AppRuntime` of an app built by :func:`create_app` (``LookupError`` if not)."""
    runtime = getattr(app.state, STATE_KEY, None)
    if not isinstance(runtime, AppRuntime):
        raise LookupError("not an app built by sinks.server.create_app")
    return runtime
