"""A loopback HTTP/1.1 server, written on trio sockets, that streams scripted provider answers.

Why raw sockets: the faults need byte-level control (an RST mid-chunk, a UTF-8 character cut
across two writes, a stall between two events), which a framework would hide.

The HTTP subset: ``Content-Length`` request bodies; keep-alive (HTTP/1.1 default, honouring
``Connection: close``); streamed answers use ``Transfer-Encoding: chunked`` with one HTTP chunk
per SSE event (per write, under :class:`SplitUtf8`), or for speech per ``write_bytes`` of PCM;
JSON answers use ``Content-Length``.
Requests on one connection are served one at a time (no pipelining), connections concurrently.

While a response streams, a second task reads the socket: EOF or an error there means the
client went away, which is recorded (``disconnected_at``, ``disconnected`` event) and stops
the writer at once, even in the middle of a pacing sleep or a stall.
"""

from __future__ import annotations

import inspect
import json
import math
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import trio

from ... import lone_exception_unwrapped
from ._batches import BatchApiError, BatchStore
from ._formats import (
    PROVIDER_BY_PATH,
    Frame,
    Provider,
    WireFormat,
    models_body,
    speech_pcm,
    status_body,
    wire_format,
)
from ._script import (
    ErrorEventAfter,
    Fault,
    MalformedAfter,
    Reply,
    ReplySource,
    ResetAfter,
    Script,
    SpeechReply,
    SplitUtf8,
    StallAfter,
    StatusFault,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "DEFAULT_SPEECH",
    "ConnectionRecord",
    "Emulator",
    "RateLimits",
    "RequestRecord",
    "open_emulator",
    "serve_emulator",
]

DEFAULT_REPLY: Final = Reply("Hello from the llmpipe emulator.")
DEFAULT_SPEECH: Final = SpeechReply()
DEFAULT_MODELS: Final = ("emulated-gpt", "emulated-claude")
DEFAULT_MODEL: Final = "emulated-model"
REDACTED: Final = "<redacted>"
SECRET_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
_SAMPLE_WIDTH: Final = 2  # speech: s16le mono
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
RECEIVE_SIZE: Final = 64 * 1024
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Site Overloaded",
}

Outcome = Literal["pending", "completed", "disconnected", "reset", "closed"]
_Result = Literal["keep", "close", "reset"]


@attrs.define(eq=False)
class RequestRecord:
    """What one request saw. Fields are filled in while the response is being served.

    ``bytes_sent`` and ``writes`` count what went to the socket (head and chunk framing
    included); ``events_sent`` counts SSE events, ``deltas_sent`` those carrying a token or
    argument piece (for speech both count the audio writes, ``audio_bytes_sent`` their PCM).
    Times are ``trio.current_time()`` (so MockClock time in tests).
    ``completed_at`` is when the last byte of the response was written (to the socket buffer,
    not necessarily read);
    ``disconnected_at`` is when the client was seen going away before that (EOF or a failed
    read/write). ``ended`` is set when the server is done with the request for any reason.
    ``counted`` tells whether the request counts against the :class:`RateLimits` (a text
    stream request the limits let through, a status fault included), ``tokens`` how many
    tokens it counts for (the reply's input and output tokens; 0 for a status fault), and
    ``rate_limited`` whether the limits refused it with a 429.
    Header names are lower-case; secret values (``authorization``, ``x-api-key``, …) are
    replaced by ``"<redacted>"``.
    """

    index: int
    connection: int
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: Any
    received_at: float
    provider: Provider | None = None
    status: int | None = None
    fault: Fault = None
    outcome: Outcome = "pending"
    bytes_sent: int = 0
    writes: int = 0
    events_sent: int = 0
    deltas_sent: int = 0
    audio_bytes_sent: int = 0
    counted: bool = False
    tokens: int = 0
    rate_limited: bool = False
    first_byte_at: float | None = None
    completed_at: float | None = None
    disconnected_at: float | None = None
    ended_at: float | None = None
    disconnected: trio.Event = attrs.field(factory=trio.Event, repr=False)
    ended: trio.Event = attrs.field(factory=trio.Event, repr=False)

    def header(self, name: str) -> str | None:
        """The (first) value of header ``name``, case-insensitive; ``None`` if absent."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


@attrs.frozen
class RateLimits:
    """A provider's rate limits: at most ``requests_per_minute`` requests and
    ``tokens_per_minute`` tokens (input + output of the reply, counted when the request
    arrives) in any ``window`` seconds (60 unless a test scales it). A text stream request over
    a limit gets a 429 whose ``retry-after`` says when it would fit; refused requests do not
    count. ``None``: no such limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window: float = 60.0


