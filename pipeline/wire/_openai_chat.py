"""llmpipe events as the OpenAI Chat Completions API writes them, whatever provider produced them.

:class:`ChatCompletionChunks` turns one stream's events into the SSE body of
``POST /v1/chat/completions`` with ``"stream": true``: ``data: {chat.completion.chunk}`` frames
(the assistant role first, then ``content`` and ``tool_calls`` deltas, then a chunk with the
``finish_reason``, then, with ``stream_options.include_usage``, one chunk with empty
``choices`` and the ``usage``), ended by ``data: [DONE]``. An error after the stream started is
a ``data: {"error": {...}}`` frame, which the official SDKs raise as an ``APIError``.
:class:`ChatCompletionBuilder` collects the same events into the ``chat.completion`` object of
``"stream": false``. :func:`openai_error` is the error body the API answers with.

Mapping: a :class:`~pipeline.TextDelta` is a ``content`` delta; ``ToolCallStart`` /
``ToolCallDelta`` / ``ToolCallEnd`` are ``tool_calls`` deltas, renumbered 0, 1, ... in the order
the calls start (an Anthropic tool block's index counts the text blocks too); the stop reason is
translated to OpenAI's word (:func:`finish_reason`); :class:`~pipeline.Usage` becomes
``prompt_tokens`` / ``completion_tokens`` / ``total_tokens`` (``null`` when the provider said
nothing, as the scripted producer does). ``Metadata``, ``Heartbeat`` and ``Dropped`` have no
counterpart and write nothing. Pure and synchronous; one instance per stream, fed by one task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from .. import Done, Error, Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart, Usage

__all__ = [
    "DONE_FRAME",
    "ChatCompletionBuilder",
    "ChatCompletionChunks",
    "finish_reason",
    "openai_error",
]

DONE_FRAME: Final = b"data: [DONE]\n\n"
"""The frame that ends an OpenAI (and a Vercel AI SDK) event stream."""

_FINISH: Final[Mapping[str, str]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "function_call",
    # Anthropic's words
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    # the Responses API's incomplete reasons
    "max_output_tokens": "length",
}


def finish_reason(stop_reason: str | None, *, tool_calls: bool) -> str:
    """OpenAI's ``finish_reason`` for a provider's stop reason (OpenAI's own words are kept;
    Anthropic's and the Responses API's are translated). Unknown or missing: ``"tool_calls"``
    if the answer called a tool, else ``"stop"``."""
    if stop_reason is not None and stop_reason in _FINISH:
        return _FINISH[stop_reason]
    return "tool_calls" if tool_calls else "stop"


def openai_error(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The API's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


class _ToolCalls:
    """Tool calls renumbered in the order they start; the arguments each one has been given."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}  # the event's index -> OpenAI's
        self.arguments: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def start(self, event: ToolCallStart) -> int:
        i = len(self.calls)
        self.index[event.index] = i
        self.arguments.append("")
        self.calls.append({"id": event.id, "type": "function", "function": {"name": event.name}})
        return i

    def delta(self, index: int, piece: str) -> int | None:
        i = self.index.get(index)
        if i is not None:
            self.arguments[i] += piece
        return i

    def rest(self, event: ToolCallEnd) -> tuple[int, str] | None:
        """What :class:`ToolCallEnd`'s whole arguments add to the deltas already given (a
        provider that sends the arguments only at the end), starting the call if unseen."""
        i = self.index.get(event.index)
        if i is None:
            i = self.start(ToolCallStart(event.index, event.id, event.name))
        given = self.arguments[i]
        if event.arguments.startswith(given) and len(event.arguments) > len(given):
            self.arguments[i] = event.arguments
            return i, event.arguments[len(given) :]
        return None

    def finished(self) -> list[dict[str, Any]]:
        return [
            {**call, "function": {**call["function"], "arguments": args}}
            for call, args in zip(self.calls, self.arguments, strict=True)
        ]


