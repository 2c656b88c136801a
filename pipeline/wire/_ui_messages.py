"""llmpipe events as a Vercel AI SDK UI message stream (protocol ``v1``), what ``useChat`` reads.

The response carries the header ``x-vercel-ai-ui-message-stream: v1`` (:data:`UI_MESSAGE_HEADERS`)
and is SSE whose ``data:`` is one JSON part per frame, ended by ``data: [DONE]``, the parts being
those of the ``ai`` package's ``uiMessageChunkSchema`` (read in ``ai`` 7.0.173):

=====================================  ===================================================
llmpipe event                          parts
=====================================  ===================================================
(the stream's start)                   ``start`` (``messageId``), ``start-step``
``TextDelta``                          ``text-start`` (once per text block), ``text-delta``
``ToolCallStart``                      ``text-end`` (if text was open), ``tool-input-start``
``ToolCallDelta``                      ``tool-input-delta`` (``inputTextDelta``)
``ToolCallEnd``                        ``tool-input-available`` with the parsed ``input``
                                       (``tool-input-error`` if the arguments are not JSON)
``Usage``                              kept for ``finish``'s ``messageMetadata.usage``
``Done``                               ``text-end``, ``finish-step``, ``finish``
                                       (``finishReason``), then ``[DONE]``
``Error``                              ``text-end``, ``error`` (``errorText``), ``finish``
                                       (``finishReason: "error"``), then ``[DONE]``
=====================================  ===================================================

Pure and synchronous; one :class:`UIMessageStream` per response, fed by one task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from .. import Done, Error, Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart, Usage
from ._openai_chat import DONE_FRAME, finish_reason

__all__ = ["UI_MESSAGE_HEADERS", "UIMessageStream"]

UI_MESSAGE_HEADERS: Final[tuple[tuple[str, str], ...]] = (("x-vercel-ai-ui-message-stream", "v1"),)
"""What a UI message stream response adds to the event-stream headers."""

_FINISH: Final[Mapping[str, str]] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
}


def _frame(part: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(part, ensure_ascii=False, separators=(',', ':'))}\n\n"


class UIMessageStream:
    """The parts of one assistant message, as SSE frames (see the module's table).

    ``message_id`` is the ``start`` part's ``messageId`` (the id ``useChat`` gives the assistant
    message). :meth:`start` returns the opening parts; :meth:`encode` the parts of one event
    (``b""`` for an event with none).
    """

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self._text_id: str | None = None
        self._blocks = 0
        self._tool_calls = 0
        self._tools: dict[int, tuple[str, str]] = {}  # the event's index -> (id, name)
        self._usage: Usage | None = None
        self._started = False

    def start(self) -> bytes:
        """``start`` and ``start-step`` (once; later calls return ``b""``)."""
        if self._started:
            return b""
        self._started = True
        return (
            _frame({"type": "start", "messageId": self.message_id}) + _frame({"type": "start-step"})
        ).encode()

    def _end_text(self, out: list[str]) -> None:
        if self._text_id is not None:
            out.append(_frame({"type": "text-end", "id": self._text_id}))
            self._text_id = None

    def _finish(self, out: list[str], reason: str) -> bytes:
        finish: dict[str, Any] = {"type": "finish", "finishReason": reason}
        if self._usage is not None:
            finish["messageMetadata"] = {
                "usage": {
                    "inputTokens": self._usage.input_tokens,
                    "outputTokens": self._usage.output_tokens,
                    "totalTokens": self._usage.input_tokens + self._usage.output_tokens,
                }
            }
        out.append(_frame(finish))
        return self.start() + "".join(out).encode() + DONE_FRAME

    def encode(self, event: Event) -> bytes:
        """The parts for ``event``; a terminal event's end the stream with ``[DONE]``."""
        out: list[str] = []
        if isinstance(event, TextDelta):
            if event.text:
                if self._text_id is None:
                    self._text_id = f"text-{self._blocks}"
                    self._blocks += 1
                    out.append(_frame({"type": "text-start", "id": self._text_id}))
                out.append(_frame({"type": "text-delta", "id": self._text_id, "delta": event.text}))
        elif isinstance(event, ToolCallStart):
            self._end_text(out)
            self._tools[event.index] = (event.id, event.name)
            self._tool_calls += 1
            part = {"type": "tool-input-start", "toolCallId": event.id, "toolName": event.name}
            out.append(_frame(part))
        elif isinstance(event, ToolCallDelta):
            call = self._tools.get(event.index)
            if call is not None and event.arguments_delta:
                delta = {
                    "type": "tool-input-delta",
                    "toolCallId": call[0],
                    "inputTextDelta": event.arguments_delta,
                }
                out.append(_frame(delta))
        elif isinstance(event, ToolCallEnd):
            self._end_text(out)
            if self._tools.pop(event.index, None) is None:
                self._tool_calls += 1
                start = {"type": "tool-input-start", "toolCallId": event.id, "toolName": event.name}
                out.append(_frame(start))
            head = {"toolCallId": event.id, "toolName": event.name}
            try:
                tool_input = json.loads(event.arguments) if event.arguments.strip() else {}
            except ValueError as exc:
                bad = {"type": "tool-input-error", **head, "input": event.arguments}
                out.append(_frame({**bad, "errorText": f"the arguments are not JSON: {exc}"}))
            else:
                out.append(_frame({"type": "tool-input-available", **head, "input": tool_input}))
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Done):
            self._end_text(out)
            out.append(_frame({"type": "finish-step"}))
            reason = finish_reason(event.stop_reason, tool_calls=self._tool_calls > 0)
            return self._finish(out, _FINISH.get(reason, "other"))
        elif isinstance(event, Error):
            self._end_text(out)
            text = event.message or event.kind  # useChat shows errorText: never empty
            out.append(_frame({"type": "error", "errorText": text}))
            return self._finish(out, "error")
        return self.start() + "".join(out).encode()
