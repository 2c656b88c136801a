"""OpenAI producers: Chat Completions and Responses, over the ``openai`` SDK's raw byte stream.

Both producers send the request with the SDK (auth, base URL, headers, HTTP status errors:
its ``post``, with the JSON body ``create`` would send), read the response body as bytes and
decode it with llmpipe's own SSE decoder and one JSON parse per event: no per-chunk pydantic
objects. Everything else (retries before
the first token, first-token and stall timeouts, error translation, the cost guard, secret
redaction) is :class:`~pipeline.producers._base.SSEProducer`'s loop.

They work with any OpenAI-compatible server through the client's ``base_url`` (llama.cpp,
vLLM, the llmpipe emulator): the chat parser reads only the fields it needs and tolerates
missing ones (no ``id``/``model``, no ``[DONE]`` after a ``finish_reason``, usage in any chunk,
tool-call arguments in the same chunk as the call's id).

Concurrency: a producer object streams one request at a time (``stream`` keeps per-attempt
state on the instance); build one per stream. The SDK client may be shared by any number of
producers and tasks. Cancellation: the SDK response is held with ``async with``, so cancelling
the pipeline, also while the producer is parked in ``emit`` on a full channel, closes the
upstream HTTP connection at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar, Final, TypedDict, Unpack, cast

import attrs
import httpx
import openai

from .. import (
    ConfigError,
    Done,
    Event,
    Metadata,
    ProducerConnectionError,
    ProducerError,
    ProducerProtocolError,
    ProducerStatusError,
    ProducerTimeout,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ..wire import SSEEvent
from ._base import (
    DEFAULT_FIRST_TOKEN_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    SNIPPET_CHARS,
    TRANSPORT_ERRORS,
    CostGuard,
    ErrorMap,
    RetryPolicy,
    SSEProducer,
    StreamParser,
    drop_stream,
    parse_json,
    redact,
)

__all__ = [
    "OPENAI_ERRORS",
    "OpenAIChatProducer",
    "OpenAIOptions",
    "OpenAIResponsesProducer",
    "openai_client",
]

PROVIDER: Final = "openai"

NO_KEY_PLACEHOLDER: Final = "sk-no-key-required"
"""The API key sent to a server given by ``base_url`` when no key is configured."""

RETRYABLE_ERROR_TYPES: Final = frozenset(
    {
        "server_error",
        "internal_error",
        "api_error",
        "overloaded",
        "overloaded_error",
        "service_unavailable",
        "rate_limit_exceeded",
        "rate_limit_error",
        "timeout",
    }
)
"""In-stream error ``type``/``code`` values that a new request may not hit again."""

OPENAI_ERRORS: Final[ErrorMap] = {
    openai.APIStatusError: ProducerStatusError,
    openai.APIResponseValidationError: ProducerStatusError,
    openai.APITimeoutError: ProducerTimeout,
    openai.APIConnectionError: ProducerConnectionError,
    openai.WebSocketConnectionClosedError: ProducerConnectionError,
}
"""The ``openai`` SDK's exceptions (see :data:`~pipeline.producers._base.ErrorMap`); any
other ``openai.OpenAIError`` becomes a plain, non-retryable ``ProducerError``."""

_RESPONSES_STOP: Final = {"max_output_tokens": "length", "content_filter": "content_filter"}


# ---------------------------------------------------------------------------------------------
# Helpers


def _stream_error(error: object, secrets: Sequence[str | None], where: str) -> ProducerError:
    """A :class:`ProducerError` for an error object the provider sent inside the stream."""
    kind = message = ""
    retryable = False
    if isinstance(error, Mapping):
        words = [str(w) for w in (error.get("type"), error.get("code")) if w]
        kind = ": ".join(dict.fromkeys(words))
        message = str(error.get("message") or "")
        retryable = any(w in RETRYABLE_ERROR_TYPES for w in words)
    elif error:
        message = str(error)
    text = f"{PROVIDER}: {where}: {kind + ': ' if kind else ''}{message or 'an error occurred'}"
    return ProducerError(redact(text, secrets), retryable=retryable)


def _loads(data: str, secrets: Sequence[str | None]) -> dict[str, Any]:
    try:
        obj = parse_json(data)
    except ValueError as exc:
        snippet = redact(data, secrets, limit=SNIPPET_CHARS)
        raise ProducerProtocolError(
            f"{PROVIDER}: malformed event data ({exc}): {snippet!r}", retryable=False
        ) from None
    if not isinstance(obj, dict):
        raise ProducerProtocolError(f"{PROVIDER}: event data is not a JSON object")
    return obj


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _texts_of(value: object, out: list[str]) -> None:
    """Collect the text of a message's content: a string, or parts with ``text``/``output``."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for key in ("text", "content", "output", "arguments", "instructions"):
            if key in value:
                _texts_of(value[key], out)
        function = value.get("function")
        if isinstance(function, Mapping):
            _texts_of(function.get("arguments"), out)
        calls = value.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                _texts_of(call, out)
    elif isinstance(value, list):
        for item in value:
            _texts_of(item, out)