@attrs.define(eq=False)
class ConnectionRecord:
    """One accepted TCP connection and the indexes of the requests it carried (keep-alive)."""

    index: int
    peer: str
    opened_at: float
    requests: list[int] = attrs.field(factory=list)
    closed_at: float | None = None


class _BadRequest(Exception):
    pass


@attrs.frozen
class _Head:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def get(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.get("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


async def _read_head(stream: trio.abc.ReceiveStream, buf: bytearray) -> _Head | None:
    """Read one request from ``stream`` (``buf`` holds bytes already received). ``None`` on EOF
    before any byte of a new request."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise _BadRequest("request head too large")
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            if buf.strip():
                raise _BadRequest("connection closed inside a request head")
            return None
        buf += data
    head = bytes(buf[:end]).decode("latin-1")
    del buf[: end + 4]
    request_line, *header_lines = head.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(f"bad request line {request_line!r}")
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(f"bad header line {line!r}")
        headers.append((name.lower(), value.strip()))
    request = _Head(parts[0], parts[1], parts[2], tuple(headers), b"")
    if request.get("transfer-encoding"):
        raise _BadRequest("chunked request bodies are not supported; send Content-Length")
    try:
        length = int(request.get("content-length") or "0")
    except ValueError:
        raise _BadRequest("bad Content-Length") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise _BadRequest("bad Content-Length")
    while len(buf) < length:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise _BadRequest("connection closed inside a request body")
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return attrs.evolve(request, body=body)


def _split_utf8(data: bytes) -> list[bytes]:
    """Cut ``data`` right after the lead byte of every multi-byte UTF-8 character."""
    pieces: list[bytes] = []
    start = i = 0
    while i < len(data):
        byte = data[i]
        if byte >= 0xC0:
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            pieces.append(data[start : i + 1])
            start = i + 1
            i += length
        else:
            i += 1
    pieces.append(data[start:])
    return [piece for piece in pieces if piece]


def _fire_index(frames: Sequence[Frame], after: int) -> int:
    """Index of the frame before which an ``*_after(after)`` fault fires."""
    seen = 0
    last_delta: int | None = None
    for i, frame in enumerate(frames):
        if frame.delta:
            if seen == after:
                return i
            seen += 1
            last_delta = i
    return last_delta + 1 if last_delta is not None else min(1, len(frames))


@attrs.define(eq=False)
class _Writer:
    stream: trio.SocketStream
    record: RequestRecord

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)
        if self.record.first_byte_at is None:
            self.record.first_byte_at = trio.current_time()
        self.record.bytes_sent += len(data)
        self.record.writes += 1

    async def head(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.record.status = status
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def chunk(self, payload: bytes) -> None:
        await self.send(b"%x\r\n%s\r\n" % (len(payload), payload))

    async def event(
        self, data: bytes, *, delta: bool = False, split: SplitUtf8 | None = None
    ) -> None:
        if split is None or data.isascii():
            await self.chunk(data)
        else:
            for i, piece in enumerate(_split_utf8(data)):
                if i:
                    await trio.sleep(split.pause)
                await self.chunk(piece)
        self.record.events_sent += 1
        if delta:
            self.record.deltas_sent += 1

    async def end(self) -> None:
        await self.send(b"0\r\n\r\n")
        self.record.completed_at = trio.current_time()
        self.record.outcome = "completed"


def _append_line(path: Path, obj: dict[str, Any]) -> None:
    """One JSON line, appended and flushed (blocking, but small: the emulator is a test
    double)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def _mark_disconnected(record: RequestRecord) -> None:
    if record.disconnected_at is None and record.completed_at is None:
        record.disconnected_at = trio.current_time()
        record.outcome = "disconnected"
        record.disconnected.set()


def _redact(name: str, value: str) -> str:
    return REDACTED if name in SECRET_HEADERS else value


@attrs.define(eq=False)
class Emulator:
    """A running emulator: where it listens and what it has seen.

    Created by :func:`open_emulator` / :func:`serve_emulator`, never directly. ``source``
    answers the streaming text endpoints, ``speech`` the speech endpoint. ``requests`` and
    ``connections`` grow as traffic arrives; read them from any task of the same trio run.
    Any number of tasks may await the ``wait_*`` methods at once; cancelling one of those waits
    affects nothing else. Connections are served concurrently, requests on one connection in
    order.
    """

    host: str
    port: int
    source: ReplySource = attrs.field(repr=False)
    models: tuple[str, ...] = DEFAULT_MODELS
    speech: SpeechReply = attrs.field(default=DEFAULT_SPEECH, repr=False)
    limits: RateLimits | None = None
    log: Path | None = None
    """A JSON Lines file that gets one line per request when it ends (see :meth:`log_line`)."""
    batch_delay: float = 0.0
    """Seconds a batch (``POST /v1/batches``) stays ``in_progress`` before a
    ``GET /v1/batches/{id}`` completes it."""
    requests: list[RequestRecord] = attrs.field(factory=list, init=False, repr=False)
    connections: list[ConnectionRecord] = attrs.field(factory=list, init=False, repr=False)
    _arrived: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _streams_served: int = attrs.field(default=0, init=False, repr=False)
    _batches: BatchStore | None = attrs.field(default=None, init=False, repr=False)
    _status_served: dict[Reply | SpeechReply, int] = attrs.field(
        factory=dict, init=False, repr=False
    )

    # -- addresses -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, without a path."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for ``openai.AsyncOpenAI`` (ends with ``/v1``)."""
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for ``anthropic.AsyncAnthropic`` (no ``/v1``: the SDK adds it)."""
        return self.base_url

    # -- waiting -------------------------------------------------------------------------------

    async def wait_request(self, index: int) -> RequestRecord:
        """Wait until request ``index`` (0-based, arrival order) has arrived; return its record."""
        while len(self.requests) <= index:
            await self._arrived.wait()
        return self.requests[index]

    async def wait_disconnect(self, index: int) -> float:
        """Wait until the client of request ``index`` went away mid-response; return when
        (``trio.current_time()``). Waits forever if the response completes normally: wrap it in
        ``trio.fail_after``."""
        record = await self.wait_request(index)
        await record.disconnected.wait()
        assert record.disconnected_at is not None
        return record.disconnected_at

    async def wait_ended(self, index: int) -> RequestRecord:
        """Wait until the server is done with request ``index``, however it ended."""
        record = await self.wait_request(index)
        await record.ended.wait()
        return record

    # -- serving -------------------------------------------------------------------------------

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection until it closes (the ``trio.serve_listeners`` handler).

        Requests on it are served one after the other. Closes ``stream`` on the way out, also
        when cancelled.
        """
        try:
            peer = stream.socket.getpeername()
        except OSError:
            peer = ("?", 0)
        conn = ConnectionRecord(len(self.connections), f"{peer[0]}:{peer[1]}", trio.current_time())
        self.connections.append(conn)
        buf = bytearray()
        try:
            while True:
                try:
                    head = await _read_head(stream, buf)
                except _BadRequest as exc:
                    await self._send_plain(stream, 400, str(exc))
                    break
                if head is None or not await self._serve_request(stream, conn, head, buf):
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            conn.closed_at = trio.current_time()
            await stream.aclose()

    async def _send_plain(self, stream: trio.SocketStream, status: int, text: str) -> None:
        body = text.encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)

    async def _serve_request(
        self, stream: trio.SocketStream, conn: ConnectionRecord, head: _Head, buf: bytearray
    ) -> bool:
        """Answer one request; return whether the connection may carry another."""
        try:
            body: Any = json.loads(head.body) if head.body else None
        except ValueError:
            body = None
        path = head.target.partition("?")[0]
        record = RequestRecord(
            index=len(self.requests),
            connection=conn.index,
            method=head.method,
            path=path,
            headers=tuple((name, _redact(name, value)) for name, value in head.headers),
            body=body,
            received_at=trio.current_time(),
            provider=PROVIDER_BY_PATH.get(path),
        )
        self.requests.append(record)
        conn.requests.append(record.index)
        self._arrived.set()
        self._arrived = trio.Event()
        try:
            return await self._respond(stream, record, head, buf)
        finally:
            if record.outcome == "pending":
                record.outcome = "closed"
            record.ended_at = trio.current_time()
            record.ended.set()
            if self.log is not None:
                _append_line(self.log, self.log_line(record))

    @staticmethod
    def log_line(record: RequestRecord) -> dict[str, Any]:
        """What the request log (``log``) says of a request: index, path, status, outcome,
        the limits' accounting (``counted``, ``tokens``, ``rate_limited``), times (this
        emulator's ``trio.current_time()``) and the request body."""
        return {
            "index": record.index,
            "path": record.path,
            "status": record.status,
            "outcome": record.outcome,
            "counted": record.counted,
            "tokens": record.tokens,
            "rate_limited": record.rate_limited,
            "received_at": record.received_at,
            "ended_at": record.ended_at,
            "body": record.body,
        }

    def peak_usage(self, window: float | None = None) -> tuple[int, int]:
        """The most requests and the most tokens that counted against the limits in any
        ``window`` seconds (default: the limits' window, else 60), by arrival time."""
        if window is None:
            window = self.limits.window if self.limits is not None else 60.0
        counted = sorted((r.received_at, r.tokens) for r in self.requests if r.counted)
        most_requests = most_tokens = 0
        end = tokens = 0
        for start, (t, _) in enumerate(counted):  # windows [t, t + window)
            while end < len(counted) and counted[end][0] < t + window:
                tokens += counted[end][1]
                end += 1
            most_requests = max(most_requests, end - start)
            most_tokens = max(most_tokens, tokens)
            tokens -= counted[start][1]
        return most_requests, most_tokens

    def _over_limits(self, record: RequestRecord, tokens: int) -> float | None:
        """``None`` if a request of ``tokens`` fits the limits now, else the seconds until it
        would."""
        limits = self.limits
        if limits is None:
            return None
        now = record.received_at
        recent = [
            r
            for r in self.requests
            if r.counted and r is not record and r.received_at > now - limits.window
        ]
        recent.sort(key=lambda r: r.received_at)
        wait = 0.0
        rpm = limits.requests_per_minute
        if rpm is not None and len(recent) + 1 > rpm:
            wait = recent[len(recent) - rpm].received_at + limits.window - now
        tpm = limits.tokens_per_minute
        if tpm is not None:
            excess = sum(r.tokens for r in recent) + tokens - tpm
            for r in recent:
                if excess <= 0:
                    break
                excess -= r.tokens
                wait = max(wait, r.received_at + limits.window - now)
            if excess > 0:
                wait = math.inf  # more than the whole limit: never
        return wait if wait > 0 else None

    async def _respond(
        self, stream: trio.SocketStream, record: RequestRecord, head: _Head, buf: bytearray
    ) -> bool:
        writer = _Writer(stream, record)
        keep_alive = head.keep_alive
        request_id = f"req_emu{record.index}"
        is_anthropic = head.get("anthropic-version") is not None or record.provider == "anthropic"
        if record.path == "/v1/models" and head.method == "GET":
            kind: Literal["openai", "anthropic"] = "anthropic" if is_anthropic else "openai"
            await self._send_json(
                writer, 200, models_body(kind, self.models), keep_alive, request_id=request_id
            )
            return keep_alive
        if record.path.startswith(("/v1/files", "/v1/batches")):
            await self._batch_api(writer, record, head, keep_alive, request_id)
            return keep_alive
        provider = record.provider
        if provider is None:
            error_provider: Provider = "anthropic" if is_anthropic else "openai-chat"
            body = status_body(
                error_provider, 404, f"no route for {record.path}", request_id=request_id
            )
            await self._send_json(writer, 404, body, keep_alive, request_id=request_id)
            return keep_alive
        if head.method != "POST":
            body = status_body(provider, 405, "use POST", request_id=request_id)
            await self._send_json(writer, 405, body, keep_alive, request_id=request_id)
            return keep_alive
        if provider == "openai-speech":
            return await self._speak(writer, record, keep_alive, request_id, buf)
        request = record.body
        if not isinstance(request, dict) or request.get("stream") is not True:
            message = "the llmpipe emulator only serves streaming requests (stream: true)"
            body = status_body(provider, 400, message, request_id=request_id)
            await self._send_json(writer, 400, body, keep_alive, request_id=request_id)
            return keep_alive

        reply = await self._reply_for(record)
        tokens = reply.input_tokens + reply.completion_tokens
        over = self._over_limits(record, tokens)
        if over is not None:
            record.rate_limited = True
            message = "rate limit reached (requests or tokens per minute)"
            body = status_body(provider, 429, message, request_id=request_id)
            extra = (
                [] if math.isinf(over) else [("retry-after", f"{math.ceil(over * 1000) / 1000:g}")]
            )
            await self._send_json(writer, 429, body, keep_alive, request_id=request_id, extra=extra)
            return keep_alive
        record.counted = True
        record.tokens = tokens
        fault = reply.fault
        if isinstance(fault, StatusFault):
            if await self._status_fault(writer, reply, fault, provider, keep_alive, request_id):
                record.tokens = 0
                return keep_alive
            fault = None
        record.fault = fault
        stream_options = request.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        model = request.get("model")
        fmt = wire_format(
            provider,
            reply,
            model=model if isinstance(model, str) else DEFAULT_MODEL,
            index=record.index,
            include_usage=include_usage,
        )
        write = partial(self._write_stream, writer, fmt, fault, keep_alive, request_id)
        return await self._stream(writer, record, write, buf)

    @property
    def batch_store(self) -> BatchStore:
        """The files and batches uploaded and created so far (the Batch API endpoints)."""
        if self._batches is None:
            self._batches = BatchStore(self.batch_delay)
        return self._batches

    async def _batch_api(
        self, writer: _Writer, record: RequestRecord, head: _Head, keep_alive: bool, request_id: str
    ) -> None:
        """``POST /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
        ``GET /v1/batches`` (``after``, ``limit``), ``GET /v1/batches/{id}`` (see
        :mod:`._batches`)."""
        store = self.batch_store
        parts = record.path.strip("/").split("/")
        route = (head.method, *parts[1:2], len(parts))
        send = partial(self._send_json, writer, keep_alive=keep_alive, request_id=request_id)
        try:
            if route == ("POST", "files", 2):
                obj = store.upload(head.get("content-type"), head.body)
            elif route == ("GET", "files", 4) and parts[3] == "content":
                data = store.content(parts[2])
                await send(200, data, content_type="application/octet-stream")
                return
            elif route == ("POST", "batches", 2):
                obj = store.create(record.body, trio.current_time())
            elif route == ("GET", "batches", 2):
                query = urllib.parse.parse_qs(head.target.partition("?")[2])
                after = query.get("after", [None])[-1]
                try:
                    limit = int(query.get("limit", ["20"])[-1])
                except ValueError:
                    raise BatchApiError(400, "limit must be an integer") from None
                obj = store.list_batches(after, limit)
            elif route == ("GET", "batches", 3):
                obj = await store.retrieve(parts[2], trio.current_time(), self._batch_reply)
            else:
                raise BatchApiError(404, f"no route for {head.method} {record.path}")
        except BatchApiError as exc:
            await send(exc.status, status_body("openai-chat", exc.status, str(exc), request_id=""))
            return
        await send(200, json.dumps(obj).encode())

    async def _batch_reply(self, url: str, body: dict[str, Any]) -> Reply:
        """The reply source's answer to one request of a batch (a record not in
        :attr:`requests`: a batch line is not a request on the wire)."""
        record = RequestRecord(
            index=-1,
            connection=-1,
            method="POST",
            path=url,
            headers=(),
            body=body,
            received_at=trio.current_time(),
            provider=PROVIDER_BY_PATH.get(url),
        )
        return await self._reply_for(record)

    async def _status_fault(
        self,
        writer: _Writer,
        reply: Reply | SpeechReply,
        fault: StatusFault,
        provider: Provider,
        keep_alive: bool,
        request_id: str,
    ) -> bool:
        """Answer with ``fault``'s status unless ``reply`` has failed ``fault.times`` already;
        return whether it did."""
        served = self._status_served.get(reply, 0)
        if fault.times is not None and served >= fault.times:
            return False
        self._status_served[reply] = served + 1
        writer.record.fault = fault
        extra: list[tuple[str, str]] = []
        if fault.retry_after is not None:
            extra.append(("retry-after", f"{fault.retry_after:g}"))
        body = status_body(provider, fault.code, fault.message, request_id=request_id)
        await self._send_json(
            writer, fault.code, body, keep_alive, request_id=request_id, extra=extra
        )
        return True

    async def _speak(
        self,
        writer: _Writer,
        record: RequestRecord,
        keep_alive: bool,
        request_id: str,
        buf: bytearray,
    ) -> bool:
        """``POST /v1/audio/speech``: the :attr:`speech` reply's PCM for the request's
        ``input``, streamed (only ``response_format: "pcm"`` is served)."""
        request = record.body
        text = request.get("input") if isinstance(request, dict) else None
        if not isinstance(text, str) or request.get("response_format") != "pcm":
            message = (
                'the llmpipe emulator serves speech as {"input": TEXT, "response_format": "pcm"}'
            )
            body = status_body("openai-speech", 400, message, request_id=request_id)
            await self._send_json(writer, 400, body, keep_alive, request_id=request_id)
            return keep_alive
        reply = self.speech
        fault = reply.fault
        if isinstance(fault, StatusFault):
            if await self._status_fault(
                writer, reply, fault, "openai-speech", keep_alive, request_id
            ):
                return keep_alive
            fault = None
        record.fault = fault
        if reply.audio is None:
            pcm = speech_pcm(text, reply)
        else:
            made = reply.audio(text)
            pcm = await made if inspect.isawaitable(made) else made
        write = partial(self._write_speech, writer, reply, pcm, keep_alive, request_id)
        return await self._stream(writer, record, write, buf)

    async def _reply_for(self, record: RequestRecord) -> Reply:
        index = self._streams_served
        self._streams_served += 1
        source = self.source
        if isinstance(source, Reply):
            return source
        if isinstance(source, Script):
            return source.reply_for(index)
        if isinstance(source, Sequence):
            return Script(source).reply_for(index)
        result = source(record)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, Reply):
            raise TypeError(f"the reply callable returned {result!r}, not a Reply")
        return result

    async def _send_json(
        self,
        writer: _Writer,
        status: int,
        body: bytes,
        keep_alive: bool,
        *,
        request_id: str,
        extra: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> None:
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "keep-alive" if keep_alive else "close"),
            ("Server", "llmpipe-emulator"),
            ("x-request-id", request_id),
            ("request-id", request_id),
            *extra,
        ]
        await writer.head(status, headers)
        await writer.send(body)
        writer.record.completed_at = trio.current_time()
        writer.record.outcome = "completed"

    async def _stream(
        self,
        writer: _Writer,
        record: RequestRecord,
        write: Callable[[], Awaitable[_Result]],
        buf: bytearray,
    ) -> bool:
        """Run ``write`` (it sends the whole response) while watching the peer; then keep the
        connection, close it, or reset it, as ``write`` says."""
        result: _Result = "close"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_peer, writer.stream, record, nursery.cancel_scope, buf)
            try:
                result = await write()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                _mark_disconnected(record)
            nursery.cancel_scope.cancel()
        if result == "reset":
            sock = writer.stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            record.outcome = "reset"
            return False
        return result == "keep"

    @staticmethod
    async def _watch_peer(
        stream: trio.SocketStream, record: RequestRecord, scope: trio.CancelScope, buf: bytearray
    ) -> None:
        """Read while the response streams: EOF or an error means the client went away."""
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                _mark_disconnected(record)
                scope.cancel()
                return
            buf += data  # the client's next request, sent early; the request loop reads it

    async def _write_stream(
        self, writer: _Writer, fmt: WireFormat, fault: Fault, keep_alive: bool, request_id: str
    ) -> _Result:
        content_type = "text/event-stream; charset=utf-8"
        await writer.head(200, _stream_headers(content_type, keep_alive, request_id))
        frames = fmt.frames()
        fire_at = -1
        if isinstance(fault, ErrorEventAfter | ResetAfter | StallAfter | MalformedAfter):
            fire_at = _fire_index(frames, fault.after)
        split = fault if isinstance(fault, SplitUtf8) else None
        rate = fmt.reply.tokens_per_second
        interval = 1.0 / rate if rate > 0 else 0.0
        for i, frame in enumerate(frames):
            if i == fire_at:
                if isinstance(fault, StallAfter):
                    await trio.sleep(fault.seconds)
                elif isinstance(fault, ResetAfter):
                    return "reset"
                elif isinstance(fault, ErrorEventAfter):
                    await writer.event(fmt.error_event(fault, i))
                    await writer.end()
                    return "keep" if keep_alive else "close"
                elif isinstance(fault, MalformedAfter):
                    await writer.event(fault.payload or fmt.malformed())
                    await writer.end()
                    return "keep" if keep_alive else "close"
            if frame.delta and interval:
                await trio.sleep(interval)
            await writer.event(frame.data, delta=frame.delta, split=split)
        await writer.end()
        return "keep" if keep_alive else "close"

    @staticmethod
    async def _write_speech(
        writer: _Writer, reply: SpeechReply, pcm: bytes, keep_alive: bool, request_id: str
    ) -> _Result:
        await writer.head(200, _stream_headers("audio/pcm", keep_alive, request_id))
        step = reply.write_bytes
        writes = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        fault = writer.record.fault
        fire_at = fault.after if isinstance(fault, ResetAfter | StallAfter) else -1
        for i in range(len(writes) + 1):
            if i == min(fire_at, len(writes)):
                if isinstance(fault, ResetAfter):
                    return "reset"
                if isinstance(fault, StallAfter):
                    await trio.sleep(fault.seconds)
            if i == len(writes):
                break
            if reply.realtime_factor:
                seconds = len(writes[i]) / _SAMPLE_WIDTH / reply.sample_rate
                await trio.sleep(seconds * reply.realtime_factor)
            await writer.event(writes[i], delta=True)
            writer.record.audio_bytes_sent += len(writes[i])
        await writer.end()
        return "keep" if keep_alive else "close"


