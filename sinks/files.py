"""File sinks: the answer's text written atomically, and a JSON-lines log of every event."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import BinaryIO

import trio

from pipeline import Done, Error, EventReceiver, TextDelta, event_to_json

__all__ = [
    "EventLogSink",
    "TextFileSink",
    "check_writable",
    "commit_atomic",
    "open_atomic",
    "write_flushed",
]


def open_atomic(path: Path) -> tuple[Path, BinaryIO]:
    """A temporary file beside ``path`` (its directory is created), open for writing; nothing
    appears under ``path`` until :func:`commit_atomic`. Blocking: call it in a worker thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(path):x}.tmp")
    return tmp, open(tmp, "wb")


def check_writable(path: str | os.PathLike[str]) -> None:
    """Check that the file sinks can write ``path`` before anything is generated: raise
    :class:`OSError` (its ``strerror`` says why in a few words, ``filename`` is the path at
    fault) for a directory, a parent that is a file, no permission. Does what writing does:
    creates the missing directories, and a temporary file beside ``path`` that it removes.
    Blocking."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "is a file, not a directory", str(parent))
            break
    try:
        tmp, f = open_atomic(target)
    except OSError as exc:
        where = str(target.parent)
        if isinstance(exc, PermissionError):
            raise PermissionError(exc.errno, "no permission to write in it", where) from None
        raise type(exc)(exc.errno, f"cannot write in it ({exc.strerror})", where) from None
    f.close()
    tmp.unlink(missing_ok=True)


def commit_atomic(f: BinaryIO, tmp: Path, final: Path) -> None:
    """Flush, fsync and close ``f``, then rename ``tmp`` to ``final`` (and make the rename
    durable). Blocking: call it in a worker thread."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_flushed(f: BinaryIO, data: bytes) -> None:
    """Write ``data`` and flush (one call for a worker thread)."""
    f.write(data)
    f.flush()


class TextFileSink:
    """Write the stream's text to ``path`` atomically.

    Text goes to a temporary file beside ``path``; when the stream ends with ``Done`` the file
    is synced and renamed over ``path``, so ``path`` either does not change or holds the whole
    answer. If the stream ends with an ``Error``, or the pipeline is cancelled, the text received
    so far is kept as ``PATH.partial`` (or removed when ``keep_partial=False``) and ``path`` is
    left alone. Writes run in a worker thread, one per batch of events.
    """

    name = "file"

    def __init__(self, path: str | os.PathLike[str], *, keep_partial: bool = True) -> None:
        self.path = Path(path)
        self.keep_partial = keep_partial
        self.completed = False
        self.written_chars = 0

    async def consume(self, events: EventReceiver, /) -> None:
        tmp, f = await trio.to_thread.run_sync(open_atomic, self.path)
        done = False
        try:
            while batch := await events.receive_batch():
                text = "".join(ev.text for ev in batch if isinstance(ev, TextDelta))
                if text:
                    await trio.to_thread.run_sync(write_flushed, f, text.encode("utf-8"))
                    self.written_chars += len(text)
                if any(isinstance(ev, Done) for ev in batch):
                    done = True
                elif any(isinstance(ev, Error) for ev in batch):
                    done = False
            if done:
                await trio.to_thread.run_sync(commit_atomic, f, tmp, self.path)
                self.completed = True
        finally:
            if not self.completed:
                # Synchronous on purpose: this must also run when cancelled.
                f.close()
                partial = self.path.with_name(self.path.name + ".partial")
                if self.keep_partial:
                    os.replace(tmp, partial)
                else:
                    tmp.unlink(missing_ok=True)


class EventLogSink:
    """Append every event to ``path`` as one line of JSON (see :func:`pipeline.event_to_json`).

    The file is created (truncated) when the sink starts and flushed after each batch, so it can
    be followed while the stream runs.
    """

    name = "event-log"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def consume(self, events: EventReceiver, /) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = await trio.to_thread.run_sync(open, self.path, "wb")
        try:
            while batch := await events.receive_batch():
                data = "".join(event_to_json(ev) + "\n" for ev in batch).encode("utf-8")
                await trio.to_thread.run_sync(write_flushed, f, data)
        finally:
            f.close()