@attrs.define(eq=False)
class _ToolCall:
    """One tool call being streamed: arguments kept as pieces, joined once at the end."""

    index: int
    id: str
    name: str
    parts: list[str] = attrs.Factory(list)
    ended: bool = False

    def end(self, arguments: str | None = None) -> ToolCallEnd:
        self.ended = True
        full = "".join(self.parts) if arguments is None else arguments
        self.parts = []
        return ToolCallEnd(self.index, self.id, self.name, full)


def _limit(value: int | None, extra: Mapping[str, Any], *keys: str) -> int | None:
    """The output-token limit a request asks for: ``value``, else the first int in ``extra``
    under one of ``keys``."""
    if value is not None:
        return value
    for key in keys:
        found = extra.get(key)
        if isinstance(found, int):
            return found
    return None


class _EndAwareParser(StreamParser):
    """What both OpenAI parsers share: the tool calls being streamed, the stop reason and
    usage kept for the end, and knowing when the end marker arrived
    (:attr:`~pipeline.producers._base.StreamParser.ended`).

    ``finish`` raises a retryable :class:`~pipeline.ProducerProtocolError` saying
    ``incomplete`` unless :meth:`_complete`; else it ends the open tool calls and emits the
    usage (if any) and ``Done``.
    """

    incomplete: ClassVar[str]

    def __init__(self, secrets: Sequence[str | None]) -> None:
        self._secrets = secrets
        self._calls: dict[int, _ToolCall] = {}
        self._stop: str | None = None
        self._usage: Usage | None = None
        self.ended = False

    def _complete(self) -> bool:
        return self.ended

    def _end_calls(self, out: list[Event]) -> None:
        for call in self._calls.values():
            if not call.ended:
                out.append(call.end())

    def finish(self) -> Sequence[Event]:
        if not self._complete():
            raise ProducerProtocolError(f"{PROVIDER}: {self.incomplete}", retryable=True)
        out: list[Event] = []
        self._end_calls(out)
        if self._usage is not None:
            out.append(self._usage)
        out.append(Done(self._stop))
        return out


class OpenAIOptions(TypedDict, total=False):
    """The keyword options both OpenAI producers take besides their prompt and output limit.

    ``temperature`` and ``tools`` are sent as the API takes them; ``extra`` is merged into the
    JSON body (``extra_body``), so it can carry any parameter, standard or server-specific.
    ``retry`` (:class:`~pipeline.producers.RetryPolicy`), ``first_token_timeout`` and
    ``stall_timeout`` (seconds or ``None``; 60 and 30 by default) and ``cost_guard`` configure
    the shared loop (:class:`~pipeline.producers.SSEProducer`).
    """

    temperature: float | None
    tools: list[dict[str, Any]] | None
    extra: dict[str, Any] | None
    retry: RetryPolicy | None
    first_token_timeout: float | None
    stall_timeout: float | None
    cost_guard: CostGuard | None


