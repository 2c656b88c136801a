"""The ASGI app: streaming routes, resumable streams, health, metrics.

Routes (see :func:`create_app`)::

    POST   /v1/stream                 one generation, streamed as SSE (or NDJSON)
    POST   /v1/streams                start a resumable generation -> 201 {id, events_url}
    GET    /v1/streams/{id}/events    SSE of a stored stream from Last-Event-ID, then live
    DELETE /v1/streams/{id}           cancel a resumable generation -> 202 (204 if it had ended)
    POST   /v1/chat/completions       the OpenAI API's, streamed or not (``_openai_compat.py``)
    GET    /v1/models                 the providers, as the OpenAI API lists models
    POST   /api/chat                  the Vercel AI SDK's chat route (``_ui_chat.py``)
    WS     /v1/ws                     the WebSocket endpoint (``_ws.py``)
    GET    /health                    {"status": "ok"}
    GET    /metrics                   Prometheus text

The app runs on trio (hypercorn's trio worker; see :func:`serve`). Routes are plain ASGI
callables given the app's :class:`AppRuntime`; streaming ones write with the raw ``send`` (see
:mod:`._stream`): a client disconnect cancels the pipeline, and with it the upstream request,
within milliseconds. A request a route refuses raises one of the server's errors, answered by
:class:`_Endpoint` from the table in ``_errors.py``.

With auth on (``auth_token``/``auth_tokens``), every route but ``/health`` and the static page
needs a bearer token, ``/metrics`` included. A resumable stream is kept under its creator's key
(``_auth.owned_key``): the ``/v1/streams/{id}`` routes look the id up under the caller's
principal, so another principal's stream is a 404 like an unknown id.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

import attrs
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from pipeline import (
    Error,
    Event,
    EventReceiver,
    LLMPipeError,
    Pipeline,
    TextDelta,
    is_terminal,
    lone_exception,
)
from pipeline.stores import StoreError, StreamInfo, StreamNotFound, StreamStore, open_store

from ._auth import owned_key
from ._context import ProducerFactory, ServerConfig, StreamRequest, decode_json
from ._errors import (
    REFUSALS,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    Refused,
    RequestError,
    ShuttingDown,
    UnsupportedMediaType,
    error_reply,
)
from ._metrics import PROMETHEUS_CONTENT_TYPE, Metrics, StreamReason, StreamRecord
from ._openai_compat import (
    CHAT_COMPLETIONS_ROUTE,
    ChatCompletionWriter,
    collect_completion,
    models_list,
    parse_chat_completion,
)
from ._otel import otel_observer
from ._resumable import end_orphan, follow_stream, parse_last_event_id, run_generation
from ._runtime import STATE_KEY, AppRuntime
from ._stream import (
    OUTCOME_REASONS,
    RAW_SEND,
    StreamWriter,
    begin_stream,
    choose_format,
    client_gone,
    raw_send,
    run_stream,
)
from ._ui_chat import UI_CHAT_ROUTE, UIMessageWriter, parse_ui_chat
from ._ws import WebSocketApp

STATIC_DIR: Final = Path(__file__).parent / "static"

__all__ = ["STATIC_DIR", "create_app"]

log = logging.getLogger("llmpipe.http")
_Parsed = TypeVar("_Parsed")

BATCH_MAX_EVENTS: Final = 64
"""At most this many queued events are written with one ``send`` (fewer, larger writes when the
client lags)."""


# ---------------------------------------------------------------------------------------------
# Request parsing


async def read_json_body(runtime: AppRuntime, request: Request) -> object:
    """The request's JSON body. Raises :class:`UnsupportedMediaType` (not JSON),
    :class:`PayloadTooLarge` (larger than ``max_body_bytes``, by ``Content-Length`` or by the
    bytes read), :class:`RequestError` (see :func:`decode_json`)."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {ctype or 'none'!r}",
            field="Content-Type",
        )
    limit = runtime.config.max_body_bytes

    def too_large() -> PayloadTooLarge:
        message = f"the request body is larger than {limit} bytes"
        return PayloadTooLarge(message, field="body", limit=limit)

    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError("Content-Length", "not an integer") from None
        if declared > limit:
            raise too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large()
    return decode_json(bytes(body))


async def read_request(
    runtime: AppRuntime, request: Request, parse: Callable[..., _Parsed]
) -> _Parsed:
    """Authenticate, read and validate a request (see :func:`read_json_body`) with the route's
    validator, ``parse(body, providers=...)``."""
    runtime.check_auth(request.headers)
    data = await read_json_body(runtime, request)
    return parse(data, providers=runtime.config.providers)


