"""Writing an event stream on the raw ASGI ``send``, and watching its client.

:class:`StreamWriter` writes SSE (or NDJSON) bytes with ``http.response.body`` messages. Under
hypercorn a body message returns once the bytes are in the socket, so a client that stops
reading blocks ``write`` and the pipeline behind it (bounded memory; the channel policy decides
whether the producer waits or deltas are merged).

:func:`run_stream` runs a stream body in a task of the app's lifespan nursery (so the writes
cost no extra scheduling hop and a write stuck on a client that stopped reading never pins the
request task) while the request task watches:

* the disconnect watcher awaits ``receive()``; ``http.disconnect`` cancels the body, so the
  pipeline, the producer and its upstream HTTP request are cancelled within one scheduling
  round (hypercorn reports a closed socket in 1-3 ms). A ``write`` that fails (the transport
  raised) counts the same.
* the shutdown watcher waits for :attr:`AppRuntime.shutting_down`; it cancels only the body,
  after which a final ``error`` frame of kind ``"shutdown"`` (retryable, without ``id`` so a
  resuming client's ``Last-Event-ID`` stays on the last real event) is written and the response
  ends.
* the frozen-client watcher (:func:`wait_frozen`) gives up on a client that stays connected
  but reads nothing for ``send_timeout`` seconds (the send deadline): the body is cancelled and
  the request task returns at once, so hypercorn closes the socket and the stuck write fails.
  What the deadline means for the stream is its buffering policy's: ``fail`` ends it with an
  ``overflow`` error at once; the others (``coalesce`` keeps merging, ``spill`` keeps spilling,
  ``block``) let the generation go on while it still can, and end the stream once nothing moves
  (the producer has finished or waits on the full buffer) and the client still reads nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal, Protocol

import attrs
import trio
from starlette.types import Receive, Scope, Send

from pipeline import (
    Error,
    Event,
    EventReceiver,
    Heartbeat,
    Policy,
    event_to_json,
    json_text,
    lone_exception,
)
from pipeline.wire import (
    NDJSON_CONTENT_TYPE,
    SSE_HEADERS,
    encode_comment,
    encode_event,
    event_frame,
    ndjson_line,
)

from ._context import StreamRequest
from ._errors import ClientGone, ErrorReply
from ._metrics import StreamKind, StreamReason, StreamRecord
from ._runtime import AppRuntime

__all__ = [
    "OUTCOME_REASONS",
    "RAW_SEND",
    "Format",
    "Frozen",
    "StreamWriter",
    "Watched",
    "begin_stream",
    "choose_format",
    "client_gone",
    "raw_send",
    "run_stream",
    "wait_frozen",
]

log = logging.getLogger("llmpipe.http")

Format = Literal["sse", "ndjson"]
Frozen = Literal["overflow", "gone"]
SHUTDOWN_WRITE_TIMEOUT: Final = 1.0
"""How long the final frame and the end of a response may take at shutdown (at most half the
grace): a client that stopped reading does not hold the shutdown up longer."""
_SEND_ERRORS: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

RAW_SEND: Final = "llmpipe.raw_send"
"""The scope key under which the app keeps the ASGI server's own ``send`` (see
:func:`raw_send`)."""

OUTCOME_REASONS: Final[Mapping[str, StreamReason]] = {
    "done": "done",
    "gone": "consumer_gone",
    "shutdown": "cancelled",
}
"""The telemetry reason of a stream that :func:`run_stream` ended with each outcome."""


def begin_stream(
    runtime: AppRuntime, kind: StreamKind, route: str, request: StreamRequest
) -> StreamRecord:
    """Start the telemetry record of a stream (Prometheus and any other observers, such as
    OpenTelemetry); end it with ``runtime.metrics.end_stream``. The provider is the request's,
    else the server's first (its default)."""
    providers = runtime.config.providers
    provider = request.provider or (providers[0] if providers else None)
    return runtime.metrics.begin_stream(kind, route, provider, request.model)


def raw_send(scope: Scope, send: Send) -> Send:
    """The ASGI server's own ``send`` for the body of the response to ``scope``, past the app's
    middleware (which acts on the status line and headers only: errors before the response
    started, CORS headers), as the app stored it under :data:`RAW_SEND`; else ``send``."""
    raw: Send = scope.get(RAW_SEND, send)
    return raw