class _OpenAIProducer(SSEProducer):
    """What both OpenAI producers share: the client, the :class:`OpenAIOptions` and the
    request."""

    provider = PROVIDER
    errors: ClassVar[ErrorMap] = {**TRANSPORT_ERRORS, **OPENAI_ERRORS}

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model: str,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        first_token_timeout: float | None = DEFAULT_FIRST_TOKEN_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        cost_guard: CostGuard | None = None,
    ) -> None:
        if not model:
            raise ConfigError("model: a model name is required")
        super().__init__(
            retry=retry,
            first_token_timeout=first_token_timeout,
            stall_timeout=stall_timeout,
            cost_guard=cost_guard,
            secrets=[client.api_key],
        )
        # Our RetryPolicy owns retries: the SDK must not retry behind our back. A client that
        # already has them off (``openai_client`` builds such) is used as is: a copy would
        # redo the SDK's per-client set-up (its platform probe runs in a worker thread).
        self._client = client if client.max_retries == 0 else client.with_options(max_retries=0)
        self.model = model
        self.temperature = temperature
        self.tools = tools
        self.extra = dict(extra or {})

    def _new_parser(self) -> _EndAwareParser:
        raise NotImplementedError

    def _parser(self) -> StreamParser:
        return self._new_parser()

    def _request(self) -> tuple[str, dict[str, Any]]:
        """The API's path and the request's fields (the JSON body but :attr:`extra`)."""
        raise NotImplementedError

    def _with_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` (the API's own) and the options both APIs take alike."""
        if self.temperature is not None:
            fields["temperature"] = self.temperature
        if self.tools:
            fields["tools"] = self.tools
        return fields

    def _prompt(self) -> list[Any]:
        """What the prompt is made of (messages, input items, strings), for the cost guard."""
        raise NotImplementedError

    def _prompt_texts(self) -> Sequence[str]:
        out: list[str] = []
        _texts_of(self._prompt(), out)
        if self.tools:
            out.append(json.dumps(self.tools))
        return out

    @asynccontextmanager
    async def _send(self) -> AsyncIterator[httpx.Response]:
        """Send the request: its streamed response, closed on leaving.

        The request ``create`` would send (the same JSON body and headers: tested), made with
        the SDK's ``post``, its documented way to send a request it has no method for: the SDK's
        base URL, auth, headers and status errors, without ``create``'s per-call work (a
        ``TypedDict`` transform of the fields, the response wrappers), which was 3.0 M of the
        16 M instructions a one-token stream cost the server
        (``benchmarks/instructions_per_token.py``)."""
        path, fields = self._request()
        options: openai.RequestOptions = {"security": {"bearer_auth": True}}
        if self.extra:
            options["extra_json"] = self.extra
        timeout = self._sdk_timeout(self._client.timeout)
        if timeout is not None:
            options["timeout"] = timeout
        response = cast(
            httpx.Response,
            await self._client.post(
                path,
                cast_to=httpx.Response,
                body=fields,
                options=options,
                stream=True,
                stream_cls=openai.AsyncStream[Any],
            ),
        )
        try:
            yield response
        finally:
            await response.aclose()
            drop_stream(response)

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[AsyncIterator[bytes]]:
        async with AsyncExitStack() as stack:
            # (The base loop's first-token deadline covers waiting for the response head too.)
            response = await stack.enter_async_context(self._send())
            encoding = response.headers.get("content-encoding", "").strip().lower()
            # An SSE body is rarely compressed: then read httpx's response stream itself, two
            # generator layers (httpx's decoder and ``aiter_raw``) fewer per chunk; else let
            # httpx decode it.
            if encoding in ("", "identity"):
                chunks = aiter(cast(httpx.AsyncByteStream, response.stream))
            else:
                chunks = response.aiter_bytes()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:  # close the generator here, not in trio's GC hook
                stack.push_async_callback(aclose)
            yield chunks


# ---------------------------------------------------------------------------------------------
# Chat Completions


class _ChatParser(_EndAwareParser):
    """``chat.completion.chunk`` events -> llmpipe events. Only ``choices[0]`` is read."""

    incomplete = "the stream ended before its finish_reason and [DONE]"

    def __init__(self, secrets: Sequence[str | None]) -> None:
        super().__init__(secrets)
        self._meta = False

    def feed(self, sse: SSEEvent) -> Sequence[Event]:
        return self.feed_data(sse.data)

    def feed_data(self, data: str) -> Sequence[Event]:
        if self.ended:
            return ()
        if data == "[DONE]":
            self.ended = True
            return ()
        obj = _loads(data, self._secrets)
        error = obj.get("error")
        if error:
            raise _stream_error(error, self._secrets, "error event in the stream")
        out: list[Event] = []
        if not self._meta:
            self._meta = True
            out.append(Metadata(PROVIDER, _str(obj.get("model")), _str(obj.get("id"))))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            # Kept, not emitted: some servers repeat it in every chunk. Sent once, before Done.
            self._usage = Usage(
                _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
            )
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list):
            return out
        choice = choices[0]
        if not isinstance(choice, dict):
            return out
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if content and isinstance(content, str):
                out.append(TextDelta(content))
            tool_calls = delta.get("tool_calls")
            if tool_calls and isinstance(tool_calls, list):
                self._tool_calls(tool_calls, out)
        finish = choice.get("finish_reason")
        if finish and isinstance(finish, str):
            self._stop = finish
            self._end_calls(out)
        return out

    def _tool_calls(self, items: list[Any], out: list[Event]) -> None:
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            index = item.get("index")
            if not isinstance(index, int):
                index = position
            function = item.get("function")
            if not isinstance(function, dict):
                function = {}
            call = self._calls.get(index)
            if call is None or call.ended:
                call = _ToolCall(index, _str(item.get("id")), _str(function.get("name")))
                self._calls[index] = call
                out.append(ToolCallStart(index, call.id, call.name))
            else:
                if not call.id and item.get("id"):
                    call.id = _str(item.get("id"))
                if not call.name and function.get("name"):
                    call.name = _str(function.get("name"))
            arguments = function.get("arguments")
            if arguments and isinstance(arguments, str):
                call.parts.append(arguments)
                out.append(ToolCallDelta(index, arguments))

    def _complete(self) -> bool:
        return self.ended or self._stop is not None


class OpenAIChatProducer(_OpenAIProducer):
    """Streams one Chat Completions answer (``POST /chat/completions`` with ``stream: true``).

    Events: ``Metadata`` (first chunk's ``model`` and ``id``), ``TextDelta`` per
    ``delta.content``, ``ToolCallStart`` when a tool-call index is first seen, ``ToolCallDelta``
    per argument piece, ``ToolCallEnd`` (full arguments JSON) for every open call when the
    ``finish_reason`` arrives, ``Usage`` (``prompt_tokens``/``completion_tokens``; usage is
    requested with ``stream_options.include_usage``) and ``Done(finish_reason)`` with the
    provider's word: ``"stop"``, ``"length"``, ``"tool_calls"``, ``"content_filter"``.
    ``Done`` is emitted after ``data: [DONE]`` once the body has ended (or after a short drain).

    ``max_tokens`` is sent as ``max_tokens`` (what every compatible server accepts); for models
    that want ``max_completion_tokens`` pass it in ``extra``. The other keyword arguments are
    the :class:`OpenAIOptions` (``temperature``, ``tools``, ``extra``, ``retry``, the
    timeouts, ``cost_guard``).
    An error object inside the stream raises :class:`~pipeline.ProducerError`, retryable for
    ``server_error``/overload/rate-limit types (see :data:`RETRYABLE_ERROR_TYPES`).
    ``refusal`` deltas and choices other than the first are ignored.

    One stream at a time per producer object (build one per request); the client may be shared
    by many producers and tasks. Cancelling the pipeline closes the HTTP response at once, also
    while the producer waits in ``emit`` for room in a full channel.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        **options: Unpack[OpenAIOptions],
    ) -> None:
        super().__init__(client, model=model, **options)
        if not messages:
            raise ConfigError("messages: at least one message is required")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        self.messages = messages
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"<OpenAIChatProducer model={self.model!r} messages={len(self.messages)}>"

    def _new_parser(self) -> _EndAwareParser:
        return _ChatParser(self._secrets)

    def _request(self) -> tuple[str, dict[str, Any]]:
        fields: dict[str, Any] = {
            "messages": self.messages,
            "model": self.model,
        }
        if self.max_tokens is not None:
            fields["max_tokens"] = self.max_tokens
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}
        return "/chat/completions", self._with_options(fields)

    def _prompt(self) -> list[Any]:
        return self.messages

    def _max_tokens(self) -> int | None:
        return _limit(self.max_tokens, self.extra, "max_completion_tokens", "max_tokens")


# ---------------------------------------------------------------------------------------------
# Responses


class _ResponsesParser(_EndAwareParser):
    """Responses API stream events -> llmpipe events."""

    incomplete = "the stream ended before response.completed"

    def feed(self, sse: SSEEvent) -> Sequence[Event]:
        if self.ended:
            return ()
        obj = _loads(sse.data, self._secrets)
        kind = obj.get("type") or sse.event
        if kind == "response.output_text.delta":
            delta = obj.get("delta")
            return (TextDelta(delta),) if delta and isinstance(delta, str) else ()
        if kind == "response.function_call_arguments.delta":
            call = self._calls.get(_int(obj.get("output_index")))
            delta = obj.get("delta")
            if call is None or call.ended or not delta or not isinstance(delta, str):
                return ()
            call.parts.append(delta)
            return (ToolCallDelta(call.index, delta),)
        if kind == "response.output_item.added":
            return self._item_added(obj)
        if kind == "response.function_call_arguments.done":
            call = self._calls.get(_int(obj.get("output_index")))
            if call is None or call.ended:
                return ()
            arguments = obj.get("arguments")
            return (call.end(arguments if isinstance(arguments, str) else None),)
        if kind == "response.output_item.done":
            call = self._calls.get(_int(obj.get("output_index")))
            if call is None or call.ended:
                return ()
            item = obj.get("item")
            arguments = item.get("arguments") if isinstance(item, dict) else None
            return (call.end(arguments if isinstance(arguments, str) else None),)
        if kind == "response.created":
            response = obj.get("response")
            if not isinstance(response, dict):
                response = {}
            return (Metadata(PROVIDER, _str(response.get("model")), _str(response.get("id"))),)
        if kind in ("response.completed", "response.incomplete"):
            return self._completed(obj, kind)
        if kind == "response.failed":
            response = obj.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            raise _stream_error(error, self._secrets, "response.failed")
        if kind == "error":
            raise _stream_error(obj, self._secrets, "error event in the stream")
        return ()

    def _item_added(self, obj: dict[str, Any]) -> Sequence[Event]:
        item = obj.get("item")
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return ()
        index = _int(obj.get("output_index"))
        call = _ToolCall(index, _str(item.get("call_id")), _str(item.get("name")))
        self._calls[index] = call
        out: list[Event] = [ToolCallStart(index, call.id, call.name)]
        arguments = item.get("arguments")
        if arguments and isinstance(arguments, str):
            call.parts.append(arguments)
            out.append(ToolCallDelta(index, arguments))
        return out

    def _completed(self, obj: dict[str, Any], kind: str) -> Sequence[Event]:
        self.ended = True
        response = obj.get("response")
        if not isinstance(response, dict):
            response = {}
        usage = response.get("usage")
        if isinstance(usage, dict):
            self._usage = Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))
        if kind == "response.incomplete":
            details = response.get("incomplete_details")
            reason = _str(details.get("reason")) if isinstance(details, dict) else ""
            self._stop = _RESPONSES_STOP.get(reason, reason or "incomplete")
        else:
            output = response.get("output")
            has_call = bool(self._calls) or (
                isinstance(output, list)
                and any(isinstance(i, dict) and i.get("type") == "function_call" for i in output)
            )
            self._stop = "tool_calls" if has_call else "stop"
        out: list[Event] = []
        self._end_calls(out)
        return out


class OpenAIResponsesProducer(_OpenAIProducer):
    """Streams one Responses API answer (``POST /responses`` with ``stream: true``).

    Events: ``Metadata`` from ``response.created``; ``TextDelta`` per
    ``response.output_text.delta``; for each ``function_call`` output item ``ToolCallStart``
    (``index`` = its ``output_index``, ``id`` = its ``call_id``), ``ToolCallDelta`` per
    ``response.function_call_arguments.delta`` and ``ToolCallEnd`` with the full arguments (the
    server's ``...arguments.done``/``output_item.done`` text); ``Usage``
    (``input_tokens``/``output_tokens``) and ``Done`` once the body ends after
    ``response.completed`` or ``response.incomplete``.

    Stop reasons use the Chat Completions words so consumers need not care which API answered:
    ``"tool_calls"`` when the response holds a function call, else ``"stop"``; for
    ``response.incomplete`` the ``incomplete_details.reason`` mapped ``max_output_tokens`` ->
    ``"length"`` (``content_filter`` and other reasons as given). ``response.failed`` and
    ``error`` events raise :class:`~pipeline.ProducerError` (retryable for ``server_error``,
    rate limits and overload). The other keyword arguments are the :class:`OpenAIOptions`.
    Concurrency and cancellation as for :class:`OpenAIChatProducer`.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model: str,
        input: str | list[dict[str, Any]],  # the API's own name
        instructions: str | None = None,
        max_output_tokens: int | None = None,
        **options: Unpack[OpenAIOptions],
    ) -> None:
        super().__init__(client, model=model, **options)
        if not input:
            raise ConfigError("input: a prompt or at least one input item is required")
        if max_output_tokens is not None and max_output_tokens < 1:
            raise ConfigError(f"max_output_tokens must be >= 1, got {max_output_tokens}")
        self.input = input
        self.instructions = instructions
        self.max_output_tokens = max_output_tokens

    def __repr__(self) -> str:
        return f"<OpenAIResponsesProducer model={self.model!r}>"

    def _new_parser(self) -> _EndAwareParser:
        return _ResponsesParser(self._secrets)

    def _request(self) -> tuple[str, dict[str, Any]]:
        fields: dict[str, Any] = {"input": self.input}
        if self.instructions is not None:
            fields["instructions"] = self.instructions
        if self.max_output_tokens is not None:
            fields["max_output_tokens"] = self.max_output_tokens
        fields["model"] = self.model
        fields["stream"] = True
        return "/responses", self._with_options(fields)

    def _prompt(self) -> list[Any]:
        return [self.instructions or None, self.input]

    def _max_tokens(self) -> int | None:
        return _limit(self.max_output_tokens, self.extra, "max_output_tokens")


# ---------------------------------------------------------------------------------------------
# Client


def openai_client(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    organization: str | None = None,
    project: str | None = None,
    timeout: float | httpx.Timeout = httpx.Timeout(600.0, connect=10.0),  # noqa: B008
    default_headers: Mapping[str, str] | None = None,
    http_client: httpx.AsyncClient | None = None,
    max_connections: int | None = 10_000,
) -> openai.AsyncOpenAI:
    """Build an ``openai.AsyncOpenAI`` client on a plain ``httpx.AsyncClient``.

    ``api_key`` and ``base_url`` default to ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``, as in the
    SDK. With a ``base_url`` (a local or compatible server) a missing key is replaced by a
    placeholder; with neither a key nor a ``base_url``, :class:`~pipeline.ConfigError` is
    raised. The SDK's own retries are off (``max_retries=0``): the producers' ``RetryPolicy``
    owns retries.

    Building a client blocks the event loop for some tens of milliseconds (TLS setup): build
    one per process (or per server) and share it between producers and tasks. Close it with
    ``await client.close()`` (or ``async with client:``), which also closes ``http_client``.
    ``max_connections`` bounds concurrent upstream requests when ``http_client`` is built here
    (one per live stream; httpx's own default of 100 would queue stream 101).
    """
    if api_key is None:
        api_key = os.environ.get("OPENAI_API_KEY") or None
    if base_url is None:
        base_url = os.environ.get("OPENAI_BASE_URL") or None
    if api_key is None:
        if base_url is None:
            raise ConfigError(
                "openai: no API key: pass api_key=..., set OPENAI_API_KEY, or give the base_url "
                "of a compatible server (OPENAI_BASE_URL) that needs no key"
            )
        api_key = NO_KEY_PLACEHOLDER
    if http_client is None:
        # httpx's default pool (100 connections) would make stream 101 of a server wait for
        # stream 1 to end: one streaming response holds one connection for its whole life.
        http_client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=True,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=100),
        )
    # openai 3.x is typed for its httpx2 fork; a plain httpx.AsyncClient works at runtime.
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        organization=organization,
        project=project,
        timeout=cast(Any, timeout),
        max_retries=0,
        default_headers=default_headers,
        http_client=cast(Any, http_client),
    )
