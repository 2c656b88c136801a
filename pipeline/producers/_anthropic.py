"""The Anthropic Messages producer: ``client.messages`` streamed through our own SSE decoder.

The request goes through the official SDK's raw path
(``client.messages.with_streaming_response.create(..., stream=True)``): the SDK builds the
request, authenticates it and raises its own ``APIStatusError`` subclasses for a non-2xx answer
(``RateLimitError`` 429, ``InternalServerError`` 5xx, ``OverloadedError`` 529, ...). The body is
read as bytes and parsed here, one JSON parse per SSE event, which is much cheaper than the
SDK's per-event model objects. Retries, timeouts, cancellation and error translation are the
shared loop's (:class:`~pipeline.producers._base.SSEProducer`); the SDK's own retries are off.

Wire events and what they become:

==========================================  =================================================
``message_start``                           :class:`~pipeline.Metadata` (model, message id);
                                            the input token count is remembered
``content_block_start`` (``text``)          a :class:`~pipeline.TextDelta` only if the block
                                            starts with text
``content_block_start`` (``tool_use``)      :class:`~pipeline.ToolCallStart` (block index,
                                            ``toolu_…`` id, name)
``content_block_delta`` ``text_delta``      :class:`~pipeline.TextDelta`
``content_block_delta`` ``input_json_delta``  :class:`~pipeline.ToolCallDelta`
``content_block_stop`` (a tool block)       :class:`~pipeline.ToolCallEnd` with the whole
                                            arguments JSON (``"{}"`` when none came)
``message_delta``                           stop reason and output token count remembered
``message_stop``                            :class:`~pipeline.Usage`, then
                                            :class:`~pipeline.Done` (``end_turn``,
                                            ``tool_use``, ``max_tokens``, ...)
``ping``, unknown types, other deltas       ignored (thinking, citations, server tools)
``error``                                   raised as :class:`~pipeline.ProducerError` whose
                                            ``kind`` is the error's ``type``
==========================================  =================================================
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from typing import Any, ClassVar, Final

import anthropic
import httpx2

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
    parse_json,
    redact,
)

__all__ = ["ANTHROPIC_ERRORS", "DEFAULT_MAX_TOKENS", "AnthropicProducer", "anthropic_client"]

DEFAULT_MAX_TOKENS: Final = 1024
"""``max_tokens`` when none is given (the Messages API requires one)."""

_RETRYABLE_ERROR_TYPES: Final = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)


ANTHROPIC_ERRORS: Final[ErrorMap] = {
    anthropic.APIStatusError: ProducerStatusError,  # 429, 5xx, 529 overloaded, ...
    anthropic.APIResponseValidationError: ProducerStatusError,
    anthropic.APITimeoutError: ProducerTimeout,
    anthropic.APIConnectionError: ProducerConnectionError,
}
"""The ``anthropic`` SDK's exceptions (see :data:`~pipeline.producers._base.ErrorMap`); any
other ``anthropic.AnthropicError`` becomes a plain, non-retryable ``ProducerError``."""

_NO_RETRY_CLIENTS: Final[weakref.WeakKeyDictionary[Any, anthropic.AsyncAnthropic]] = (
    weakref.WeakKeyDictionary()
)


def _without_sdk_retries(client: anthropic.AsyncAnthropic) -> anthropic.AsyncAnthropic:
    """``client`` itself if its SDK retries are off, else its ``max_retries=0`` copy, made once
    per client and reused: a copy is a new client whose first request resolves the platform
    headers in a worker thread, a cost (and, under an autojumping MockClock, a clock leap) that
    should be paid once, not per stream."""
    if client.max_retries == 0:
        return client
    copy = _NO_RETRY_CLIENTS.get(client)
    if copy is None:
        copy = _NO_RETRY_CLIENTS[client] = client.with_options(max_retries=0)
    return copy


def anthropic_client(
    base_url: str | None = None, api_key: str | None = None, *, max_connections: int | None = 10_000
) -> anthropic.AsyncAnthropic:
    """Build an ``anthropic.AsyncAnthropic`` client for :class:`AnthropicProducer`.

    ``api_key`` defaults to ``$ANTHROPIC_API_KEY`` and ``base_url`` to ``$ANTHROPIC_BASE_URL``
    (else the SDK's default), as the SDK does. The client gets its own ``httpx2.AsyncClient``
    (the transport anthropic 2.x requires) and the SDK's default timeouts (5 s to connect,
    10 minutes per read: a backstop, which the producer's requests leave out while its
    first-token and stall timeouts are both set) and ``max_retries=0`` (the producer's
    :class:`RetryPolicy` retries).

    Building a client costs tens of milliseconds of blocking work (TLS setup): build it once,
    outside the event loop's hot path, and share it; it is safe to use from many tasks at
    once. Close it with ``await client.close()`` (or ``async with client``) when done.

    ``max_connections`` bounds concurrent upstream requests (one per live stream).

    Raises :class:`~pipeline.ConfigError` when no API key is given or found.
    """
    key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
    if key is None:
        raise ConfigError(
            "anthropic_client: no API key: pass api_key= or set the ANTHROPIC_API_KEY "
            "environment variable"
        )
    url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
    # The SDK applies its own default timeouts. httpx2's default pool (100 connections) would
    # make stream 101 of a server wait for stream 1 to end.
    http_client = httpx2.AsyncClient(
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=100)
    )
    return anthropic.AsyncAnthropic(
        api_key=key, base_url=url, http_client=http_client, max_retries=0
    )


def _block_text(content: Any) -> list[str]:
    """The texts of a message's ``content``: a string, or a list of blocks (text blocks,
    tool results whose content is text, tool-use inputs as JSON)."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, Sequence):
        for block in content:
            if isinstance(block, str):
                texts.append(block)
            elif isinstance(block, Mapping):
                kind = block.get("type")
                if kind == "text" and isinstance(block.get("text"), str):
                    texts.append(block["text"])
                elif kind == "tool_result":
                    texts.extend(_block_text(block.get("content")))
                elif kind == "tool_use" and block.get("input") is not None:
                    texts.append(json.dumps(block["input"], ensure_ascii=False))
    return texts


