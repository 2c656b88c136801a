"""Server-sent events, exactly as the WHATWG HTML standard's "Parsing an event stream" says.

Used in both directions: producers decode the providers' streams with :class:`SSEDecoder`, and
the server and the client encode and decode with the same code (:mod:`pipeline.wire`).

Decoder, to the letter of the standard:

* the stream is UTF-8 (invalid bytes become U+FFFD), decoded across chunk boundaries; one
  leading BOM is dropped, only at the very start;
* lines end with CRLF, LF or CR; a CR at the end of one chunk and an LF at the start of the next
  are one line end;
* an empty line dispatches the event; a line starting with ``:`` is a comment; ``field:value``
  with exactly one leading space stripped from the value; a line without a colon is a field
  with an empty value;
* ``event`` sets the type, ``data`` appends a line, ``id`` sets the last event ID unless the value
  contains NUL, ``retry`` is used only if it is ASCII digits; other fields are ignored;
* on dispatch the stream's last event ID is updated first (even when no event follows); with
  an empty data buffer nothing is dispatched; a final LF is removed from the data;
* at the end of the stream an unterminated event is discarded.

Cost is linear in the input: each chunk is scanned once, and a line that arrives a byte at a
time is kept as pieces (joined every 4096) and joined once when it ends.
"""

from __future__ import annotations

import codecs
import re
from typing import Final

import attrs

__all__ = ["SSEDecoder", "SSEEvent", "encode_comment", "encode_event"]

_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_BOM: Final = "\ufeff"


