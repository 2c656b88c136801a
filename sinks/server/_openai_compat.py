"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI SDK, LangChain or curl script can use the server as a proxy to whatever provider is
behind it (OpenAI, Anthropic, the local model, scripted): the request is the Chat Completions
API's, the answer its exact wire format (``pipeline.wire.ChatCompletionChunks`` /
``ChatCompletionBuilder``), and the stream gets what every llmpipe stream gets: the upstream
request is cancelled when the client goes away, memory is bounded by the request's buffering
(``coalesce``), and the stream is metered (``/metrics``, OpenTelemetry) under its route.

Request mapping (:func:`parse_chat_completion`): ``model`` names one of the server's providers
(see ``GET /v1/models``; that provider with its default model) or else a model, passed to the
default provider. ``messages`` (``developer`` is ``system``; ``content`` a string or text
parts; assistant ``tool_calls``; ``tool`` results), ``tools`` (functions), ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``stream``, ``stream_options.include_usage`` are
honoured; ``n`` must be 1; ``user``, ``metadata``, ``store``, ``parallel_tool_calls``,
``service_tier`` and ``tool_choice: "auto"`` are accepted and change nothing; any other
parameter with a value is refused with a 400 naming it (``param``) rather than silently
ignored. Errors use the API's body ``{"error": {"message", "type", "param", "code"}}``
(:meth:`ErrorReply.openai_body`), from the server's one table.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
from starlette.types import Receive, Send

from pipeline import Error, Event, LLMPipeError, Pipeline, TextDelta, is_terminal, lone_exception
from pipeline.wire import ChatCompletionBuilder, ChatCompletionChunks

from ._context import StreamRequest, message_objects
from ._errors import (
    ClientGone,
    ErrorReply,
    RequestError,
    ShuttingDown,
    StreamFailed,
    error_reply,
)
from ._metrics import StreamReason
from ._runtime import AppRuntime
from ._stream import OUTCOME_REASONS, StreamWriter, begin_stream, run_stream

__all__ = [
    "CHAT_COMPLETIONS_ROUTE",
    "ChatCompletionRequest",
    "ChatCompletionWriter",
    "collect_completion",
    "models_list",
    "parse_chat_completion",
]

log = logging.getLogger("llmpipe.http")

CHAT_COMPLETIONS_ROUTE: Final = "/v1/chat/completions"
_IGNORED: Final = frozenset({"user", "metadata", "store", "parallel_tool_calls", "service_tier"})
_HONOURED: Final = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "tools",
        "tool_choice",
    }
)
_ROLES: Final = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_BATCH: Final = 64


@attrs.frozen
class ChatCompletionRequest:
    """A validated Chat Completions request: the generation (``request``), the ``model`` to
    echo in the answer, and how to answer (``stream``, ``include_usage``)."""

    request: StreamRequest
    model: str
    stream: bool = False
    include_usage: bool = False

    def chunks(self) -> ChatCompletionChunks:
        """A new encoder of this request's streamed answer (a fresh ``chatcmpl-`` id)."""
        return ChatCompletionChunks(
            completion_id=_completion_id(),
            model=self.model,
            created=int(time.time()),
            include_usage=self.include_usage,
        )


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


def _content(value: object, field: str, *, optional: bool = False) -> str | None:
    """A message's ``content``: a string, or a list of ``{"type": "text", "text"}`` parts."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(f"{field}[{i}]", "only text content parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(f"{field}[{i}].text", "expected a string")
            texts.append(text)
        return "".join(texts)
    raise RequestError(field, "expected a string or a list of text parts")


def _tool_calls(value: object, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RequestError(field, "expected a list")
    calls = []
    for i, call in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise RequestError(where, 'expected {"type": "function", "id", "function"}')
        fn = call.get("function")
        if not isinstance(call.get("id"), str) or not isinstance(fn, dict):
            raise RequestError(where, "expected an id and a function")
        name, arguments = fn.get("name"), fn.get("arguments", "")
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise RequestError(f"{where}.function", "expected a name and arguments (strings)")
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    return calls


def _messages(value: object) -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(message_objects(value)):
        where = f"messages[{i}]"
        role = _ROLES.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise RequestError(f"{where}.role", f"expected one of {sorted(_ROLES)}")
        calls = m.get("tool_calls") if role == "assistant" else None
        content = _content(m.get("content"), f"{where}.content", optional=bool(calls))
        message: dict[str, Any] = {"role": role, "content": content}
        if calls:
            message["tool_calls"] = _tool_calls(calls, f"{where}.tool_calls")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise RequestError(f"{where}.tool_call_id", "expected a string")
            message["tool_call_id"] = call_id
        out.append(message)
    return tuple(out)


def _tools(value: object) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RequestError("tools", "expected a list")
    out = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise RequestError(f"tools[{i}]", 'expected {"type": "function", "function": {...}}')
        if not isinstance(fn.get("name"), str):
            raise RequestError(f"tools[{i}].function.name", "expected a string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise RequestError(f"tools[{i}].function.parameters", "expected a JSON schema object")
        out.append({"type": "function", "function": dict(fn)})
    return tuple(out)


def parse_chat_completion(body: object, *, providers: Sequence[str]) -> ChatCompletionRequest:
    """Validate a decoded Chat Completions request body (see the module's mapping). Raises
    :class:`RequestError` naming the parameter."""
    if not isinstance(body, dict):
        raise RequestError("body", "expected a JSON object")
    for name, value in body.items():
        if name not in _HONOURED and name not in _IGNORED and value is not None:
            raise RequestError(name, "not supported by llmpipe")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model", "expected a non-empty string (see GET /v1/models)")
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError("n", "only n=1 is supported (one choice per request)")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError("stream", "expected a boolean")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise RequestError("stream_options", "only allowed when stream is true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise RequestError("stream_options", 'expected {"include_usage": bool}')
        include_usage = options.get("include_usage") is True
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice != "auto":
        raise RequestError("tool_choice", 'only "auto" is supported')
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    # The generation's own fields are checked by StreamRequest, as on every route.
    plain: dict[str, Any] = {"messages": [{"role": "user", "content": ""}]}
    if model in providers:
        plain["provider"] = model
    else:
        plain["model"] = model
    if max_tokens is not None:
        plain["max_tokens"] = max_tokens
    if body.get("temperature") is not None:
        plain["temperature"] = body["temperature"]
    request = StreamRequest.from_json(plain, providers=providers)
    request = attrs.evolve(
        request, messages=_messages(body.get("messages")), tools=_tools(body.get("tools"))
    )
    return ChatCompletionRequest(request, model, stream, include_usage)


def models_list(providers: Sequence[str]) -> dict[str, Any]:
    """``GET /v1/models``: the server's providers, as the API lists models."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "llmpipe"}
            for name in providers
        ],
    }