def _stream_headers(content_type: str, keep_alive: bool, request_id: str) -> list[tuple[str, str]]:
    return [
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive" if keep_alive else "close"),
        ("Server", "llmpipe-emulator"),
        ("x-request-id", request_id),
        ("request-id", request_id),
    ]


async def serve_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    reply: ReplySource = DEFAULT_REPLY,
    *,
    models: tuple[str, ...] = DEFAULT_MODELS,
    speech: SpeechReply = DEFAULT_SPEECH,
    limits: RateLimits | None = None,
    log: str | Path | None = None,
    batch_delay: float = 0.0,
    task_status: trio.TaskStatus[Emulator] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (``0``: any free port) and serve until cancelled.

    ``reply`` answers the streaming text endpoints (see :func:`open_emulator`), ``speech``
    every ``POST /v1/audio/speech``; ``limits`` are the provider's rate limits
    (:class:`RateLimits`); ``log`` a JSON Lines file that gets a line per request.

    Use with ``nursery.start``: the :class:`Emulator` (with the real port) is passed to
    ``task_status.started`` once the socket listens. Cancelling the task closes the listener
    and every connection, mid-stream ones included. Malformed HTTP gets a 400 and a closed
    connection; an exception raised by a reply callable is not caught: it stops the emulator
    (and so fails the test that scripted it).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    emulator = Emulator(
        host,
        bound_port,
        reply,
        models,
        speech,
        limits,
        None if log is None else Path(log),
        batch_delay,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, emulator.handle_connection, listeners)
        task_status.started(emulator)