async def read_stream_request(runtime: AppRuntime, request: Request) -> StreamRequest:
    """Authenticate, read and validate a generation request (llmpipe's own format)."""
    return await read_request(runtime, request, StreamRequest.from_json)


def client_key(scope: Scope) -> str:
    """The client's address, the key of the per-client stream limit."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


# ---------------------------------------------------------------------------------------------
# Live streams


DIRECT_SLOW_WRITE: Final = 0.05
"""A write that took longer than this (seconds) may have waited for the client to read (its
socket's buffers full): the stream then leaves the direct path (:meth:`StreamWriter.take`) until
one of the pump's own writes is quicker."""


def _frames(writer: StreamWriter, batch: Sequence[Event]) -> tuple[bytes, int]:
    """The bytes of ``batch``'s events up to the first terminal one, and how many those are;
    a heartbeat comment first when nothing was sent yet."""
    chunks = [] if writer.headers_sent else [writer.heartbeat()]
    framed = 0
    for ev in batch:
        chunks.append(writer.frame(ev))
        framed += 1
        if is_terminal(ev):
            break
    return b"".join(chunks), framed


def _account(metrics: Metrics, record: StreamRecord, events: Sequence[Event]) -> None:
    """Count one write of ``events`` (:meth:`Metrics.sent`); an ``Error`` fails ``record``."""
    deltas = chars = 0
    for ev in events:
        if isinstance(ev, TextDelta):
            deltas += 1
            chars += len(ev.text)
        elif isinstance(ev, Error):
            record.fail(ev.kind)
    metrics.sent(record, len(events), deltas, chars)


async def pump(
    runtime: AppRuntime, events: EventReceiver, writer: StreamWriter, record: StreamRecord
) -> None:
    """Copy ``events`` to ``writer`` until the terminal event or the end of the channel.

    The status line waits for the first event, at most ``heartbeat_interval`` (so a provider that
    fails before answering gets a real 502/503); the first bytes of the body are always a
    heartbeat comment. While the client keeps up, each event is written by the task that sends
    it into ``events`` (the writer is the channel's direct consumer: :meth:`StreamWriter.take`,
    then ``written`` here); once it lags, events queued by the time the
    writer is free are batched into one write (at most :data:`BATCH_MAX_EVENTS`): a client or a
    process that lags gets fewer, larger writes. While nothing was written for
    ``heartbeat_interval`` a heartbeat is written (by a task of its own that wakes once per
    interval, so an event costs no timer).

    ``record`` (the stream's telemetry) counts each write (:meth:`Metrics.sent`) and gets an
    ``Error`` ending.
    """
    hb = runtime.config.heartbeat_interval
    metrics = runtime.metrics
    ended = False  # a terminal event went out directly

    def written(event: Event) -> None:
        """After each direct write: count it; a slow one (the client may lag) or the end
        turns the direct path off."""
        nonlocal ended
        if writer.last_write_seconds > DIRECT_SLOW_WRITE:
            writer.direct_paused = True
        if type(event) is TextDelta:
            metrics.sent(record, 1, 1, len(event.text))
        else:
            _account(metrics, record, (event,))
            if is_terminal(event):
                ended = writer.direct_paused = True

    async def heartbeats() -> None:
        while True:
            await trio.sleep_until(writer.last_write_at + hb)
            if trio.current_time() >= writer.last_write_at + hb and not ended:
                await writer.write(writer.heartbeat())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeats)
        writer.on_direct_write = written
        events.deliver_directly(writer)
        try:
            while not ended:
                batch = await events.receive_batch(BATCH_MAX_EVENTS)
                if not batch:
                    break
                data, framed = _frames(writer, batch)
                _account(metrics, record, batch[:framed])
                last = is_terminal(batch[framed - 1])  # it ends the response too
                await writer.write(data, last=last)
                writer.direct_paused = ended or writer.last_write_seconds > DIRECT_SLOW_WRITE
                if last:
                    break
        finally:
            events.deliver_directly(None)
        nursery.cancel_scope.cancel()