def client_gone(exc: BaseException) -> bool:
    """Whether ``exc`` only says the client went away: a :class:`ClientGone`, or exception
    groups (nested, of any size: a stream's writer and its heartbeat task may both see it)
    holding nothing but those and cancellations. That is an expected end, not a bug."""
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split((ClientGone, trio.Cancelled))[1]
        return rest is None and exc.subgroup(ClientGone) is not None
    return isinstance(exc, ClientGone)


def choose_format(accept: str) -> Format:
    """NDJSON when the ``Accept`` header asks for ``application/x-ndjson``, else SSE."""
    return "ndjson" if NDJSON_CONTENT_TYPE in accept.lower() else "sse"


def _nothing(event: Event) -> None:
    pass


class StreamWriter:
    """One streamed response.

    The status line and headers go out with the first :meth:`write` (or :meth:`start`). After
    that every problem must be reported as an event: :attr:`headers_sent` tells which.

    Concurrency: several tasks may write (the stream's pump and its heartbeat task); messages
    go out one at a time, in the order the writes were called. A write that does not wait (the
    usual case) costs no scheduling round of its own: the ASGI ``send`` is awaited in the
    caller's task. :attr:`last_write_at` (``trio.current_time()`` of the latest write started)
    tells a heartbeat task when the stream was last active; :attr:`last_write_seconds` is how
    long the latest completed write took (long: the client may lag).

    It is also the :class:`pipeline.DirectConsumer` of the channel its pump reads
    (:meth:`ready`, :meth:`take`): while the client keeps up, the producer's task frames and
    writes each event itself; the pump pauses that (:attr:`direct_paused`) once a write is slow.

    Hypercorn shields its socket writes: a write to a client that stopped reading cannot be
    cancelled. :func:`run_stream` therefore runs the stream's body in a task of the app's
    lifespan nursery, so that the request task can give up on it (see there).
    """

    def __init__(
        self,
        send: Send,
        fmt: Format,
        *,
        extra_headers: tuple[tuple[str, str], ...] = (),
        body_send: Send | None = None,
    ) -> None:
        self._send = send
        # Body messages may skip the app's middleware (``raw_send``): it acts on the status
        # line and headers only, and each of its ``send`` wrappers is one more coroutine frame
        # resumed at every checkpoint of every write.
        self._body_send = send if body_send is None else body_send
        self._writing = False
        self._waiting = trio.lowlevel.ParkingLot()
        self.format: Format = fmt
        self.extra_headers = extra_headers
        self.headers_sent = False
        self.ended = False
        self.gone = False
        self.bytes_written = 0
        # ``trio.current_time`` without its two call layers: read twice per write.
        self._now = trio.lowlevel.current_clock().current_time
        self.last_write_at = self._now()
        self.last_write_seconds = 0.0
        self._waiting_since: float | None = None
        # The channel the body writes from (set by the live pump): the frozen-client watcher
        # reads its policy and progress. ``None`` (a resume reader): nothing upstream waits.
        self.source: EventReceiver | None = None
        # How the stream was given up when its client froze (see :func:`wait_frozen`).
        self.frozen: Frozen | None = None
        # As a direct consumer (:meth:`take`), both set by the pump: whether the direct path
        # is off (the client lags, or the stream ended), and what follows each direct write.
        self.direct_paused = False
        self.on_direct_write: Callable[[Event], None] = _nothing

    def waiting_for(self) -> float:
        """How long the ASGI ``send`` in progress has been waiting for the client to read (0.0
        when none is)."""
        since = self._waiting_since
        return 0.0 if since is None else trio.current_time() - since

    # -- encoding --------------------------------------------------------------------------------

    def frame(self, event: Event) -> bytes:
        return event_frame(event) if self.format == "sse" else ndjson_line(event)

    def heartbeat(self) -> bytes:
        """A keep-alive: an SSE comment, or a ``heartbeat`` event line in NDJSON."""
        if self.format == "sse":
            return encode_comment("keep-alive")
        return ndjson_line(Heartbeat())

    def error_frame(self, event: Error) -> bytes:
        """An error that is not one of the stream's numbered events (no ``id``)."""
        if self.format == "sse":
            return encode_event(event_to_json(event), event=event.type)
        return ndjson_line(event)

    # -- ASGI ------------------------------------------------------------------------------------

    def _start_message(self) -> dict[str, object]:
        if self.format == "sse":
            headers = list(SSE_HEADERS)
        else:
            headers = [
                ("Content-Type", NDJSON_CONTENT_TYPE),
                ("Cache-Control", "no-cache"),
                ("X-Accel-Buffering", "no"),
            ]
        headers.extend(self.extra_headers)
        self.headers_sent = True
        return {
            "type": "http.response.start",
            "status": 200,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        }

    async def start(self) -> None:
        """Send the status line and headers now (idempotent)."""
        if not self.headers_sent:
            await self._raw(self._start_message())

    async def write(self, data: bytes, *, last: bool = False) -> None:
        """Send ``data`` (the headers first if needed). ``last``: ``data`` ends the response
        (a stream's terminal event: a client that reads to the end of the body is done with it,
        and one that closes the connection on it does not cut the stream short); it is
        shielded from cancellation. Once the response has ended, nothing more is sent (a
        heartbeat may race the last event). Raises :class:`ClientGone`."""
        if self.gone:
            raise ClientGone("the client went away")
        if self.ended:
            return
        message = {"type": "http.response.body", "body": data, "more_body": not last}
        # A body message goes past the middleware.
        send = self._body_send if self.headers_sent else self._send
        messages = (message,) if self.headers_sent else (self._start_message(), message)
        if last:
            self.ended = True
            # Not cut half-way (see _raw_final), however long it waits (a write in progress, a
            # client that reads slowly): a client that stopped reading is the send deadline's
            # (run_stream), as for any write.
            with trio.CancelScope(shield=True):
                await self._raw(*messages, send=send, final=True)
        else:
            await self._raw(*messages, send=send)
        self.bytes_written += len(data)

    # -- as a direct consumer of the channel it writes from ---------------------------------------

    def ready(self) -> bool:
        """:class:`pipeline.DirectConsumer`: whether :meth:`take` may write now (no write in
        progress, the client still there, the direct path not paused by the pump)."""
        return not (self.direct_paused or self._writing or self.gone)

    async def take(self, event: Event, /) -> bool:
        """:class:`pipeline.DirectConsumer`: frame and write ``event`` in the caller's task (the
        producer's), then call :attr:`on_direct_write` with it; False if the client went away
        (the event stays queued, and the pump's write of it raises :class:`ClientGone`)."""
        if not self.headers_sent or event.terminal:
            data = self.frame(event) if self.headers_sent else self.heartbeat() + self.frame(event)
            try:
                await self.write(data, last=event.terminal)
            except ClientGone:
                return False
            self.on_direct_write(event)
            return True
        data = self.frame(event)
        # :meth:`_raw` for one body message, inlined: this is the per-token path, and a call
        # level here is one more frame resumed at each of hypercorn's checkpoints in the send.
        while self._writing:
            await self._waiting.park()
        if self.gone:
            return False
        self._writing = True
        self.last_write_at = self._waiting_since = started = self._now()
        try:
            await self._body_send({"type": "http.response.body", "body": data, "more_body": True})
        except _SEND_ERRORS:
            self.gone = True
            return False
        finally:
            # :meth:`_release`, inlined
            self._waiting_since = None
            self._writing = False
            if self._waiting:  # someone is parked
                self._waiting.unpark()
        self.last_write_seconds = self._now() - started
        self.bytes_written += len(data)
        self.on_direct_write(event)
        return True

    async def send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer with a JSON document instead of a stream (only before :meth:`start`)."""
        if self.headers_sent:
            raise RuntimeError("the stream has started; report errors as events")
        body = json_text(payload).encode()
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ]
        self.headers_sent = True
        self.ended = True
        await self._raw_final(
            {"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body, "more_body": False},
        )

    async def send_error(self, reply: ErrorReply) -> None:
        """Answer with an error status and body instead of a stream (only before
        :meth:`start`). A subclass that speaks another API's error format overrides it."""
        await self.send_json(reply.status, reply.body, reply.headers)

    async def end(self) -> None:
        """Finish the response (idempotent; errors from a gone client are ignored)."""
        if self.ended or self.gone:
            return
        self.ended = True
        last = {"type": "http.response.body", "body": b"", "more_body": False}
        try:
            if self.headers_sent:
                await self._raw_final(last, send=self._body_send)
            else:
                await self._raw_final(self._start_message(), last)
        except ClientGone:
            pass

    async def _raw_final(self, *messages: dict[str, object], send: Send | None = None) -> None:
        """Send the messages that end the response (:attr:`ended` is already set), shielded for
        at most :data:`SHUTDOWN_WRITE_TIMEOUT`: hypercorn closes the connection (``Connection:
        close``, HTTP/1.0) or starts its keep-alive timer inside the last send; cancelled
        half-way, it would do neither and the connection would stay open until the client
        leaves."""
        with trio.move_on_after(SHUTDOWN_WRITE_TIMEOUT, shield=True):
            await self._raw(*messages, send=send, final=True)

    async def _raw(
        self, *messages: dict[str, object], send: Send | None = None, final: bool = False
    ) -> None:
        # One writer at a time, first come first served; the uncontended path takes no
        # scheduling round (a trio.Lock would checkpoint on every write). ``take`` has a copy
        # of this for one body message. ``send``: the app's ``send`` unless given. Only the
        # ``final`` messages go out once the response has ended (a write that waited here
        # while the last message went out sends nothing).
        send = self._send if send is None else send
        while self._writing:
            await self._waiting.park()
        if self.ended and not final:
            return
        self._writing = True
        self.last_write_at = self._waiting_since = started = self._now()
        try:
            for message in messages:
                if self.gone:
                    raise ClientGone("the client went away")
                try:
                    await send(message)
                except _SEND_ERRORS as exc:
                    self.gone = True
                    raise ClientGone(f"write failed: {exc!r}") from exc
        finally:
            self._release()
        self.last_write_seconds = self._now() - started

    def _release(self) -> None:
        self._waiting_since = None
        self._writing = False
        if self._waiting:  # someone is parked
            self._waiting.unpark()