@asynccontextmanager
async def open_emulator(
    reply: ReplySource = DEFAULT_REPLY,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    models: tuple[str, ...] = DEFAULT_MODELS,
    speech: SpeechReply = DEFAULT_SPEECH,
    limits: RateLimits | None = None,
    batch_delay: float = 0.0,
) -> AsyncIterator[Emulator]:
    """Run an emulator for the duration of the ``async with`` block.

    ``reply`` is one :class:`Reply` for every request, a :class:`Script` or sequence (one per
    request, in arrival order), or a callable given each :class:`RequestRecord` (sync or
    async; an async one may block to hold a request back); ``speech`` answers
    ``POST /v1/audio/speech`` (:class:`SpeechReply`); ``limits`` are rate limits
    (:class:`RateLimits`); ``batch_delay`` the seconds a batch of the Batch API endpoints
    stays ``in_progress``. On exit the server and all its
    connections are closed (cancelled), even mid-stream. An exception from the block comes out
    as itself, not wrapped in an exception group.
    """
    with lone_exception_unwrapped():
        async with trio.open_nursery() as nursery:
            emulator: Emulator = await nursery.start(
                partial(
                    serve_emulator,
                    host,
                    port,
                    reply,
                    models=models,
                    speech=speech,
                    limits=limits,
                    batch_delay=batch_delay,
                )
            )
            try:
                yield emulator
            finally:
                nursery.cancel_scope.cancel()
