"""pipeline.client against a small scripted SSE server written on trio sockets.

The server serves a fixed sequence of events (``seq`` 1..N) as SSE with ids, honours
``Last-Event-ID``, and follows a per-request plan: answer a status, drop the connection after n
new events (cleanly or mid-chunk), replay events the client already has, send ``retry:``,
announce a shutdown, or hang until the client goes away.
"""

from __future__ import annotations

import datetime
import email.utils
import io
import itertools
import json
from collections import deque
from functools import partial

import attrs
import httpx
import pytest
import trio
import trio.testing

from pipeline import (
    Done,
    Error,
    Event,
    Metadata,
    TextDelta,
    Usage,
    event_from_json,
    event_to_json,
)
from pipeline.client import (
    Backoff,
    ReconnectsExhausted,
    StreamConnectionError,
    StreamProtocolError,
    StreamStatusError,
    open_event_stream,
    start_stream,
    stream_events,
)
from pipeline.wire import encode_comment, encode_event
from sinks.cli import main as cli_main

EVENTS: list[Event] = [
    Metadata(provider="test", model="m", seq=1),
    TextDelta("Hello", seq=2),
    TextDelta(" wor", seq=3),
    TextDelta("ld, ", seq=4),
    TextDelta("héllo ", seq=5),
    TextDelta("again.", seq=6),
    Usage(input_tokens=3, output_tokens=6, seq=7),
    Done(stop_reason="stop", seq=8),
]
TEXT = "Hello world, héllo again."
FAST = Backoff(initial=0.001, maximum=0.005)


@attrs.define
class Conn:
    """What the server does with one ``GET /events``."""

    status: int = 200
    message: str = "boom"
    retry_after: int | str | None = None
    drop_after: int | None = None  # end after this many new events (None: serve them all)
    abrupt: bool = False  # end without the terminating chunk (a reset, for the client)
    replay: int = 0  # first resend this many events at or below Last-Event-ID
    retry: int | None = None  # send ``retry:`` (ms) first
    shutdown: bool = False  # when dropping, first send a retryable "shutdown" error event
    reader_failed: bool = False  # when dropping, first an unnumbered retryable "store" error
    hang: bool = False  # when dropping, keep the connection open until the client leaves
    raw: bytes | None = None  # send this body instead


@attrs.define(eq=False)
class Record:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    sent: list[int] = attrs.Factory(list)
    closed: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class SSEServer:
    events: list[Event]
    plan: deque[Conn] = attrs.Factory(deque)
    default: Conn = attrs.Factory(Conn)
    requests: list[Record] = attrs.Factory(list)
    base_url: str = ""

    @property
    def url(self) -> str:
        return self.base_url + "/events"

    def gets(self) -> list[Record]:
        return [r for r in self.requests if r.method == "GET"]

    async def handle(self, stream: trio.SocketStream) -> None:
        rec: Record | None = None
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                more = await stream.receive_some(65536)
                if not more:
                    return
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            while len(body) < int(headers.get("content-length", "0")):
                body += await stream.receive_some(65536)
            rec = Record(method, path, headers, body, trio.current_time())
            self.requests.append(rec)
            if method == "POST" and path == "/v1/streams":
                answer = {"id": "s1", "events_url": "/events"}
                await _send_json(stream, 201, answer)
            elif method == "GET" and path == "/events":
                await self._serve_events(stream, rec)
            else:
                await _send_json(stream, 404, {"error": {"message": f"no route {path}"}})
        except trio.BrokenResourceError:
            pass
        finally:
            if rec is not None:
                rec.closed.set()
            await stream.aclose()

    async def _serve_events(self, stream: trio.SocketStream, rec: Record) -> None:
        conn = self.plan.popleft() if self.plan else self.default
        if conn.status != 200:
            extra = {} if conn.retry_after is None else {"Retry-After": str(conn.retry_after)}
            body = {"error": {"type": "test", "message": conn.message}}
            await _send_json(stream, conn.status, body, extra)
            return
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )

        async def chunk(data: bytes) -> None:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

        if conn.raw is not None:
            await chunk(conn.raw)
            await stream.send_all(b"0\r\n\r\n")
            return
        await chunk(encode_comment("heartbeat"))
        if conn.retry is not None:
            await chunk(b"retry: %d\n\n" % conn.retry)
        after = int(rec.headers.get("last-event-id", "0"))
        new = 0
        for event in self.events[max(0, after - conn.replay) :]:
            if conn.drop_after is not None and new >= conn.drop_after:
                break
            await chunk(encode_event(event_to_json(event), event=event.type, id=str(event.seq)))
            rec.sent.append(event.seq)
            new += event.seq > after
        else:
            await stream.send_all(b"0\r\n\r\n")
            return
        if conn.shutdown:
            bye = Error(kind="shutdown", message="server going away", retryable=True)
            await chunk(encode_event(event_to_json(bye), event="error"))
        if conn.reader_failed:  # this connection's reader lost the store, not the stream
            lost = Error(kind="store", message="the stream store failed", retryable=True)
            await chunk(encode_event(event_to_json(lost), event="error"))
        if conn.hang:
            while await stream.receive_some(65536):
                pass
        elif not conn.abrupt:
            await stream.send_all(b"0\r\n\r\n")