class ChatCompletionWriter(StreamWriter):
    """A streamed Chat Completions answer: ``chat.completion.chunk`` frames, heartbeat comments
    (which the SDKs' decoders skip), the API's error body before the stream starts and its
    ``data: {"error": ...}`` frame after."""

    def __init__(
        self, send: Send, chat: ChatCompletionRequest, *, body_send: Send | None = None
    ) -> None:
        super().__init__(send, "sse", body_send=body_send)
        self.chunks = chat.chunks()

    def frame(self, event: Event) -> bytes:
        return self.chunks.encode(event)

    def error_frame(self, event: Error) -> bytes:
        return self.chunks.error(event)

    async def send_error(self, reply: ErrorReply) -> None:
        await self.send_json(reply.status, reply.openai_body(), reply.headers)


class _CompletionWriter(StreamWriter):
    """A ``"stream": false`` answer: one JSON document. The only frame it is ever asked to
    write is :func:`run_stream`'s last one at shutdown (the generation was cut short): it is
    answered as the API's 503 error instead."""

    def error_frame(self, event: Error) -> bytes:
        return b""

    async def write(self, data: bytes, *, last: bool = False) -> None:
        if not self.headers_sent:
            reply = error_reply(ShuttingDown("the server is shutting down"))
            await self.send_json(reply.status, reply.openai_body(), reply.headers)


async def collect_completion(
    runtime: AppRuntime,
    chat: ChatCompletionRequest,
    send: Send,
    receive: Receive,
    route: str = CHAT_COMPLETIONS_ROUTE,
) -> None:
    """Answer a ``"stream": false`` request: run the generation to its end, then send the
    ``chat.completion`` object, or an error status (from the table in ``_errors.py``; an
    ``Error`` event is a :class:`StreamFailed`). The client going away cancels the generation
    and the upstream request, as for a stream; the text is metered as it arrives."""
    request = chat.request
    writer = _CompletionWriter(send, "sse")
    record = begin_stream(runtime, "live", route, request)
    builder = ChatCompletionBuilder(
        completion_id=_completion_id(), model=chat.model, created=int(time.time())
    )

    async def body() -> None:
        failure: Exception | None = None
        try:
            async with (
                runtime.factory(request) as producer,
                runtime.live_events(Pipeline(producer), request) as events,
            ):
                ended = False
                while not ended:
                    batch = await events.receive_batch(_BATCH)
                    if not batch:
                        break
                    deltas = chars = 0
                    for event in batch:
                        builder.add(event)
                        if isinstance(event, TextDelta):
                            deltas += 1
                            chars += len(event.text)
                        elif isinstance(event, Error):
                            failure = StreamFailed(event)
                        ended = is_terminal(event)
                    runtime.metrics.sent(record, len(batch), deltas, chars)
        except Exception as group:
            exc = lone_exception(group)
            if isinstance(exc, ClientGone):
                raise exc from None
            if not isinstance(exc, LLMPipeError):
                log.exception("completion failed", exc_info=exc)
            failure = exc
        if failure is not None:
            reply = error_reply(failure)
            record.fail(reply.kind)
            await writer.send_json(reply.status, reply.openai_body(), reply.headers)
        else:
            await writer.send_json(200, builder.build())

    reason: StreamReason = "cancelled"
    try:
        reason = OUTCOME_REASONS[await run_stream(runtime, receive, writer, body)]
    finally:
        runtime.metrics.end_stream(record, reason)
