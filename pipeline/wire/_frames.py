"""The SSE frame of one llmpipe event, and the headers of an event stream.

:func:`event_frame` encodes one pipeline event the way
the HTTP app sends it: ``event:`` is the event's type, ``id:`` its ``seq`` (what a browser
sends back as ``Last-Event-ID`` when it reconnects) and ``data:`` its JSON
(:func:`pipeline.event_to_json`).
:data:`SSE_HEADERS` are the response headers of an event stream.

Everything here is pure and synchronous: safe from any task or thread.
"""

from __future__ import annotations

from typing import Final

from .. import Event, event_to_json

__all__ = ["SSE_CONTENT_TYPE", "SSE_HEADERS", "event_frame"]

SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
"""The stream's media type. The charset must be UTF-8: Chromium aborts a stream whose
Content-Type names any other charset."""

SSE_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("Content-Type", SSE_CONTENT_TYPE),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # nginx: do not buffer the stream
)
"""Headers of an event-stream response, as ``(name, value)`` pairs."""


def event_frame(event: Event) -> bytes:
    """One llmpipe event as an SSE frame (UTF-8 bytes, ending with the blank line).

    ``event: <type>``, ``id: <seq>``, ``data: <compact JSON>``; the JSON is one line, so the
    frame has exactly one ``data:`` line. An unstamped event (``seq == 0``) still gets ``id: 0``.
    """
    # Same bytes as ``encode_event(event_to_json(event), event=event.type, id=str(event.seq))``
    # without its checks: the type is one of ours, the id an int and compact JSON one line.
    return f"event: {event.type}\nid: {event.seq}\ndata: {event_to_json(event)}\n\n".encode()