@attrs.frozen
class SSEEvent:
    """One dispatched event.

    ``event`` is the type (``"message"`` when the stream named none), ``data`` the data lines
    joined with LF, ``id`` the last event ID in force when it was dispatched (the standard's
    ``lastEventId``: it carries over from earlier events), and ``retry`` the reconnection time
    in ms if a ``retry`` field arrived since the previous dispatch, else ``None``.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Incremental event-stream parser. Not thread-safe; one task feeds it.

    ``feed(chunk)`` returns the events completed by ``chunk``; ``close()`` ends the stream
    (discarding an unterminated event). ``last_event_id`` and ``retry`` follow the stream.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._whole = True  # the decoder holds no bytes of an unfinished character
        self._started = False  # BOM check done
        self._skip_lf = False  # the previous chunk ended with CR
        self._pieces: list[str] = []  # the current, unterminated line
        self._parts: list[str] = []
        self._data: list[str] = []
        self._event = ""
        self._retry_seen: int | None = None
        self._id_buffer = ""
        self._id_set = False
        self.last_event_id = ""
        self.retry: int | None = None
        self.closed = False

    def feed_single(self, chunk: bytes) -> str | None:
        """If ``chunk`` is exactly one whole event of one ``data`` line (no other field, no
        CR) and nothing is pending, the usual chunk of a provider's stream: take it and return
        its data, as :meth:`feed` would return it in an ``SSEEvent`` of type ``"message"``
        with :attr:`last_event_id` as its id. Else ``None``, with nothing taken: pass the
        chunk to :meth:`feed`. (No event object, no list: this is the per-token path.)"""
        if not self._started or self._skip_lf or not self._whole or self.closed:
            return None
        if self._data or self._event or self._parts or self._pieces:
            return None
        if self._retry_seen is not None:
            return None
        if not (chunk.startswith(b"data:") and chunk.endswith(b"\n\n")):
            return None
        if chunk.count(b"\n") != 2 or b"\r" in chunk:
            return None
        try:
            text = chunk.decode()
        except UnicodeDecodeError:
            return None
        if self._id_set:
            self.last_event_id = self._id_buffer
        return text[6:-2] if text.startswith(" ", 5) else text[5:-2]

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk``; return the events it completed, in order."""
        single = self.feed_single(chunk)
        if single is not None:
            return [SSEEvent(single, "message", self.last_event_id, None)]
        if self.closed:
            raise RuntimeError("SSEDecoder.feed() after close()")
        text: str | None = None
        if self._whole:
            # Nothing held back: a chunk of whole, valid UTF-8 (the usual case) needs no
            # incremental decoder (``contextlib.suppress`` would cost three calls per chunk).
            try:
                text = chunk.decode()
            except UnicodeDecodeError:
                text = None
        if text is None:
            text = self._decoder.decode(chunk)
            self._whole = not self._decoder.getstate()[0]
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == _BOM:
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        out: list[SSEEvent] = []
        if "\r" not in text:
            # The common case (LF line ends only): split once, no regular expression.
            lines = text.split("\n")
            rest = lines.pop()
            if lines:
                if self._parts or self._pieces:  # the first line continues the pending one
                    self._add(lines[0])
                    lines[0] = self._take_line()
                data = self._data
                for line in lines:
                    if not line:
                        self._dispatch(out)
                    elif line.startswith("data:"):  # the usual line, inline
                        data.append(line[6:] if line.startswith(" ", 5) else line[5:])
                    else:
                        self._line(line, out)
            if rest:
                self._add(rest)
            return out
        pos = 0
        for m in _LINE_END.finditer(text):
            self._add(text[pos : m.start()])
            self._line(self._take_line(), out)
            pos = m.end()
        rest = text[pos:]
        if rest:
            self._add(rest)
        if text.endswith("\r"):
            # A CR that ends the chunk ended a line; an LF opening the next chunk belongs to it.
            self._skip_lf = True
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: returns nothing more (an unterminated event is discarded, and with
        it any character cut at the end: no line can end after the last chunk)."""
        if not self.closed:
            self.closed = True
            self._pieces.clear()
            self._parts.clear()
            self._data.clear()
        return []

    def _add(self, piece: str) -> None:
        parts = self._parts
        parts.append(piece)
        if len(parts) >= 4096:
            self._pieces.append("".join(parts))
            parts.clear()

    def _take_line(self) -> str:
        self._pieces.extend(self._parts)
        self._parts.clear()
        line = "".join(self._pieces)
        self._pieces.clear()
        return line

    def _line(self, line: str, out: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\x00" not in value:
            self._id_buffer = value
            self._id_set = True
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
            self._retry_seen = self.retry

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._id_set:
            self.last_event_id = self._id_buffer
        if not self._data:
            self._event = ""
            return
        data = "\n".join(self._data)
        out.append(
            SSEEvent(
                data=data,
                event=self._event or "message",
                id=self.last_event_id,
                retry=self._retry_seen,
            )
        )
        self._data.clear()
        self._event = ""
        self._retry_seen = None


def _check_field(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name} must not contain a line break: {value!r}")


def encode_event(
    data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """One event as UTF-8 bytes, ending with the blank line that dispatches it (a surrogate
    code point, which UTF-8 cannot carry, is sent as U+FFFD).

    ``data`` is split on every line end (CRLF, CR, LF) into ``data:`` lines, so it round-trips
    through any conforming parser (CRs come back as LFs). ``event`` and ``id`` must not contain a
    line break (``ValueError``: a newline there would inject a field), and ``id`` no NUL
    (parsers would ignore it). ``retry`` is a non-negative number of milliseconds.
    """
    lines: list[str] = []
    if event is not None:
        _check_field("event", event)
        lines.append(f"event: {event}")
    if id is not None:
        _check_field("id", id)
        if "\x00" in id:
            raise ValueError("SSE id must not contain NUL")
        lines.append(f"id: {id}")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"SSE retry must be a non-negative int, got {retry!r}")
        lines.append(f"retry: {retry}")
    lines.extend(f"data: {line}" for line in _LINE_END.split(data))
    return _utf8("\n".join(lines) + "\n\n")


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; a surrogate code point, which UTF-8 cannot carry, becomes U+FFFD
    (the stream stays valid for every parser; an event's JSON never has one, see
    :func:`pipeline.json_text`)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment line (``: text``), e.g. a heartbeat that keeps proxies from closing the
    connection. Line breaks in ``text`` start further comment lines."""
    return _utf8("".join(f":{' ' if line else ''}{line}\n" for line in _LINE_END.split(text)))
