"""The Vercel AI SDK route: ``POST /api/chat`` answered with a UI message stream.

``useChat`` (and the ``ai`` package's ``DefaultChatTransport``) posts ``{id, messages, trigger,
messageId, ...}`` to ``/api/chat``, each message ``{id, role, parts}``, and reads the answer as
a UI message stream (``pipeline.wire.UIMessageStream``: header
``x-vercel-ai-ui-message-stream: v1``, SSE of JSON parts, ``data: [DONE]`` last). A front end
built on ``useChat`` works against ``llmpipe serve`` unchanged, and its stream gets what every
llmpipe stream gets (cancel on disconnect, bounded buffering, metering under ``/api/chat``).

Request mapping (:func:`parse_ui_chat`): a message's ``text`` parts are its content (joined);
an assistant's tool parts (``tool-<name>`` or ``dynamic-tool``) with an input become its tool
calls, and those with ``output-available`` / ``output-error`` also the tool's result; the
parts that carry no model input (``step-start``, ``reasoning``, ``source-*``, ``data-*``) are
skipped; a ``file`` part is refused (400). Extra body fields the transport's ``body`` option
adds may choose ``provider``, ``model``, ``max_tokens``, ``temperature`` (checked as on
``/v1/stream``); others are ignored, as the AI SDK's own server helpers do.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any, Final

import attrs
from starlette.types import Send

from pipeline import Error, Event
from pipeline.wire import UI_MESSAGE_HEADERS, UIMessageStream

from ._context import StreamRequest, message_objects
from ._errors import RequestError
from ._stream import StreamWriter

__all__ = ["UI_CHAT_ROUTE", "UIMessageWriter", "parse_ui_chat"]

UI_CHAT_ROUTE: Final = "/api/chat"
_OPTIONS: Final = ("provider", "model", "max_tokens", "temperature")
_SKIPPED: Final = ("step-start", "reasoning", "source-url", "source-document")
_ROLES: Final = frozenset({"system", "user", "assistant"})


def _tool_part(part: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The tool call a tool part records and, if it has one, the tool's result message."""
    name = part["type"][5:] if part["type"].startswith("tool-") else part.get("toolName")
    call_id = part.get("toolCallId")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise RequestError(where, "a tool part needs a toolCallId and a tool name")
    arguments = json.dumps(part.get("input") or {}, ensure_ascii=False, separators=(",", ":"))
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    state = part.get("state")
    if state == "output-available":
        output = part.get("output")
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    elif state == "output-error":
        text = f"error: {part.get('errorText', '')}"
    else:
        return call, None
    return call, {"role": "tool", "tool_call_id": call_id, "content": text}


def _messages(value: object) -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(message_objects(value)):
        where = f"messages[{i}]"
        role = m.get("role")
        if role not in _ROLES:
            raise RequestError(f"{where}.role", f"expected one of {sorted(_ROLES)}")
        parts = m.get("parts")
        if not isinstance(parts, list):
            raise RequestError(f"{where}.parts", "expected a list of parts")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, part in enumerate(parts):
            at = f"{where}.parts[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                raise RequestError(at, "expected a part with a type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise RequestError(f"{at}.text", "expected a string")
                texts.append(part["text"])
            elif (kind.startswith("tool-") or kind == "dynamic-tool") and role == "assistant":
                call, result = _tool_part(part, at)
                calls.append(call)
                if result is not None:
                    results.append(result)
            elif kind == "file":
                raise RequestError(at, "file parts are not supported")
            elif kind not in _SKIPPED and not kind.startswith("data-"):
                raise RequestError(f"{at}.type", f"unsupported part type {kind!r}")
        message: dict[str, Any] = {"role": role, "content": "".join(texts)}
        if calls:
            message["tool_calls"] = calls
        if message["content"] or calls:
            out.append(message)
        out.extend(results)
    if not out:
        raise RequestError("messages", "no text in any message")
    return tuple(out)


def parse_ui_chat(body: object, *, providers: Sequence[str]) -> StreamRequest:
    """Validate the AI SDK's chat request body (see the module's mapping). Raises
    :class:`RequestError` naming the field."""
    if not isinstance(body, dict):
        raise RequestError("body", "expected a JSON object")
    plain: dict[str, Any] = {"messages": [{"role": "user", "content": ""}]}
    plain.update({name: body[name] for name in _OPTIONS if body.get(name) is not None})
    request = StreamRequest.from_json(plain, providers=providers)
    return attrs.evolve(request, messages=_messages(body.get("messages")))


class UIMessageWriter(StreamWriter):
    """A UI message stream response: the ``x-vercel-ai-ui-message-stream: v1`` header, the
    parts of one assistant message (a fresh ``msg-`` id), heartbeat comments (skipped by the
    AI SDK's parser), and an error after the start as an ``error`` part then ``finish``."""

    def __init__(self, send: Send, *, body_send: Send | None = None) -> None:
        super().__init__(send, "sse", extra_headers=UI_MESSAGE_HEADERS, body_send=body_send)
        self.parts = UIMessageStream("msg-" + secrets.token_urlsafe(16))

    def frame(self, event: Event) -> bytes:
        return self.parts.encode(event)

    def error_frame(self, event: Error) -> bytes:
        return self.parts.encode(event)