async def _serve_live(
    runtime: AppRuntime,
    request: StreamRequest,
    writer: StreamWriter,
    receive: Receive,
    route: str = "/v1/stream",
) -> None:
    """Stream one generation on ``writer`` (whose class decides the wire format: llmpipe's
    SSE or NDJSON, or another API's; see :data:`~._compat.ServeLive`), metered as ``route``."""
    record = begin_stream(runtime, "live", route, request)

    async def body() -> None:
        try:
            async with (
                runtime.factory(request) as producer,
                runtime.live_events(Pipeline(producer), request) as events,
            ):
                writer.source = events
                await pump(runtime, events, writer, record)
        except Exception as group:
            if client_gone(group):
                raise
            exc = lone_exception(group)
            if not isinstance(exc, LLMPipeError):
                log.exception("stream failed", exc_info=exc)
            # Failed before its first event: a real status (a request problem the factory
            # found keeps its 4xx; provider failures are 503 when a retry may work, else 502).
            # After it: an error event.
            reply = error_reply(exc)
            record.fail(reply.kind)
            if writer.headers_sent:
                await writer.write(writer.error_frame(reply.event()))
            else:
                await writer.send_error(reply)

    reason: StreamReason = "cancelled"
    try:
        outcome = await run_stream(runtime, receive, writer, body, route=route)
        reason = OUTCOME_REASONS[outcome]
        if writer.frozen == "overflow":
            record.fail("overflow")
        log.debug("live stream ended: %s", outcome)
    finally:
        runtime.metrics.end_stream(record, reason)


# ---------------------------------------------------------------------------------------------
# Endpoints


@attrs.frozen
class _Endpoint:
    """A route's raw ASGI endpoint (Starlette routes a non-function endpoint to it untouched):
    the route's function, given the app's runtime. A refusal the function raises before it
    answers (:data:`~._errors.REFUSALS`) is answered here, from the table in ``_errors.py``."""

    fn: Callable[[AppRuntime, Scope, Receive, Send], Awaitable[None]]
    runtime: AppRuntime
    openai: bool = False  # refusals in the OpenAI API's error format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.fn(self.runtime, scope, receive, send)
        except REFUSALS as exc:
            if isinstance(exc, StoreError):
                log.warning("%s %s: the store failed: %r", scope["method"], scope["path"], exc)
            reply = self.runtime.refuse(exc)
            response = reply.openai_response() if self.openai else reply.response()
            await response(scope, receive, send)