class Watched(Protocol):
    """What :func:`wait_frozen` watches: a :class:`StreamWriter`, or a WebSocket session."""

    @property
    def source(self) -> EventReceiver | None: ...

    def waiting_for(self) -> float: ...


async def wait_frozen(writer: Watched, send_timeout: float) -> Frozen:
    """Return once ``writer``'s client counts as frozen, and how to end its stream.

    A client is frozen once one write has waited ``send_timeout`` seconds (the send deadline;
    checked once per ``send_timeout``, so it is seen within twice that). Then the buffering
    policy of :attr:`StreamWriter.source` decides: ``fail`` returns ``"overflow"`` at once;
    any other returns ``"gone"`` once the channel's sender has closed (the generation is over,
    all of it waiting for this client) or has sent nothing for another ``send_timeout`` (it
    waits on the full buffer), and not while the generation still moves (coalesce merging,
    spill spilling). A writer with no source (a resume reader: everything is in the store) is
    ``"gone"`` at the deadline."""
    last: int | None = None
    while True:
        waited = writer.waiting_for()
        if waited < send_timeout:
            last = None
            await trio.sleep(send_timeout - waited)
            continue
        source = writer.source
        if source is None:
            return "gone"
        stats = source.statistics()
        if stats.policy == Policy.FAIL.value:
            return "overflow"
        if stats.sender_closed or stats.items_sent == last:
            return "gone"
        last = stats.items_sent
        await trio.sleep(send_timeout)


