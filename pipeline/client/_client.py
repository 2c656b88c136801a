"""The resuming SSE client (the contract is in :mod:`pipeline.client`'s docstring)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import httpx
import trio

from .. import (
    Backoff,
    ConfigError,
    Error,
    Event,
    LLMPipeError,
    event_from_json,
    is_terminal,
)
from ..wire import SSEDecoder, SSEEvent, retry_after_seconds

__all__ = [
    "ClientError",
    "EventStream",
    "ReconnectsExhausted",
    "StreamConnectionError",
    "StreamProtocolError",
    "StreamStatusError",
    "open_event_stream",
    "start_stream",
    "stream_events",
]

#: Statuses that are retried like a dropped connection (besides every 5xx).
RETRY_STATUSES: Final = frozenset({408, 429})
_CONNECT_TIMEOUT: Final = 10.0
_CLOSE_TIMEOUT: Final = 5.0
_MAX_ERROR_BODY: Final = 64 * 1024
_BACKOFF: Final = Backoff()
# Failures worth a reconnect; other transport errors (unsupported scheme, our own protocol
# mistakes) would fail the same way again.
_TRANSIENT: Final = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class ClientError(LLMPipeError):
    """Base of the errors :mod:`pipeline.client` raises."""

    kind = "client"


class StreamStatusError(ClientError):
    """The server answered with an HTTP error status that is not retried (or no longer).

    ``status_code`` is the status, ``server_message`` the server's error message (from its JSON
    error body when it sent one, else the start of the body) and ``url`` the requested URL.
    """

    kind = "status"

    def __init__(self, url: str, status_code: int, server_message: str) -> None:
        super().__init__(f"{url}: HTTP {status_code}: {server_message}")
        self.url = url
        self.status_code = status_code
        self.server_message = server_message
        self.retryable = status_code in RETRY_STATUSES or status_code >= 500


class StreamConnectionError(ClientError):
    """The connection to the server failed (and was not, or no longer, retried)."""

    kind = "connection"
    retryable = True


class ReconnectsExhausted(StreamConnectionError):
    """``max_reconnects`` consecutive reconnects brought no new event.

    ``attempts`` is how many were made; ``last_event_id`` is the last ``seq`` received (pass it
    to :func:`open_event_stream` to resume later); ``__cause__`` is the last failure.
    """

    def __init__(self, message: str, *, attempts: int, last_event_id: int | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_event_id = last_event_id


class StreamProtocolError(ClientError):
    """The server sent something that is not an llmpipe event stream."""

    kind = "protocol"


def _server_message(response: httpx.Response, body: bytes) -> str:
    """The error message in a server's answer: ``{"error": {"message": ...}}`` (llmpipe,
    OpenAI), ``{"error": "..."}``, ``{"message": ...}`` or ``{"detail": ...}``, else the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        for value in (err, data.get("message"), data.get("detail")):
            if isinstance(value, str):
                return value
    if len(text) > 500:
        text = text[:500] + "..."
    return text or response.reason_phrase or "(no message)"


async def _read_limited(response: httpx.Response, limit: int = _MAX_ERROR_BODY) -> bytes:
    """At most ``limit`` bytes of a (streamed) response body."""
    buf = bytearray()
    async for chunk in response.aiter_bytes():
        buf += chunk
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