async def _send_json(
    stream: trio.SocketStream, status: int, body: object, extra: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    for name, value in (extra or {}).items():
        head += f"{name}: {value}\r\n"
    head += f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    await stream.send_all(head.encode() + data)


@pytest.fixture
async def server(nursery: trio.Nursery) -> SSEServer:
    srv = SSEServer(list(EVENTS))
    listeners = await nursery.start(partial(trio.serve_tcp, srv.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    srv.base_url = f"http://127.0.0.1:{port}"
    return srv


async def _collect(url: str, **options: object) -> list[Event]:
    async with open_event_stream(url, **options) as events:  # type: ignore[arg-type]
        return [event async for event in events]


def _last_ids(server: SSEServer) -> list[str | None]:
    return [r.headers.get("last-event-id") for r in server.gets()]


async def test_full_stream(server: SSEServer) -> None:
    assert await _collect(server.url) == EVENTS
    (req,) = server.gets()
    assert req.headers["accept"] == "text/event-stream"
    assert "last-event-id" not in req.headers


async def test_reconnects_after_drops_get_every_event_once(server: SSEServer) -> None:
    server.plan.extend(
        [
            Conn(drop_after=2),  # clean end of the body without a terminal event
            Conn(drop_after=1, abrupt=True),  # cut mid-response (RemoteProtocolError)
            Conn(drop_after=0),  # a connection that brings nothing
            Conn(drop_after=2, replay=3),  # the server replays an overlap
            Conn(replay=1),
        ]
    )
    async with open_event_stream(server.url, backoff=FAST) as events:
        got = [event async for event in events]
        assert events.reconnects == 4
        assert events.last_event_id == 8
    assert got == EVENTS
    assert _last_ids(server) == [None, "2", "3", "3", "5"]
    assert server.gets()[3].sent == [1, 2, 3, 4, 5]  # 1-3 were sent again and dropped


async def test_resume_from_given_last_event_id(server: SSEServer) -> None:
    server.plan.append(Conn(replay=2))
    assert await _collect(server.url, last_event_id=5) == EVENTS[5:]
    assert _last_ids(server) == ["5"]


async def test_shutdown_event_triggers_reconnect(server: SSEServer) -> None:
    server.plan.append(Conn(drop_after=3, shutdown=True, hang=True))
    assert await _collect(server.url, backoff=FAST) == EVENTS  # no shutdown Error handed out
    assert _last_ids(server) == [None, "3"]
    assert server.gets()[0].closed.is_set()  # the client left the hanging connection


async def test_an_unnumbered_retryable_error_is_the_connections_not_the_streams(
    server: SSEServer,
) -> None:
    # A server whose store failed while this reader read it says so in an unnumbered error;
    # the stream itself goes on (its own end is stored, so numbered): reconnect, lose nothing.
    server.plan.append(Conn(drop_after=3, reader_failed=True, hang=True))
    assert await _collect(server.url, backoff=FAST) == EVENTS  # the store Error not handed out
    assert _last_ids(server) == [None, "3"]


async def test_error_event_ends_the_stream(server: SSEServer) -> None:
    failed = Error(kind="status", message="upstream 500", retryable=True, seq=3)
    server.events[2:] = [failed, TextDelta("never", seq=4)]
    assert await _collect(server.url) == [*EVENTS[:2], failed]
    assert len(server.gets()) == 1


async def test_503_once_then_success(server: SSEServer) -> None:
    server.plan.append(Conn(status=503, message="overloaded"))
    assert await _collect(server.url, backoff=FAST) == EVENTS
    assert len(server.gets()) == 2


async def test_404_raises_at_once_with_the_servers_message(server: SSEServer) -> None:
    server.plan.append(Conn(status=404, message="no such stream: abc"))
    with pytest.raises(StreamStatusError, match="no such stream: abc") as info:
        await _collect(server.url)
    assert info.value.status_code == 404
    assert info.value.server_message == "no such stream: abc"
    assert not info.value.retryable
    assert len(server.gets()) == 1


async def test_max_reconnects_exhausted(server: SSEServer) -> None:
    server.default = Conn(drop_after=0)
    with pytest.raises(ReconnectsExhausted) as info:
        await _collect(server.url, max_reconnects=3, backoff=FAST)
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, StreamConnectionError)
    assert len(server.gets()) == 4


async def test_max_reconnects_exhausted_on_5xx(server: SSEServer) -> None:
    server.default = Conn(status=502, message="bad gateway")
    with pytest.raises(ReconnectsExhausted, match="bad gateway") as info:
        await _collect(server.url, max_reconnects=2, backoff=FAST)
    cause = info.value.__cause__
    assert isinstance(cause, StreamStatusError)
    assert cause.status_code == 502
    assert len(server.gets()) == 3


async def test_progress_resets_the_reconnect_count(server: SSEServer) -> None:
    server.default = Conn(drop_after=1)  # one new event per connection
    assert await _collect(server.url, max_reconnects=1, backoff=FAST) == EVENTS
    assert len(server.gets()) == 8


async def test_connection_refused_is_retried_then_raises() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there now
    with pytest.raises(ReconnectsExhausted) as info:
        await _collect(f"http://127.0.0.1:{port}/events", max_reconnects=2, backoff=FAST)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_backoff_honours_retry_field(
    server: SSEServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.plan.extend([Conn(drop_after=2, retry=5000), Conn(drop_after=2)])
    async with open_event_stream(server.url) as events:
        assert [e async for e in events] == EVENTS
        assert events.retry == 5000
    t0, t1, t2 = (r.at for r in server.gets())
    assert 5.0 <= t1 - t0 < 5.1
    assert 5.0 <= t2 - t1 < 5.1  # the retry value stays in force


async def test_backoff_grows_and_honours_retry_after(
    server: SSEServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.plan.extend(
        [Conn(status=503), Conn(status=429), Conn(status=500), Conn(status=503, retry_after=7)]
    )
    backoff = Backoff(initial=1.0, maximum=3.0, jitter=False)
    assert await _collect(server.url, backoff=backoff) == EVENTS
    times = [r.at for r in server.gets()]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 3.0, 7.0]


@pytest.mark.parametrize("form", ["http-date", "fraction"])
async def test_retry_after_as_an_http_date_or_a_fraction(
    server: SSEServer, autojump_clock: trio.testing.MockClock, form: str
) -> None:
    # RFC 9110: Retry-After is delay-seconds or an HTTP-date (wall-clock time, 1 s resolution).
    # A whole second 7-8 s from now (the header has no fraction): the wait is that, less
    # the wall time that passes before the client reads the header.
    now = datetime.datetime.now(datetime.UTC)
    when = now.replace(microsecond=0) + datetime.timedelta(seconds=8)
    value = email.utils.format_datetime(when, usegmt=True) if form == "http-date" else "6.5"
    server.plan.append(Conn(status=503, retry_after=value))
    backoff = Backoff(initial=0.5, maximum=0.5, jitter=False)
    assert await _collect(server.url, backoff=backoff) == EVENTS
    t0, t1 = (r.at for r in server.gets())
    assert 6.0 <= t1 - t0 <= 8.0


def test_backoff_delay() -> None:
    import random

    rng = random.Random(1)
    b = Backoff()
    for attempt in range(10):
        ceiling = min(8.0, 0.25 * 2**attempt)
        assert 0 <= b.delay(attempt, rng=rng) <= ceiling
    assert b.delay(3, 2.5, rng=rng) >= 2.5
    assert b.delay(3, 1e6, rng=rng) == 60.0
    assert Backoff(jitter=False).delay(1000) == 8.0


async def test_cancelling_a_read_closes_the_connection_and_resume_works(
    server: SSEServer,
) -> None:
    server.plan.append(Conn(drop_after=2, hang=True))
    async with open_event_stream(server.url, backoff=FAST) as events:
        got = [await events.__anext__(), await events.__anext__()]
        with trio.move_on_after(0.2) as scope:
            await events.__anext__()  # the server hangs
        assert scope.cancelled_caught
        with trio.fail_after(2):
            await server.gets()[0].closed.wait()  # closed at once, still inside the block
        got += [event async for event in events]  # reconnects with Last-Event-ID: 2
    assert got == EVENTS
    assert _last_ids(server) == [None, "2"]


async def test_cancelling_the_block_closes_the_connection(server: SSEServer) -> None:
    server.default = Conn(drop_after=1, hang=True)
    with trio.CancelScope() as scope:
        async with open_event_stream(server.url) as events:
            async for _event in events:
                scope.cancel()
    with trio.fail_after(2):
        await server.gets()[0].closed.wait()


async def test_leaving_the_block_closes_the_response_not_the_client(server: SSEServer) -> None:
    server.default = Conn(drop_after=1, hang=True)
    async with httpx.AsyncClient() as client:
        async with open_event_stream(server.url, client=client) as events:
            assert await events.__anext__() == EVENTS[0]
        with trio.fail_after(2):
            await server.gets()[0].closed.wait()
        assert not client.is_closed
        server.default = Conn()
        assert await _collect(server.url, client=client, last_event_id=7) == EVENTS[7:]


async def test_concurrent_iteration_is_refused(server: SSEServer) -> None:
    server.default = Conn(drop_after=0, hang=True)
    async with open_event_stream(server.url) as events, trio.open_nursery() as nursery:
        nursery.start_soon(events.__anext__)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await events.__anext__()
        nursery.cancel_scope.cancel()


async def test_garbage_is_a_protocol_error(server: SSEServer) -> None:
    server.plan.append(Conn(raw=b"event: text\ndata: {not json\n\n"))
    with pytest.raises(StreamProtocolError, match="not an llmpipe event"):
        await _collect(server.url)


async def test_start_stream_and_stream_events(server: SSEServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    url = await start_stream(server.base_url + "/", body)
    assert url == server.url
    async with stream_events(server.base_url, body) as events:
        assert [e async for e in events] == EVENTS
    posts = [r for r in server.requests if r.method == "POST"]
    assert [json.loads(r.body) for r in posts] == [body, body]


async def test_start_stream_error_carries_the_message(server: SSEServer) -> None:
    with pytest.raises(StreamStatusError, match="no route /nope/v1/streams"):
        await start_stream(server.base_url + "/nope", {"messages": []})


async def test_cli(server: SSEServer) -> None:
    server.plan.extend([Conn(drop_after=3), Conn(drop_after=3)])
    out, err = io.StringIO(), io.StringIO()
    code = await trio.to_thread.run_sync(
        partial(cli_main, ["client", server.url], stdout=out, stderr=err)
    )
    assert (code, out.getvalue(), err.getvalue()) == (0, TEXT + "\n", "")

    out = io.StringIO()
    argv = ["client", server.url, "--json", "--last-event-id", "6"]
    code = await trio.to_thread.run_sync(partial(cli_main, argv, stdout=out))
    assert code == 0
    assert [event_from_json(line) for line in out.getvalue().splitlines()] == EVENTS[6:]

    server.plan.append(Conn(status=404, message="gone"))
    err = io.StringIO()
    code = await trio.to_thread.run_sync(partial(cli_main, ["client", server.url], stderr=err))
    assert code == 2
    assert "HTTP 404: gone" in err.getvalue()