@attrs.define(eq=False)
class _Run:
    """The shared state of one :func:`run_stream`: the request task and the body's task."""

    outcome: Literal["done", "gone", "shutdown"] = "done"
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)  # all of the body's task
    body_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)  # the body only
    done: trio.Event = attrs.Factory(trio.Event)


async def _drive(
    runtime: AppRuntime,
    writer: StreamWriter,
    body: Callable[[], Awaitable[None]],
    run: _Run,
) -> None:
    """The body, then the end of the response; in the lifespan nursery (or the request task)."""
    try:
        with run.scope:
            with run.body_scope:
                try:
                    await body()
                except BaseException as exc:
                    if not client_gone(exc):
                        raise
                    run.outcome = "gone"
                    writer.gone = True
            final_timeout = min(SHUTDOWN_WRITE_TIMEOUT, runtime.config.shutdown_grace / 2)
            with trio.move_on_after(final_timeout):
                if run.outcome == "shutdown" and not writer.gone and not writer.ended:
                    event = Error(
                        kind="shutdown", message="the server is shutting down", retryable=True
                    )
                    try:
                        await writer.write(writer.error_frame(event))
                    except ClientGone:
                        run.outcome = "gone"
                if run.outcome == "done" and run.body_scope.cancelled_caught:
                    run.outcome = "gone" if writer.gone else "shutdown"
                if run.outcome != "gone":
                    await writer.end()
    except Exception as exc:  # never crash the lifespan nursery
        log.exception("stream body failed", exc_info=lone_exception(exc))
        writer.gone = True
        run.outcome = "gone"
    finally:
        run.done.set()


