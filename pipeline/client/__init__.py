"""A trio client for llmpipe's SSE endpoints: follows one stream, reconnecting as needed.

::

    async with stream_events("http://127.0.0.1:8000", {"messages": msgs}) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                print(event.text, end="")

or, for a stream that already exists (``events_url`` from ``POST /v1/streams``)::

    async with open_event_stream(events_url, last_event_id=41) as events:
        async for event in events: ...

Exactly once
    Every event the server numbered (``seq`` > 0) is handed out at most once and in order: the
    client remembers the highest ``seq`` it received, sends it as ``Last-Event-ID`` when it
    reconnects, and drops any event with a ``seq`` at or below it (a server that replays an
    overlap is harmless). Events with ``seq == 0`` are unnumbered (a channel's ``Dropped``
    notice, for example); they cannot be deduplicated and are handed out as they come. Since
    resume is how gaps are avoided, no numbered event is lost either as long as the server
    still stores it.

Reconnects
    The client reconnects when connecting fails (connection refused, reset, timeouts, a read
    that gets nothing for ``read_timeout`` seconds), on HTTP 408, 429 and 5xx, when the response
    ends without a terminal event (a dropped connection), and when the server announces it is
    going away (an ``error`` event of kind ``"shutdown"`` that is ``retryable``) or that this
    connection failed rather than the stream (an unnumbered, ``seq == 0``, ``retryable`` error,
    such as the server losing its store for a moment while reading; the stream's own end is
    stored, so numbered); those events are not handed out. It waits first, per
    :class:`Backoff` (exponential with full jitter, at least what the server asked for with the
    SSE ``retry:`` field or a ``Retry-After`` header). After
    ``max_reconnects`` consecutive reconnects that brought no new event it gives up with
    :class:`ReconnectsExhausted` (the last failure is its ``__cause__``); a connection that
    delivers a new event resets that count and the backoff. Other 4xx answers are not retried:
    :class:`StreamStatusError` carries the status and the server's error message. Iteration ends
    right after the terminal event (``Done``, or an ``Error`` other than a retryable shutdown),
    or without one on HTTP 204 (the SSE way of saying "do not reconnect").

Cancellation
    There are no background tasks: the HTTP response is read only inside ``__anext__``. If that
    call is cancelled (or raises), the response is closed at once, before the exception
    propagates; events already received stay buffered, and iterating again reconnects with
    ``Last-Event-ID`` and carries on without loss or repetition. Leaving the ``async with``
    block closes the response too, and the HTTP client when the stream created it.

Concurrency
    One task iterates an :class:`EventStream` at a time (a second concurrent ``__anext__`` raises
    ``trio.BusyResourceError``). An ``httpx.AsyncClient`` passed in may be shared by any number
    of streams; it is left open.
"""

from .. import Backoff as Backoff
from ..packaging import fixup_module_metadata as _fixup_module_metadata
from ._client import ClientError as ClientError
from ._client import EventStream as EventStream
from ._client import ReconnectsExhausted as ReconnectsExhausted
from ._client import StreamConnectionError as StreamConnectionError
from ._client import StreamProtocolError as StreamProtocolError
from ._client import StreamStatusError as StreamStatusError
from ._client import open_event_stream as open_event_stream
from ._client import start_stream as start_stream
from ._client import stream_events as stream_events

__all__ = [
    "Backoff",
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

_fixup_module_metadata(__name__, globals())