class EventStream:
    """An async iterator of the events of one llmpipe stream; see the module docstring.

    Made by :func:`open_event_stream` (which also closes it). Attributes:

    ``last_event_id``
        the ``seq`` of the last numbered event handed out (or the one the stream was opened
        with); what to resume from in a later :func:`open_event_stream`.
    ``reconnects``
        how many times the client reconnected so far.
    ``retry``
        the server's last SSE ``retry:`` value in milliseconds, or ``None``.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient,
        last_event_id: int | None,
        max_reconnects: int,
        backoff: Backoff,
        headers: Mapping[str, str] | None,
        read_timeout: float | None,
    ) -> None:
        self.url = url
        self.last_event_id = last_event_id
        self.reconnects = 0
        self.retry: int | None = None
        self._client = client
        self._max_reconnects = max_reconnects
        self._backoff = backoff
        self._headers = dict(headers or {})
        self._timeout = httpx.Timeout(_CONNECT_TIMEOUT, read=read_timeout)
        self._received: int | None = last_event_id  # highest seq received (maybe not yet out)
        self._pending: deque[Event] = deque()
        self._finished = False
        self._closed = False
        self._busy = False
        self._failures = 0  # consecutive reconnects without a new event
        self._reason: BaseException | None = None  # why the next connection is a reconnect
        self._hint: float | None = None  # Retry-After of the last failed response
        self._conn: AsyncExitStack | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._decoder = SSEDecoder()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._busy:
            raise trio.BusyResourceError("another task is already iterating this event stream")
        self._busy = True
        try:
            return await self._next()
        except BaseException:
            # Cancelled, a failure, or the end: the response must not outlive this call.
            await self._close_response()
            raise
        finally:
            self._busy = False

    async def aclose(self) -> None:
        """Close the response (if one is open); iteration then ends. Idempotent."""
        self._closed = True
        await self._close_response()

    async def _next(self) -> Event:
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._pending:
                event = self._pending.popleft()
                if event.seq > 0:
                    self.last_event_id = event.seq
                return event
            if self._finished or self._closed:
                raise StopAsyncIteration
            if self._chunks is None:
                await self._connect()
                continue
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._decoder.close()
                await self._lost(StreamConnectionError("the stream ended before its last event"))
                continue
            except _TRANSIENT as exc:
                await self._lost(exc)
                continue
            except httpx.TransportError as exc:
                raise StreamConnectionError(f"{self.url}: {exc!r}") from exc
            for sse in self._decoder.feed(chunk):
                if (gone := self._handle(sse)) is not None:
                    await self._lost(StreamConnectionError(f"the server said: {gone.message}"))
                    break
                if self._finished:  # nothing after the terminal event counts
                    await self._close_response()
                    break
            if self._decoder.retry is not None:
                self.retry = self._decoder.retry

    def _handle(self, sse: SSEEvent) -> Error | None:
        """Queue one SSE event; or return it, without queueing it, when it is about this
        connection rather than the stream: a retryable error that is a shutdown, or that is
        unnumbered (the stream's own end is stored, so numbered; an unnumbered one is, say, the
        server losing its store for a moment while reading): reconnect then."""
        try:
            event = event_from_json(sse.data)
        except ValueError as exc:
            raise StreamProtocolError(
                f"{self.url}: not an llmpipe event ({exc}): {sse.data[:200]!r}"
            ) from None
        if (
            isinstance(event, Error)
            and event.retryable
            and (event.kind == "shutdown" or event.seq == 0)
        ):
            return event
        if event.seq > 0:
            if self._received is not None and event.seq <= self._received:
                return None  # a replayed event we already have
            self._received = event.seq
            self._failures = 0  # progress: the next drop starts the backoff over
        self._pending.append(event)
        if is_terminal(event):
            self._finished = True
        return None

    async def _lost(self, reason: BaseException) -> None:
        """The connection is gone (or going): close it; the next one is a reconnect."""
        await self._close_response()
        self._reason = reason

    async def _connect(self) -> None:
        """Open the response (after the backoff when reconnecting). Returns with ``_chunks``
        set, or with ``_reason`` set for another try; raises when giving up."""
        if self._reason is not None:
            if self._failures >= self._max_reconnects:
                raise ReconnectsExhausted(
                    f"{self.url}: gave up after {self._failures} reconnect(s) without a new "
                    f"event; last failure: {self._reason}",
                    attempts=self._failures,
                    last_event_id=self._received,
                ) from self._reason
            hint = self._hint
            if self.retry is not None:
                hint = max(hint or 0.0, self.retry / 1000)
            await trio.sleep(self._backoff.delay(self._failures, hint))
            self._failures += 1
            self.reconnects += 1
            self._hint = None
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self._headers}
        if self._received is not None:
            headers["Last-Event-ID"] = str(self._received)
        conn = AsyncExitStack()
        try:
            response = await conn.enter_async_context(
                self._client.stream(
                    "GET", self.url, headers=headers, timeout=self._timeout, follow_redirects=True
                )
            )
            status = response.status_code
            if status in RETRY_STATUSES or status >= 500:
                body = await _read_limited(response)
                self._hint = retry_after_seconds(response.headers)
                self._reason = StreamStatusError(self.url, status, _server_message(response, body))
                await _close(conn)
                return
            if status == 204:  # the SSE way of saying "do not reconnect"
                self._finished = True
                await _close(conn)
                return
            if status >= 300:
                body = await _read_limited(response)
                raise StreamStatusError(self.url, status, _server_message(response, body))
            ctype = response.headers.get("content-type", "")
            if ctype.split(";")[0].strip().lower() != "text/event-stream":
                raise StreamProtocolError(
                    f"{self.url}: expected text/event-stream, got {ctype or 'no content type'!r}"
                )
        except _TRANSIENT as exc:
            await _close(conn)
            self._reason = exc
            return
        except httpx.TransportError as exc:
            await _close(conn)
            raise StreamConnectionError(f"{self.url}: {exc!r}") from exc
        except BaseException:
            await _close(conn)
            raise
        self._conn = conn
        self._chunks = response.aiter_bytes()
        self._decoder = SSEDecoder()
        self._reason = None

    async def _close_response(self) -> None:
        conn, chunks = self._conn, self._chunks
        self._conn = self._chunks = None
        if chunks is not None:
            # An async generator left suspended would be finalized by the GC, out of context.
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await aclose()
        if conn is not None:
            await _close(conn)


async def _close(conn: AsyncExitStack) -> None:
    """Close a response, also when the caller is being cancelled (shielded, bounded)."""
    with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        await conn.aclose()


def _check_options(max_reconnects: int, read_timeout: float | None) -> None:
    if isinstance(max_reconnects, bool) or not isinstance(max_reconnects, int):
        raise TypeError(f"max_reconnects must be an int, not {type(max_reconnects).__name__}")
    if max_reconnects < 0:
        raise ConfigError(f"max_reconnects must be >= 0, got {max_reconnects}")
    if read_timeout is not None and read_timeout <= 0:
        raise ConfigError(f"read_timeout must be > 0 or None, got {read_timeout}")


@asynccontextmanager
async def open_event_stream(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    last_event_id: int | None = None,
    max_reconnects: int = 10,
    backoff: Backoff = _BACKOFF,
    headers: Mapping[str, str] | None = None,
    read_timeout: float | None = 60.0,
) -> AsyncIterator[EventStream]:
    """Follow the SSE stream at ``url`` (``GET``); hands out an :class:`EventStream`.

    ``last_event_id`` resumes after that ``seq`` (events up to it are neither requested nor
    handed out). ``client`` is used as is and left open; without one a client is made for the
    stream and closed with it. ``headers`` are added to every request (authentication, say).
    ``read_timeout`` (seconds, ``None`` = none) is how long a connection may stay silent
    (heartbeat comments count) before the client gives up on it and reconnects. See the module
    docstring for reconnects, exactly-once delivery and cancellation. The first request is
    sent when iteration starts.
    """
    _check_options(max_reconnects, read_timeout)
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        stream = EventStream(
            url,
            client=client,
            last_event_id=last_event_id,
            max_reconnects=max_reconnects,
            backoff=backoff,
            headers=headers,
            read_timeout=read_timeout,
        )
        stack.push_async_callback(stream.aclose)
        yield stream


async def start_stream(
    base_url: str,
    body: Mapping[str, Any],
    *,
    client: httpx.AsyncClient | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Start a resumable stream (``POST {base_url}/v1/streams``); returns its absolute events
    URL. Not retried (a second POST would start a second generation). Raises
    :class:`StreamStatusError` for an error status (the server's message included),
    :class:`StreamConnectionError` when the server cannot be reached and
    :class:`StreamProtocolError` for an answer without ``events_url``."""
    url = base_url.rstrip("/") + "/v1/streams"
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        try:
            response = await client.post(
                url, json=dict(body), headers=dict(headers or {}), timeout=_CONNECT_TIMEOUT
            )
        except httpx.TransportError as exc:
            raise StreamConnectionError(f"{url}: {exc!r}") from exc
    if response.status_code >= 300:
        raise StreamStatusError(
            url, response.status_code, _server_message(response, response.content)
        )
    try:
        events_url = response.json()["events_url"]
    except (ValueError, KeyError, TypeError):
        events_url = None
    if not isinstance(events_url, str):
        raise StreamProtocolError(f"{url}: the answer has no events_url: {response.text[:200]!r}")
    return str(response.url.join(events_url))


@asynccontextmanager
async def stream_events(
    base_url: str,
    body: Mapping[str, Any],
    *,
    client: httpx.AsyncClient | None = None,
    max_reconnects: int = 10,
    backoff: Backoff = _BACKOFF,
    headers: Mapping[str, str] | None = None,
    read_timeout: float | None = 60.0,
) -> AsyncIterator[EventStream]:
    """Start a resumable stream with ``body`` (``{"messages": [...]}``) and follow it: the
    same as :func:`start_stream` then :func:`open_event_stream` (one HTTP client for both)."""
    _check_options(max_reconnects, read_timeout)
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        events_url = await start_stream(base_url, body, client=client, headers=headers)
        stream = await stack.enter_async_context(
            open_event_stream(
                events_url,
                client=client,
                max_reconnects=max_reconnects,
                backoff=backoff,
                headers=headers,
                read_timeout=read_timeout,
            )
        )
        yield stream
