"""Writing an event stream on the raw ASGI ``send``, and watching its client.

:class:`StreamWriter` writes SSE (or NDJSON) bytes with ``http.response.body`` messages. Under
hypercorn a body message returns once the bytes are in the socket, so a client that stops
reading blocks ``write`` and the pipeline behind it (bounded memory; the channel policy decides
whether the producer waits or deltas are merged).

:func:`run_stream` runs a stream body with two watchers in one nursery:

* the disconnect watcher awaits ``receive()``; ``http.disconnect`` cancels the whole nursery, so
  the pipeline, the producer and its upstream HTTP request are cancelled within one scheduling
  round (hypercorn reports a closed socket in 1-3 ms). A ``write`` that fails (the transport
  raised) counts the same.
* the shutdown watcher waits for :attr:`AppRuntime.shutting_down`; it cancels only the body,
  after which a final ``error`` frame of kind ``"shutdown"`` (retryable, without ``id`` so a
  resuming client's ``Last-Event-ID`` stays on the last real event) is written and the response
  ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal

import trio
from starlette.types import Receive, Send

from pipeline import Error, Event, Heartbeat, event_to_json

from ..ndjson import NDJSON_CONTENT_TYPE, ndjson_line
from ..sse import SSE_HEADERS, encode_comment, encode_event, event_frame
from ._context import StreamRequest
from ._metrics import StreamKind, StreamRecord
from ._runtime import AppRuntime

__all__ = [
    "ClientGone",
    "Format",
    "StreamWriter",
    "begin_stream",
    "choose_format",
    "run_stream",
]

log = logging.getLogger("llmpipe.http")

Format = Literal["sse", "ndjson"]
SHUTDOWN_WRITE_TIMEOUT: Final = 1.0
"""How long the final frame and the end of a response may take at shutdown (at most half the
grace): a client that stopped reading does not hold the shutdown up longer."""
_SEND_ERRORS: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def begin_stream(
    runtime: AppRuntime, kind: StreamKind, route: str, request: StreamRequest
) -> StreamRecord:
    """Start the telemetry record of a stream (Prometheus and any other observers, such as
    OpenTelemetry); end it with ``runtime.metrics.end_stream``. The provider is the request's,
    else the server's first (its default)."""
    providers = runtime.config.providers
    provider = request.provider or (providers[0] if providers else None)
    return runtime.metrics.begin_stream(kind, route, provider, request.model)


class ClientGone(Exception):
    """The client went away (``http.disconnect`` or a failed write)."""


def choose_format(accept: str) -> Format:
    """NDJSON when the ``Accept`` header asks for ``application/x-ndjson``, else SSE."""
    return "ndjson" if NDJSON_CONTENT_TYPE in accept.lower() else "sse"


