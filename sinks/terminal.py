"""Write the answer's text to a terminal (or any binary stream) as it arrives."""

from __future__ import annotations

import sys
from typing import BinaryIO

import trio

from pipeline import Error, EventReceiver, TextDelta, ToolCallEnd

__all__ = ["TerminalSink"]


class TerminalSink:
    """Print text deltas to ``stream`` (default: standard output) as they come.

    Tool calls are shown as ``[tool NAME(ARGS)]`` and an error as ``[error KIND: MESSAGE]`` on
    ``error_stream`` (default: standard error). Writes happen in a worker thread, one per batch
    of whatever arrived meanwhile, so a slow terminal never blocks the event loop; a closed pipe
    (``llmpipe ... | head``) raises :class:`pipeline.ConsumerGone`.
    """

    name = "terminal"

    def __init__(
        self, stream: BinaryIO | None = None, error_stream: BinaryIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.error_stream = error_stream if error_stream is not None else sys.stderr.buffer

    def _write(self, stream: BinaryIO, data: bytes) -> None:
        stream.write(data)
        stream.flush()

    async def consume(self, events: EventReceiver, /) -> None:
        from pipeline import ConsumerGone

        ended_with_text = False
        while batch := await events.receive_batch():
            out: list[str] = []
            err: list[str] = []
            for ev in batch:
                if isinstance(ev, TextDelta):
                    out.append(ev.text)
                elif isinstance(ev, ToolCallEnd):
                    out.append(f"\n[tool {ev.name}({ev.arguments})]\n")
                elif isinstance(ev, Error):
                    err.append(f"\n[error {ev.kind}: {ev.message}]\n")
            try:
                if out:
                    text = "".join(out)
                    ended_with_text = not text.endswith("\n")
                    await trio.to_thread.run_sync(self._write, self.stream, text.encode())
                if err:
                    await trio.to_thread.run_sync(
                        self._write, self.error_stream, "".join(err).encode()
                    )
            except BrokenPipeError as exc:
                raise ConsumerGone("terminal: the output pipe was closed") from exc
        if ended_with_text:
            try:
                await trio.to_thread.run_sync(self._write, self.stream, b"\n")
            except BrokenPipeError as exc:
                raise ConsumerGone("terminal: the output pipe was closed") from exc
