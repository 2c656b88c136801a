"""The spill file of a channel with policy ``spill``: events past the memory budget, in order.

Record format (private to one channel, never read by another process): a header (kind, seq,
payload length; :data:`_HEADER`) then the payload. The payload of a mergeable event (see the
``mergeable`` trait of :mod:`pipeline._events`) is its UTF-8 text alone, the common case, no
JSON; its kind says which class it is. Any other event is kind :data:`_REC_JSON` and its
payload is the event's JSON.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any, Final, get_args

from ._events import Event, event_from_json, event_nbytes, event_to_json

__all__ = ["Spill"]

#: File reads and writes are done in chunks of this size.
CHUNK: Final = 64 * 1024

_HEADER: Final = struct.Struct("<BQI")
_REC_JSON: Final = 0
#: The mergeable event classes (the records that hold only text) by record kind 1, 2, ...,
#: with the name of their text field; and the same by class.
_TEXT_CLASSES: Final[dict[int, tuple[type[Any], str]]] = {
    kind: (cls, cls.text_field)
    for kind, cls in enumerate((c for c in get_args(Event) if c.mergeable), start=1)
}
_TEXT_KINDS: Final[dict[type[Any], tuple[int, str]]] = {
    cls: (kind, field) for kind, (cls, field) in _TEXT_CLASSES.items()
}


def _text_event(kind: int, text: str, seq: int) -> Event:
    cls, field = _TEXT_CLASSES[kind]
    event: Event = cls(**{field: text, "seq": seq})
    return event


class Spill:
    """An append-only temporary file of event records, read back in order.

    ``items`` and ``item_bytes`` count the events in the file and their text bytes (as
    :func:`pipeline.event_nbytes`). Writes are buffered up to :data:`CHUNK` bytes; reading
    takes the write buffer directly once everything on disk was read.
    """

    def __init__(self, max_bytes: int | None) -> None:
        self._file = tempfile.TemporaryFile(prefix="llmpipe-spill-")  # noqa: SIM115
        self._fd = self._file.fileno()
        self.max_bytes = max_bytes
        self._wbuf = bytearray()
        self._written = 0  # bytes on disk
        self._read_pos = 0  # next file offset to read
        self._rbuf = bytearray()
        self._rstart = 0
        self.items = 0
        self.item_bytes = 0  # text bytes of the spilled events
        self.closed = False

    @property
    def file_bytes(self) -> int:
        return self._written + len(self._wbuf)

    def has_room(self) -> bool:
        return self.max_bytes is None or self.file_bytes < self.max_bytes

    def append(self, event: Event, nbytes: int) -> None:
        """Write ``event`` (whose :func:`~pipeline.event_nbytes` is ``nbytes``) at the end."""
        text_record = _TEXT_KINDS.get(type(event))
        if text_record is None:
            kind = _REC_JSON
            payload = event_to_json(event).encode("utf-8")
        else:
            kind, field = text_record
            payload = getattr(event, field).encode("utf-8")
        self._wbuf += _HEADER.pack(kind, event.seq, len(payload))
        self._wbuf += payload
        self.items += 1
        self.item_bytes += nbytes
        if len(self._wbuf) >= CHUNK:
            os.pwrite(self._fd, self._wbuf, self._written)
            self._written += len(self._wbuf)
            self._wbuf.clear()

    def pop_merged(self, max_bytes: int) -> Event:
        """The oldest spilled event; consecutive spilled events of one mergeable class are
        merged into one, up to ``max_bytes`` of text (the merged event has the last one's
        ``seq``). Only call while ``items`` is not 0."""
        kind, seq, payload = self._pop()
        if kind == _REC_JSON:
            event = event_from_json(payload)
            self.item_bytes -= event_nbytes(event)
            return event
        total = len(payload)  # UTF-8 bytes of the text: its event_nbytes
        merged: bytearray | None = None
        while self.items:
            self._fill(_HEADER.size)
            nkind, nseq, length = _HEADER.unpack_from(self._rbuf, self._rstart)
            if nkind != kind or total + length > max_bytes:
                break
            _, _, more = self._pop()
            if merged is None:
                merged = bytearray(payload)
            merged += more
            total += length
            seq = nseq
        self.item_bytes -= total
        return _text_event(kind, (payload if merged is None else merged).decode("utf-8"), seq)

    def _pop(self) -> tuple[int, int, bytes]:
        """The next record: (kind, seq, payload)."""
        self._fill(_HEADER.size)
        kind, seq, length = _HEADER.unpack_from(self._rbuf, self._rstart)
        self._rstart += _HEADER.size
        self._fill(length)
        payload = bytes(self._rbuf[self._rstart : self._rstart + length])
        self._rstart += length
        self.items -= 1
        return kind, seq, payload

    def _fill(self, need: int) -> None:
        """Make ``need`` unread bytes available in the read buffer."""
        while len(self._rbuf) - self._rstart < need:
            if self._rstart > CHUNK:
                del self._rbuf[: self._rstart]
                self._rstart = 0
            if self._read_pos < self._written:
                data = os.pread(self._fd, max(CHUNK, need), self._read_pos)
                self._read_pos += len(data)
            else:
                # Everything on disk was read: take the write buffer directly. The file offset
                # moves on as if it had been written (the hole is never read).
                data = bytes(self._wbuf)
                self._read_pos += len(data)
                self._written += len(data)
                self._wbuf.clear()
            self._rbuf += data

    def close(self) -> None:
        """Release the file. Idempotent."""
        if not self.closed:
            self.closed = True
            self._file.close()