async def run_stream(
    runtime: AppRuntime,
    receive: Receive,
    writer: StreamWriter,
    body: Callable[[], Awaitable[None]],
    *,
    route: str = "",
) -> Literal["done", "gone", "shutdown"]:
    """Run ``body`` (which writes through ``writer``) until it returns, the client goes away or
    the server shuts down; end the response properly in each case. Returns which happened; the
    last two are expected ends (:meth:`Metrics.expected_end`: one info line naming ``route``,
    and ``llmpipe_expected_ends``), a client gone is also a ``llmpipe_client_disconnects``.

    The body and its writes run in a task of the app's lifespan nursery (in this task when the
    app has no lifespan running); this task watches the client and the server and waits. So
    a token costs no extra scheduling hop on its way out, and a write stuck on a client that
    stopped reading (hypercorn shields socket writes) never pins this task: on shutdown it
    gives up after the final frame's bound and returns, hypercorn closes the socket, and the
    stuck write fails.

    Cancellation: a disconnect cancels ``body`` at once (also while it waits for the producer
    or on a blocked write). A cancellation from outside cancels the body and propagates at
    once.
    """
    run = _Run()
    final_timeout = min(SHUTDOWN_WRITE_TIMEOUT, runtime.config.shutdown_grace / 2)
    async with trio.open_nursery() as watchers:

        async def give_up_after(seconds: float) -> None:
            with trio.move_on_after(seconds):
                await run.done.wait()
            run.scope.cancel()
            watchers.cancel_scope.cancel()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if writer.ended:
                        # The response is complete and hypercorn is ending the connection (or
                        # readying it for the next request) inside the body's last send: a
                        # cancellation there would leave the socket open and the keep-alive
                        # timer unset until the client leaves.
                        return
                    writer.gone = True
                    run.outcome = "gone"
                    run.scope.cancel()
                    await give_up_after(final_timeout)
                    return

        async def watch_frozen() -> None:
            writer.frozen = await wait_frozen(writer, runtime.config.send_timeout)
            log.info("client read nothing for %.1f s: stream given up", runtime.config.send_timeout)
            runtime.metrics.frozen_clients.inc()
            writer.gone = True
            run.outcome = "gone"
            run.scope.cancel()
            # The body's write is stuck (hypercorn shields it): return now, hypercorn closes
            # the socket, and that write fails.
            watchers.cancel_scope.cancel()

        async def watch_shutdown() -> None:
            await runtime.shutting_down.wait()
            if run.outcome == "done":
                run.outcome = "shutdown"
            run.body_scope.cancel()
            await give_up_after(final_timeout + 0.1)

        watchers.start_soon(watch_disconnect)
        watchers.start_soon(watch_shutdown)
        watchers.start_soon(watch_frozen)
        try:
            if runtime.nursery is not None:
                runtime.nursery.start_soon(_drive, runtime, writer, body, run)
                await run.done.wait()
            else:
                await _drive(runtime, writer, body, run)
        finally:
            if not run.done.is_set():  # cancelled from outside: stop the body too
                run.scope.cancel()
        watchers.cancel_scope.cancel()
    if run.outcome == "gone":
        runtime.metrics.disconnects.inc()
    if run.outcome != "done":
        reason = "client_gone" if run.outcome == "gone" else "shutdown"
        runtime.metrics.expected_end(reason, "stream", route=route, bytes=writer.bytes_written)
    return run.outcome