class ChatCompletionChunks:
    """The ``chat.completion.chunk`` SSE frames of one streamed completion.

    ``completion_id`` (``chatcmpl-...``), ``model`` and ``created`` (UNIX seconds) are repeated in
    every chunk, as the API does; ``include_usage`` adds ``"usage": null`` to each chunk and the
    final usage chunk. :meth:`encode` returns the bytes for one event (``b""`` when it has
    none); the terminal event's bytes end the stream (``data: [DONE]`` after a ``Done``).
    """

    def __init__(
        self, *, completion_id: str, model: str, created: int, include_usage: bool = False
    ) -> None:
        self._head = (
            f'{{"id":{_dumps(completion_id)},"object":"chat.completion.chunk",'
            f'"created":{int(created)},"model":{_dumps(model)},"system_fingerprint":null,'
        )
        self._include_usage = include_usage
        self._tail = ',"usage":null}' if include_usage else "}"
        self._started = False
        self._tools = _ToolCalls()
        self._usage: Usage | None = None

    def _chunk(self, delta: Mapping[str, Any], finish: str | None = None) -> str:
        choice = (
            f'{{"index":0,"delta":{_dumps(delta)},"logprobs":null,'
            f'"finish_reason":{_dumps(finish)}}}'
        )
        return f"data: {self._head}" + f'"choices":[{choice}]{self._tail}\n\n'

    def _start(self, out: list[str]) -> None:
        if not self._started:
            self._started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))

    def encode(self, event: Event) -> bytes:
        """The frames for ``event`` (see the module's mapping)."""
        out: list[str] = []
        if isinstance(event, TextDelta):
            if event.text:
                self._start(out)
                out.append(self._chunk({"content": event.text}))
        elif isinstance(event, ToolCallStart):
            self._start(out)
            i = self._tools.start(event)
            call = {
                "index": i,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [call]}))
        elif isinstance(event, ToolCallDelta):
            j = self._tools.delta(event.index, event.arguments_delta)
            if j is not None and event.arguments_delta:
                piece = {"index": j, "function": {"arguments": event.arguments_delta}}
                out.append(self._chunk({"tool_calls": [piece]}))
        elif isinstance(event, ToolCallEnd):
            self._start(out)
            rest = self._tools.rest(event)
            if rest is not None:
                piece = {"index": rest[0], "function": {"arguments": rest[1]}}
                out.append(self._chunk({"tool_calls": [piece]}))
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Done):
            self._start(out)
            reason = finish_reason(event.stop_reason, tool_calls=bool(self._tools.calls))
            out.append(self._chunk({}, reason))
            if self._include_usage:
                usage = _dumps(_usage(self._usage))
                out.append(f'data: {self._head}"choices":[],"usage":{usage}}}\n\n')
            return "".join(out).encode() + DONE_FRAME
        elif isinstance(event, Error):
            return self.error(event)
        return "".join(out).encode()

    @staticmethod
    def error(event: Error) -> bytes:
        """An error after the stream started: ``data: {"error": {...}}`` (``type`` is
        ``"server_error"``, ``code`` the llmpipe error's kind)."""
        body = openai_error(event.message, "server_error", code=event.kind)
        return f"data: {_dumps(body)}\n\n".encode()


class ChatCompletionBuilder:
    """The ``chat.completion`` object of one non-streamed completion, built from its events
    (:meth:`add` each, then :meth:`build`). Text and tool-call arguments are kept as pieces and
    joined once."""

    def __init__(self, *, completion_id: str, model: str, created: int) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = int(created)
        self._text: list[str] = []
        self._tools = _ToolCalls()
        self._usage: Usage | None = None
        self._stop: str | None = None

    def add(self, event: Event) -> None:
        """Take one event (text, tool calls, usage and the stop reason; others are ignored)."""
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ToolCallStart):
            self._tools.start(event)
        elif isinstance(event, ToolCallDelta):
            self._tools.delta(event.index, event.arguments_delta)
        elif isinstance(event, ToolCallEnd):
            self._tools.rest(event)
        elif isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Done):
            self._stop = event.stop_reason

    def build(self) -> dict[str, Any]:
        """The ``chat.completion`` object (``content`` is ``null`` for an answer that is only
        tool calls, as the API does)."""
        text = "".join(self._text)
        calls = self._tools.finished()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = calls
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(self._stop, tool_calls=bool(calls)),
                }
            ],
            "usage": _usage(self._usage),
            "system_fingerprint": None,
        }