async def _stream_endpoint(runtime: AppRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/stream``: validate, then stream one generation on this response."""
    request = Request(scope, receive)
    try:
        parsed = await read_stream_request(runtime, request)
        with runtime.admit(client_key(scope)):
            fmt = choose_format(request.headers.get("accept", ""))
            writer = StreamWriter(send, fmt, body_send=raw_send(scope, send))
            await _serve_live(runtime, parsed, writer, receive)
    except ClientDisconnect:
        pass  # gone while sending the body


async def _chat_completions_endpoint(
    runtime: AppRuntime, scope: Scope, receive: Receive, send: Send
) -> None:
    """``POST /v1/chat/completions``: the OpenAI API's, streamed or not (``_openai_compat.py``)."""
    request = Request(scope, receive)
    try:
        chat = await read_request(runtime, request, parse_chat_completion)
        with runtime.admit(client_key(scope)):
            if chat.stream:
                writer = ChatCompletionWriter(send, chat, body_send=raw_send(scope, send))
                await _serve_live(runtime, chat.request, writer, receive, CHAT_COMPLETIONS_ROUTE)
            else:
                await collect_completion(runtime, chat, send, receive)
    except ClientDisconnect:
        pass


async def _ui_chat_endpoint(
    runtime: AppRuntime, scope: Scope, receive: Receive, send: Send
) -> None:
    """``POST /api/chat``: the Vercel AI SDK's chat request, answered with a UI message stream
    (``_ui_chat.py``)."""
    request = Request(scope, receive)
    try:
        parsed = await read_request(runtime, request, parse_ui_chat)
        with runtime.admit(client_key(scope)):
            writer = UIMessageWriter(send, body_send=raw_send(scope, send))
            await _serve_live(runtime, parsed, writer, receive, UI_CHAT_ROUTE)
    except ClientDisconnect:
        pass


async def _events_endpoint(runtime: AppRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /v1/streams/{id}/events``: replay from ``Last-Event-ID``, then follow live."""
    request = Request(scope, receive)
    stream_id = str(request.path_params["stream_id"])
    key = owned_key(runtime.check_auth(request.headers), stream_id)
    store = _store(runtime)
    raw_after = request.headers.get("last-event-id")
    if raw_after is None:
        raw_after = request.query_params.get("last_event_id")
    try:
        after = parse_last_event_id(raw_after)
    except ValueError:
        raise RequestError("Last-Event-ID", "expected a non-negative integer") from None
    info = await _info_or_404(store, key, stream_id)
    if info.ended and after >= info.last_seq:
        # Nothing will ever follow: 204 is how the SSE standard stops a browser's EventSource
        # from reconnecting (it would otherwise retry for the stream's whole retention).
        await Response(status_code=204)(scope, receive, send)
        return
    with runtime.admit(client_key(scope)):
        writer = StreamWriter(send, "sse", body_send=raw_send(scope, send))

        async def body() -> None:
            try:
                await follow_stream(runtime, store, key, after, writer)
            except Exception as group:
                if client_gone(group):
                    raise
                exc = lone_exception(group)
                if isinstance(exc, BaseExceptionGroup):
                    # Both of the reader's tasks failing on the store at once: a store failure.
                    stores, rest = exc.split(StoreError)
                    if stores is not None and rest is None:
                        exc = lone_exception(stores.exceptions[0])
                if isinstance(exc, StreamNotFound):
                    event = Error(kind="not_found", message="the stream was deleted")
                elif isinstance(exc, StoreError):
                    log.warning("stream %s: store failed: %r", stream_id, exc)
                    event = Error(kind="store", message="the stream store failed", retryable=True)
                else:
                    log.exception("stream %s: reader failed", stream_id, exc_info=exc)
                    event = Error(kind="internal", message="internal error")
                await writer.write(writer.error_frame(event))

        await run_stream(runtime, receive, writer, body, route="/v1/streams/{id}/events")
        runtime.metrics.streams_total.labels("resume").inc()


async def _create_endpoint(runtime: AppRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/streams``: start a resumable generation in the lifespan nursery."""
    request = Request(scope, receive)
    principal = runtime.check_auth(request.headers)  # the stream's owner (401 if none)
    parsed = await read_request(runtime, request, partial(StreamRequest.from_json, resumable=True))
    store = _store(runtime)
    nursery = runtime.nursery
    if nursery is None or runtime.shutting_down.is_set():
        raise ShuttingDown("the server is not accepting generations")
    client = client_key(scope)
    runtime.check_generation_limit(client)
    if len(runtime.generations) >= runtime.config.max_streams_total:
        raise Overloaded("too many generations")
    stream_id = secrets.token_urlsafe(16)
    key = owned_key(principal, stream_id)  # the creator's: only it may read or cancel it
    await store.create(key, lease=runtime.config.owner_lease)
    await nursery.start(run_generation, runtime, store, key, parsed, client)
    events_url = f"/v1/streams/{stream_id}/events"
    response = JSONResponse(
        {"id": stream_id, "events_url": events_url},
        status_code=201,
        headers={"Location": events_url},
    )
    await response(scope, receive, send)


async def _cancel_endpoint(runtime: AppRuntime, scope: Scope, receive: Receive, send: Send) -> None:
    """``DELETE /v1/streams/{id}``: ask the generation to stop (202), 204 if it had ended or
    had no live owner (then the stream is ended here, with a ``cancelled`` error)."""
    request = Request(scope, receive)
    stream_id = str(request.path_params["stream_id"])
    key = owned_key(runtime.check_auth(request.headers), stream_id)
    store = _store(runtime)
    info = await _info_or_404(store, key, stream_id)
    response: Response
    if await end_orphan(store, info, cancelled=True):
        response = Response(status_code=204)
    else:
        try:
            await store.request_cancel(key)
        except StoreError as exc:
            log.warning("stream %s: cancel request failed: %r", stream_id, exc)
        gen = runtime.generations.get(key)
        if gen is not None:
            gen.cancel("cancelled")
        response = JSONResponse({"id": stream_id, "status": "cancelling"}, status_code=202)
    await response(scope, receive, send)


def _store(runtime: AppRuntime) -> StreamStore:
    if runtime.store is None:
        raise NotReady("the server is not started (no lifespan)")
    return runtime.store


async def _info_or_404(store: StreamStore, key: str, stream_id: str) -> StreamInfo:
    """The info of the stream stored under ``key`` (:func:`owned_key`); :class:`NotFound`
    naming ``stream_id`` if there is none (another principal's stream is none of ours)."""
    try:
        return await store.info(key)
    except StreamNotFound:
        raise NotFound("no stream with that id", id=stream_id) from None


def _routes(runtime: AppRuntime) -> list[BaseRoute]:
    async def health(request: Request) -> Response:
        if runtime.shutting_down.is_set():
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok", "pid": os.getpid()})  # which worker answered

    async def models(request: Request) -> Response:
        try:
            runtime.check_auth(request.headers)
        except REFUSALS as exc:
            return runtime.refuse(exc).openai_response()
        return JSONResponse(models_list(runtime.config.providers))

    async def metrics(request: Request) -> Response:
        try:
            runtime.check_auth(request.headers)  # any principal (when auth is on)
        except Refused as exc:
            return runtime.refuse(exc).response()
        return Response(runtime.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return [
        Route("/v1/stream", _Endpoint(_stream_endpoint, runtime), methods=["POST"]),
        Route("/v1/streams", _Endpoint(_create_endpoint, runtime), methods=["POST"]),
        Route(
            "/v1/streams/{stream_id}/events",
            _Endpoint(_events_endpoint, runtime),
            methods=["GET"],
        ),
        Route("/v1/streams/{stream_id}", _Endpoint(_cancel_endpoint, runtime), methods=["DELETE"]),
        Route(
            CHAT_COMPLETIONS_ROUTE,
            _Endpoint(_chat_completions_endpoint, runtime, openai=True),
            methods=["POST"],
        ),
        Route("/v1/models", models, methods=["GET"]),
        Route(UI_CHAT_ROUTE, _Endpoint(_ui_chat_endpoint, runtime), methods=["POST"]),
        WebSocketRoute("/v1/ws", WebSocketApp(runtime)),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # Last, so it can never hide an API route: the web page and its ES module.
        Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"),
    ]


class _App(Starlette):
    """Starlette, keeping the ASGI server's own ``send`` in the scope (:data:`RAW_SEND`) for the
    bodies of streamed responses (:func:`raw_send`) while its middleware is the app's own
    (Starlette's error and exception handling, CORS), which acts on the status line and headers
    only. Once middleware is added to it (``add_middleware``: it may act on bodies), every
    message goes through the middleware."""

    def __init__(
        self,
        *,
        routes: list[BaseRoute],
        middleware: list[Middleware],
        lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]],
    ) -> None:
        super().__init__(routes=routes, middleware=middleware, lifespan=lifespan)
        self._own_middleware = len(self.user_middleware)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if len(self.user_middleware) == self._own_middleware:
            scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(
    producer_factory: ProducerFactory,
    config: ServerConfig = ServerConfig(),  # noqa: B008 (frozen, immutable)
    *,
    store: StreamStore | None = None,
) -> Starlette:
    """Build the ASGI app (Starlette) that serves generations made by ``producer_factory``.

    The app must run on trio (hypercorn's trio worker; :func:`serve` runs it in-process). Its
    lifespan opens the store (``open_store(config.store_url)`` unless ``store`` is given; a given
    store is not closed by the app) and a nursery that runs resumable generations; at the end of
    the lifespan those are cancelled (their stored events stay). Its state is reachable with
    ``sinks.server.get_runtime(app)``.

    Telemetry: Prometheus text at ``GET /metrics``; when the ``opentelemetry`` package (the
    ``otel`` extra) is installed, also a span and OTel metrics per stream (``_otel.py``), on the
    global providers unless ``config.otel_tracer_provider``/``otel_meter_provider`` are given.

    Concurrency: any number of requests run at once, each in its own task; a stream's pipeline
    runs in a task of the lifespan nursery, watched by its request's task (live; without a
    running lifespan, in the request's task), or in the lifespan nursery on its own (resumable).
    """
    runtime = AppRuntime(producer_factory, config)
    otel = otel_observer(config.otel_tracer_provider, config.otel_meter_provider)
    if otel is not None:
        runtime.metrics.observers.append(otel)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if store is None:
                runtime.store = await stack.enter_async_context(open_store(config.store_url))
            else:
                runtime.store = store
            try:
                async with trio.open_nursery() as nursery:
                    runtime.nursery = nursery
                    try:
                        yield
                    finally:
                        runtime.begin_shutdown()
                        runtime.nursery = None
                        for gen in list(runtime.generations.values()):
                            gen.cancel("shutdown")
            finally:
                runtime.store = None

    middleware: list[Middleware] = []
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Accept", "Last-Event-ID"],
                expose_headers=["Location"],
                max_age=600,
            )
        )
    app = _App(routes=_routes(runtime), middleware=middleware, lifespan=lifespan)
    setattr(app.state, STATE_KEY, runtime)
    return app