class StreamWriter:
    """One streamed response. One task writes at a time (the stream's own task).

    The status line and headers go out with the first :meth:`write` (or :meth:`start`). After
    that every problem must be reported as an event: :attr:`headers_sent` tells which.

    ``detach`` (the app's lifespan nursery) makes the ASGI sends run there, so that a write
    blocked on a client that stopped reading can be abandoned (see :meth:`_raw`); cancelling a
    ``write`` then returns at once, and the abandoned message still goes out first (or fails)
    before any later one.
    """

    def __init__(
        self,
        send: Send,
        fmt: Format,
        *,
        extra_headers: tuple[tuple[str, str], ...] = (),
        detach: trio.Nursery | None = None,
    ) -> None:
        self._send = send
        self._detach = detach
        self._inflight: trio.Event | None = None
        self._error: BaseException | None = None
        self.format: Format = fmt
        self.extra_headers = extra_headers
        self.headers_sent = False
        self.ended = False
        self.gone = False
        self.bytes_written = 0

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

    async def start(self) -> None:
        if self.headers_sent:
            return
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
        await self._raw(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            }
        )

    async def write(self, data: bytes) -> None:
        """Send ``data`` (the headers first if needed). Raises :class:`ClientGone`."""
        if self.gone:
            raise ClientGone("the client went away")
        await self.start()
        await self._raw({"type": "http.response.body", "body": data, "more_body": True})
        self.bytes_written += len(data)

    async def send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer with a JSON document instead of a stream (only before :meth:`start`)."""
        if self.headers_sent:
            raise RuntimeError("the stream has started; report errors as events")
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ]
        self.headers_sent = True
        self.ended = True
        await self._raw({"type": "http.response.start", "status": status, "headers": raw})
        await self._raw({"type": "http.response.body", "body": body, "more_body": False})

    async def end(self) -> None:
        """Finish the response (idempotent; errors from a gone client are ignored)."""
        if self.ended or self.gone:
            return
        self.ended = True
        try:
            await self.start()
            await self._raw({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientGone:
            pass

    async def _raw(self, message: dict[str, object]) -> None:
        # With ``detach`` (the app's lifespan nursery) each message is sent by a short task
        # there, and this task only waits for it. Hypercorn shields its socket writes, so a
        # write to a client that stopped reading cannot be cancelled; sent from here it would
        # pin the request task, and the server could never shut down. Detached, the request
        # task can give up (cancellation works on the wait), return, and hypercorn then closes
        # the socket, which ends the stuck write. Messages stay in order: a message waits for
        # the one before it, even if that one's caller gave up.
        if self._inflight is not None:
            await self._inflight.wait()
        self._check_error()
        if self._detach is None:
            try:
                await self._send(message)
            except _SEND_ERRORS as exc:
                self._error = exc
            self._check_error()
            return
        done = self._inflight = trio.Event()
        self._detach.start_soon(self._send_detached, message, done)
        await done.wait()
        self._check_error()

    async def _send_detached(self, message: dict[str, object], done: trio.Event) -> None:
        try:
            await self._send(message)
        except Exception as exc:  # never crash the lifespan nursery; the writer re-raises it
            self._error = exc
        finally:
            done.set()

    def _check_error(self) -> None:
        exc = self._error
        if exc is None:
            return
        if isinstance(exc, _SEND_ERRORS):
            self.gone = True
            raise ClientGone(f"write failed: {exc!r}") from exc
        raise exc


async def run_stream(
    runtime: AppRuntime,
    receive: Receive,
    writer: StreamWriter,
    body: Callable[[], Awaitable[None]],
) -> Literal["done", "gone", "shutdown"]:
    """Run ``body`` (which writes through ``writer``) until it returns, the client goes away or
    the server shuts down; end the response properly in each case. Returns which happened.

    Cancellation: a disconnect cancels ``body`` at once (also while it waits for the producer
    or on a blocked write). A cancellation from outside propagates after the watchers are
    stopped.
    """
    outcome: Literal["done", "gone", "shutdown"] = "done"
    async with trio.open_nursery() as nursery:

        async def watch_disconnect() -> None:
            nonlocal outcome
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not writer.ended:
                        writer.gone = True
                        outcome = "gone"
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch_disconnect)
        with trio.CancelScope() as body_scope:

            async def watch_shutdown() -> None:
                nonlocal outcome
                await runtime.shutting_down.wait()
                if outcome == "done":
                    outcome = "shutdown"
                body_scope.cancel()

            nursery.start_soon(watch_shutdown)
            try:
                await body()
            except ClientGone:
                outcome = "gone"
                writer.gone = True
        final_timeout = min(SHUTDOWN_WRITE_TIMEOUT, runtime.config.shutdown_grace / 2)
        with trio.move_on_after(final_timeout):
            if outcome == "shutdown" and not writer.gone and not writer.ended:
                event = Error(
                    kind="shutdown", message="the server is shutting down", retryable=True
                )
                try:
                    await writer.write(writer.error_frame(event))
                except ClientGone:
                    outcome = "gone"
            if outcome == "done" and body_scope.cancelled_caught:
                outcome = "gone" if writer.gone else "shutdown"
            if outcome != "gone":
                await writer.end()
        nursery.cancel_scope.cancel()
    if outcome == "gone":
        runtime.metrics.disconnects.inc()
    return outcome