class _ToolBlock:
    __slots__ = ("id", "name", "parts")

    def __init__(self, id: str, name: str) -> None:
        self.id = id
        self.name = name
        self.parts: list[str] = []


class AnthropicParser(StreamParser):
    """Maps one Anthropic Messages stream to llmpipe events (see the module docstring).

    ``secrets`` are masked in the message of a reported ``error`` event.

    Linear time: one JSON parse per SSE event; tool-argument pieces are kept in a list per
    block and joined once, at the block's ``content_block_stop``.
    """

    provider: Final = "anthropic"

    def __init__(self, secrets: Sequence[str | None] = ()) -> None:
        self._secrets = secrets
        self.input_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None
        self.finished = False
        self._tools: dict[int, _ToolBlock] = {}

    def feed(self, sse: SSEEvent) -> Sequence[Event]:
        if not sse.data:
            return ()
        try:
            data = parse_json(sse.data)
        except json.JSONDecodeError as exc:
            raise self._protocol_error(f"malformed JSON in a {sse.event!r} event: {exc}") from None
        if not isinstance(data, dict):
            raise self._protocol_error(f"a {sse.event!r} event is not a JSON object")
        kind = data.get("type", sse.event)
        try:
            return self._dispatch(kind, data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._protocol_error(
                f"unexpected {kind!r} event shape ({type(exc).__name__}: {exc})"
            ) from None

    def _protocol_error(self, what: str) -> ProducerProtocolError:
        """The error for an event we cannot use: ``what`` quotes the provider's data, so it is
        redacted, then bounded (:data:`SNIPPET_CHARS`)."""
        return ProducerProtocolError(
            f"anthropic: {redact(what, self._secrets, limit=SNIPPET_CHARS)}"
        )

    def _dispatch(self, kind: str, data: dict[str, Any]) -> Sequence[Event]:
        if kind == "content_block_delta":
            delta = data["delta"]
            delta_type = delta["type"]
            if delta_type == "text_delta":
                text = delta["text"]
                return (TextDelta(text),) if text else ()
            if delta_type == "input_json_delta":
                index = int(data["index"])
                piece = delta["partial_json"]
                block = self._tools.get(index)
                if block is None:
                    raise ProducerProtocolError(
                        f"anthropic: input_json_delta for block {index}, which is not a tool_use"
                    )
                if not piece:
                    return ()
                block.parts.append(piece)
                return (ToolCallDelta(index, piece),)
            return ()  # thinking, signature, citations: not part of the answer's text
        if kind == "content_block_start":
            index = int(data["index"])
            block_data = data["content_block"]
            block_type = block_data["type"]
            if block_type == "text":
                text = block_data.get("text") or ""
                return (TextDelta(text),) if text else ()
            if block_type == "tool_use":
                tool = _ToolBlock(str(block_data["id"]), str(block_data["name"]))
                self._tools[index] = tool
                return (ToolCallStart(index, tool.id, tool.name),)
            return ()
        if kind == "content_block_stop":
            index = int(data["index"])
            ended = self._tools.get(index)
            if ended is None:
                return ()
            del self._tools[index]
            arguments = "".join(ended.parts) or "{}"
            return (ToolCallEnd(index, ended.id, ended.name, arguments),)
        if kind == "message_start":
            message = data["message"]
            usage = message.get("usage") or {}
            self.input_tokens = int(usage.get("input_tokens") or 0)
            self.output_tokens = int(usage.get("output_tokens") or 0)
            return (
                Metadata(
                    provider=self.provider,
                    model=str(message.get("model") or ""),
                    response_id=str(message.get("id") or ""),
                ),
            )
        if kind == "message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            if stop is not None:
                self.stop_reason = str(stop)
            usage = data.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.output_tokens = int(usage["output_tokens"])  # cumulative
            if usage.get("input_tokens") is not None:
                self.input_tokens = int(usage["input_tokens"])
            return ()
        if kind == "message_stop":
            self.finished = True
            return (Usage(self.input_tokens, self.output_tokens), Done(self.stop_reason))
        if kind == "error":
            error = data.get("error") or {}
            error_type = str(error.get("type") or "error")
            message = str(error.get("message") or "")
            exc = ProducerError(
                redact(f"anthropic: {error_type}: {message}", self._secrets),
                retryable=error_type in _RETRYABLE_ERROR_TYPES,
            )
            exc.kind = error_type
            raise exc
        return ()  # ping, and event types added after this was written

    def finish(self) -> Sequence[Event]:
        if not self.finished:
            raise ProducerProtocolError(
                "anthropic: the stream ended before message_stop (the response is incomplete)"
            )
        return ()


class AnthropicProducer(SSEProducer):
    """Streams one Anthropic Messages answer into a pipeline.

    ``client`` is an ``anthropic.AsyncAnthropic`` (see :func:`anthropic_client`). Retries are
    ours (``retry``), so the SDK's are turned off: a client with ``max_retries != 0`` is
    replaced by its ``with_options(max_retries=0)`` copy, made once per client and shared by
    every producer that uses that client (the caller's client is not changed). Failures before
    the first token (connection errors, timeouts, 429, 5xx, 529 ``overloaded``, and retryable
    ``error`` events) are retried with backoff honouring ``retry-after``; after the first token
    a failure ends the stream with an :class:`~pipeline.Error` event that keeps the partial
    output. ``messages``, ``system``, ``temperature`` and ``tools`` are sent as the API takes
    them; ``extra`` is merged into the request body (``top_p``, ``stop_sequences``,
    ``metadata``, ``thinking``...; it cannot override ``stream``).

    ``first_token_timeout`` runs from sending the request to the first content event,
    ``stall_timeout`` between two reads afterwards; waiting in ``emit`` for a slow consumer
    never counts. ``cost_guard`` is checked before anything is sent (estimate over ``system``
    and the messages' texts; ``max_tokens`` as the requested output).

    Cancellation: the HTTP response is held in ``async with``; cancelling the pipeline, also
    while the producer is parked in ``emit`` on a full channel, closes the upstream
    connection at once. The API key is masked in every error message.

    One ``stream`` call at a time per instance (it keeps per-stream state such as
    ``attempts``); build one producer per request. The client may be shared by many producers
    running concurrently.
    """

    provider = "anthropic"
    errors: ClassVar[ErrorMap] = {**TRANSPORT_ERRORS, **ANTHROPIC_ERRORS}

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        system: str | None = None,
        temperature: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        first_token_timeout: float | None = DEFAULT_FIRST_TOKEN_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        cost_guard: CostGuard | None = None,
    ) -> None:
        if not model:
            raise ConfigError("model: a model name is required")
        if not messages:
            raise ConfigError("messages: at least one message is required")
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        if extra is not None and "stream" in extra:
            raise ConfigError("extra: 'stream' is set by the producer and cannot be overridden")
        super().__init__(
            retry=retry,
            first_token_timeout=first_token_timeout,
            stall_timeout=stall_timeout,
            cost_guard=cost_guard,
            secrets=[client.api_key, client.auth_token],
        )
        self.client = _without_sdk_retries(client)
        self.model = model
        self.messages = [dict(m) for m in messages]
        self.max_tokens = max_tokens
        self.system = system
        self.temperature = temperature
        self.tools = [dict(t) for t in tools] if tools is not None else None
        self.extra = dict(extra) if extra is not None else {}

    def __repr__(self) -> str:
        return f"<AnthropicProducer model={self.model!r} messages={len(self.messages)}>"

    def _request(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The SDK's keyword arguments, and what goes in ``extra_body``: anthropic 2.x has
        dropped ``temperature`` (and ``top_p``/``top_k``) from ``create``'s signature, so
        everything but the core fields is merged into the JSON body as is."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
        }
        if self.system is not None:
            kwargs["system"] = self.system
        if self.tools is not None:
            kwargs["tools"] = self.tools
        extra_body = dict(self.extra)
        if self.temperature is not None:
            extra_body.setdefault("temperature", self.temperature)
        return kwargs, extra_body

    def _open(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open_stream()

    @asynccontextmanager
    async def _open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        create: Any = self.client.messages.with_streaming_response.create
        kwargs, extra_body = self._request()
        timeout = self._sdk_timeout(self.client.timeout)
        if timeout is not None:
            kwargs["timeout"] = timeout
        async with AsyncExitStack() as stack:
            # (The base loop's first-token deadline covers waiting for the response head too.)
            response = await stack.enter_async_context(
                create(**kwargs, stream=True, extra_body=extra_body or None)
            )
            # aclosing: the body iterator is closed here, in this task, before the response
            # (never later by the garbage collector, which trio would report).
            yield await stack.enter_async_context(aclosing(response.iter_bytes()))

    def _parser(self) -> StreamParser:
        return AnthropicParser(self._secrets)

    def _prompt_texts(self) -> Sequence[str]:
        texts = [self.system] if self.system else []
        for message in self.messages:
            texts.extend(_block_text(message.get("content")))
        return texts

    def _max_tokens(self) -> int | None:
        return self.max_tokens
