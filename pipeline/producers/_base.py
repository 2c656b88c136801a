"""What every HTTP/SSE producer shares: retries, timeouts, error translation, a cost guard.

A provider adapter supplies two things:

* ``_open(attempt)``: an async context manager that sends the request through the provider's
  SDK and yields an async iterator of the raw response body bytes (the SDK's
  ``with_streaming_response`` path: the SDK owns the request, auth and status errors; we decode
  the bytes with our own SSE decoder and one JSON parse per event, which is far cheaper than the
  SDK's per-chunk objects);
* ``_parser()``: a fresh :class:`StreamParser` per attempt, mapping the provider's SSE events to
  llmpipe events in linear time.

The loop here then guarantees, for every provider:

* **Retries before the first token**: connection errors, timeouts, 429 and 5xx (and error events
  that arrive before any content) are retried with exponential backoff and full jitter, waiting
  at least what ``retry-after``/``retry-after-ms`` asks. Events that are not content
  (:class:`~pipeline.Metadata`) are held back until the first content event, so a retry never
  repeats anything. After the first content event a failure is raised as a
  :class:`~pipeline.ProducerError` (the runner turns it into an ``Error`` event that keeps the
  partial output): no silent restart that would duplicate text.
* **Timeouts**: ``first_token_timeout`` from sending the request to the first content event,
  ``stall_timeout`` between two reads of the body afterwards. Time spent waiting in ``emit``
  (our own consumers' backpressure) never counts as a stall.
* **Cancellation**: the SDK response is held with ``async with``; cancelling the pipeline
  (also while parked in ``emit`` on a full channel) closes the upstream HTTP request at once.
* **Secrets**: error messages are passed through :func:`redact` with the client's API key.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Final, TypeAlias

import attrs
import httpx
import httpx2
import msgspec
import trio

from .. import (
    Backoff,
    ConfigError,
    Done,
    Emit,
    Error,
    Event,
    Metadata,
    ProducerConnectionError,
    ProducerError,
    ProducerProtocolError,
    ProducerStatusError,
    ProducerTimeout,
    Usage,
    is_terminal,
    lone_exception_unwrapped,
)
from ..wire import SSEDecoder, SSEEvent, retry_after_seconds

__all__ = [
    "DEFAULT_FIRST_TOKEN_TIMEOUT",
    "DEFAULT_STALL_TIMEOUT",
    "DRAIN_TIMEOUT",
    "TRANSPORT_ERRORS",
    "CostGuard",
    "CostLimitError",
    "ErrorMap",
    "SNIPPET_CHARS",
    "RetryPolicy",
    "SSEProducer",
    "StreamParser",
    "estimate_tokens",
    "parse_json",
    "redact",
    "drop_stream",
    "translate_error",
]


DEFAULT_FIRST_TOKEN_TIMEOUT: Final = 60.0
DEFAULT_STALL_TIMEOUT: Final = 30.0
DRAIN_TIMEOUT: Final = 0.1
"""After the provider's end marker (:attr:`StreamParser.ended`) the rest of the body is read
for at most this long, so the HTTP/1.1 connection can be reused (the SDKs do the same)."""
SNIPPET_CHARS: Final = 120
"""At most this many characters of a provider's data are quoted in an error message (after
redaction: :func:`redact` with ``limit``)."""


def drop_stream(response: httpx.Response) -> None:
    """Once ``response`` (streamed, from an ``httpx`` client) has closed, drop its byte stream.

    ``httpx`` (not ``httpx2``) binds a streamed ``Response`` and its ``BoundAsyncStream`` to
    each other: a reference cycle, and behind it the whole upstream connection (httpcore's
    connection, its h11 state, locks, the socket: about 60 objects per stream). Only the
    cyclic garbage collector frees a cycle, so in a serving process every stream left that much
    for the next young collection, about half of what each collected (and each one pauses every
    stream, ``benchmarks/bench_cancel.py --trace``). Dropped here, all of it is freed by
    reference counting when the producer lets go of the response. A response that did not
    close (its close failed) keeps its stream, so the connection is not released unclosed."""
    if isinstance(response, httpx.Response) and response.is_closed:
        response.stream = httpx.ByteStream(b"")


class CostLimitError(ConfigError):
    """The request would exceed a configured token limit; nothing was sent."""

    kind = "cost_limit"


@attrs.frozen
class RetryPolicy:
    """Retries of failures before the first token.

    At most ``max_attempts`` requests in all (``1`` disables retries). After failed attempt
    ``n`` the producer waits ``backoff.delay(n - 1, retry_after)``: by default 0.5 s doubling
    up to 20 s with full jitter, and never less than the provider's ``retry-after`` (which
    this default does not cap).
    """

    max_attempts: int = 4
    backoff: Backoff = attrs.field(
        factory=lambda: Backoff(initial=0.5, maximum=20.0, max_hint=math.inf)
    )

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: about 4 characters per token for English, never below the
    number of words. Good enough for a guard; not for billing."""
    return max(math.ceil(len(text) / 4), len(text.split()))


@attrs.frozen
class CostGuard:
    """Limits checked before a request is sent.

    ``max_input_tokens`` bounds the *estimated* prompt size (:func:`estimate_tokens` over every
    message's text, plus 4 per message); ``max_output_tokens`` bounds what the request may ask
    the model to generate. A request over a limit raises :class:`CostLimitError` naming it.
    """

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    def check(self, prompt_texts: Sequence[str], requested_output_tokens: int | None) -> int:
        estimate = sum(estimate_tokens(t) + 4 for t in prompt_texts)
        if self.max_input_tokens is not None and estimate > self.max_input_tokens:
            raise CostLimitError(
                f"max_input_tokens: the prompt is about {estimate} tokens, over the limit of "
                f"{self.max_input_tokens}; nothing was sent"
            )
        if self.max_output_tokens is not None:
            if requested_output_tokens is None:
                raise CostLimitError(
                    "max_output_tokens: set max_tokens on the request so the limit of "
                    f"{self.max_output_tokens} output tokens can be enforced"
                )
            if requested_output_tokens > self.max_output_tokens:
                raise CostLimitError(
                    f"max_output_tokens: the request asks for up to {requested_output_tokens} "
                    f"tokens, over the limit of {self.max_output_tokens}; nothing was sent"
                )
        return estimate


_DECODE: Final = msgspec.json.Decoder().decode


def parse_json(text: str) -> object:
    """``json.loads(text)``, by a faster parser in the usual case (one event's data per token:
    ``json.loads`` was a tenth of the per-token instructions of ``llmpipe serve``'s stream).

    msgspec's decoder gives ``json.loads``'s value for every document it accepts, integers of
    any size included (``tests/test_producer_errors.py`` compares them); what it rejects
    (malformed text, ``NaN``/``Infinity``, a number beyond a float's range, an escaped lone
    surrogate) goes to ``json.loads``, so the values and the errors are ``json.loads``'s."""
    try:
        return _DECODE(text)
    except msgspec.DecodeError:
        return json.loads(text)


def redact(message: str, secrets: Sequence[str | None], *, limit: int | None = None) -> str:
    """``message`` with every secret (and anything that looks like an API key) masked, then
    cut to ``limit`` characters (with ``…``) when given.

    Always cut through here, never before: a secret cut in two before redaction no longer
    matches, and its first part would reach the client."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            message = message.replace(secret, "<redacted>")
    message = re.sub(r"\b(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]{10,}", r"\1…<redacted>", message)
    if limit is not None and len(message) > limit:
        message = message[:limit] + "…"
    return message


ErrorMap: TypeAlias = Mapping[type[BaseException], type[ProducerError]]
"""Foreign exception class -> the :class:`ProducerError` class it becomes. The most specific
entry wins (the first class of the exception's MRO that is in the map), so the order of the
entries does not matter."""

TRANSPORT_ERRORS: Final[ErrorMap] = {
    OSError: ProducerConnectionError,
    TimeoutError: ProducerTimeout,
    trio.BrokenResourceError: ProducerConnectionError,
    json.JSONDecodeError: ProducerProtocolError,
    UnicodeDecodeError: ProducerProtocolError,
    # httpx, and its fork httpx2 that openai 3.x and anthropic 2.x are built on. (A response
    # body is read through them directly: their errors reach us without the SDK's wrapping.)
    **{
        foreign: ours
        for hx in (httpx, httpx2)
        for foreign, ours in (
            (hx.TimeoutException, ProducerTimeout),
            (hx.NetworkError, ProducerConnectionError),
            (hx.RemoteProtocolError, ProducerConnectionError),
            (hx.ProtocolError, ProducerProtocolError),
            (hx.UnsupportedProtocol, ProducerProtocolError),
            (hx.DecodingError, ProducerProtocolError),
        )
    },
}
"""The exceptions of the runtime and of the HTTP transport, for every producer. Each SDK adds
its own table (``OPENAI_ERRORS``, ``ANTHROPIC_ERRORS``)."""


def translate_error(
    exc: BaseException,
    secrets: Sequence[str | None] = (),
    errors: ErrorMap = TRANSPORT_ERRORS,
    *,
    context: str = "",
) -> ProducerError:
    """``exc`` as a :class:`ProducerError`, per ``errors`` (see :data:`ErrorMap`); an
    exception it does not map becomes a plain, non-retryable ``ProducerError``.

    The message is ``"{exception class}: {message}"`` with every secret masked, or for a
    :class:`ProducerStatusError` ``"HTTP {status}: {message}"``, after ``context`` (e.g.
    ``"openai speech: "``); a status error takes ``status_code`` from the exception and
    ``retry_after`` from its response's headers (the SDKs' status errors carry both). A
    ``ProducerError`` is returned as is, its message masked. The one
    map from SDK and transport exceptions to llmpipe's: the producers and the speech engines
    use it."""
    if isinstance(exc, ProducerError):
        # Ours, but its message may quote the provider (a parser's error): masked here too.
        message = str(exc)
        masked = redact(message, secrets)
        if masked != message:
            exc.args = (masked, *exc.args[1:])
        return exc
    name = type(exc).__name__
    ours = next((errors[c] for c in type(exc).__mro__ if c in errors), ProducerError)
    if issubclass(ours, ProducerStatusError):
        status: int = getattr(exc, "status_code")  # noqa: B009
        headers = getattr(getattr(exc, "response", None), "headers", None)
        return ours(
            f"{context}HTTP {status}: {redact(str(exc) or name, secrets)}",
            status_code=status,
            retry_after=None if headers is None else retry_after_seconds(headers),
        )
    return ours(f"{context}{name}: {redact(str(exc) or name, secrets)}")


class StreamParser:
    """Maps one attempt's SSE events to llmpipe events. Subclass per provider wire format.

    :meth:`feed` returns the events for one SSE event (raise :class:`ProducerError` for an error
    the provider reported in the stream); :meth:`finish` runs when the body ended and returns
    what is still due (for example ``Done``), raising :class:`ProducerProtocolError` if the
    stream ended before it should have. Keep work per event constant: no re-parsing of the
    accumulated text or tool JSON.
    """

    ended: bool = False
    """Set by :meth:`feed` when the provider's end marker arrived (``[DONE]``,
    ``response.completed``): the loop then reads the rest of the body for at most
    :data:`DRAIN_TIMEOUT` and calls :meth:`finish`, whose ``Done`` is emitted only then. So
    the HTTP/1.1 connection goes back to the pool instead of being closed by the cancellation
    that follows a terminal event, and a server that keeps the body open does not turn a
    finished answer into a stall."""

    def feed(self, sse: SSEEvent) -> Sequence[Event]:
        raise NotImplementedError

    def feed_data(self, data: str) -> Sequence[Event]:
        """:meth:`feed` for a ``message`` event given by its data alone (the usual chunk of a
        provider's stream: :meth:`SSEDecoder.feed_single`). Override it to skip building the
        ``SSEEvent``; its ``id`` is left empty (no provider's parser reads it)."""
        return self.feed(SSEEvent(data))

    def finish(self) -> Sequence[Event]:
        return ()


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read what is left of ``body`` for at most :data:`DRAIN_TIMEOUT` (the answer is
    complete: a late transport error is moot)."""
    with trio.move_on_after(DRAIN_TIMEOUT):
        try:
            async for _ in body:
                pass
        except Exception:
            pass


def _is_content(event: Event) -> bool:
    return not isinstance(event, Metadata | Usage)


class _Reads:
    """The body reads of one attempt, and the watchdog that ends one that takes too long.

    The reading loop sets ``since`` to the time a read starts and to ``inf`` when it returns.
    :meth:`watch` sleeps until the earliest time the read in progress (or any later one) can
    expire, then looks again: before the first content event a read expires at the
    first-token ``deadline``, after it ``stall_timeout`` after it started. It wakes at least
    every ``stall_timeout`` before the first token, so the switch to the (possibly earlier)
    stall deadline is never missed.
    """

    __slots__ = ("deadline", "since", "stall")

    def __init__(self, deadline: float, stall: float | None) -> None:
        self.deadline = deadline
        self.stall = math.inf if stall is None else stall
        self.since = math.inf

    async def watch(self, producer: SSEProducer, scope: trio.CancelScope) -> None:
        while True:
            now = trio.current_time()
            if producer._started:
                if self.stall == math.inf:
                    return
                limit = self.since + self.stall  # inf while delivering
                if now >= limit:
                    scope.cancel()
                    return
                await trio.sleep_until(min(limit, now + self.stall))
            else:
                # (Before the first content event the loop leaves a read only to parse, with
                # no checkpoint: a read is always in progress when this task runs.)
                if now >= self.deadline:
                    scope.cancel()
                    return
                await trio.sleep_until(min(self.deadline, now + self.stall))


class SSEProducer:
    """Base of the SDK producers; see the module docstring. Subclasses set ``provider`` and
    implement :meth:`_open`, :meth:`_parser`, :meth:`_prompt_texts` and :meth:`_max_tokens`."""

    provider: str = "sse"
    errors: ClassVar[ErrorMap] = TRANSPORT_ERRORS
    """How the exceptions of this producer's SDK and transport become ProducerErrors."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        first_token_timeout: float | None = DEFAULT_FIRST_TOKEN_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        cost_guard: CostGuard | None = None,
        secrets: Sequence[str | None] = (),
    ) -> None:
        for name, value in (
            ("first_token_timeout", first_token_timeout),
            ("stall_timeout", stall_timeout),
        ):
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value}")
        self.retry = retry or RetryPolicy()
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self.cost_guard = cost_guard
        self._secrets = list(secrets)
        self.attempts = 0
        self.rng = random.Random()
        self._started = False

    # -- for subclasses -------------------------------------------------------------------

    def _sdk_timeout(self, client_timeout: Any) -> Any | None:
        """The ``timeout`` to give the SDK's request when this producer's requests need other
        timeouts than the client's (``client_timeout``), else None.

        When both the first-token and the stall timeout are set, this loop bounds every read
        itself (the first-token deadline covers the response head and the reads before the
        first content event, the stall watchdog every read after it), so the client's read
        timeout is dropped: a finite one is a deadline set and cleared around every read of
        the body (trio's deadline heap), a cost per token for a backstop that cannot fire
        first. Connect, write and pool timeouts stay the client's. Only an ``httpx``/``httpx2``
        ``Timeout`` is rewritten (a plain number is left alone)."""
        if self.first_token_timeout is None or self.stall_timeout is None:
            return None
        t = client_timeout
        if getattr(t, "read", None) is None or not hasattr(t, "pool"):
            return None
        return type(t)(connect=t.connect, read=None, write=t.write, pool=t.pool)

    def _open(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        raise NotImplementedError

    def _parser(self) -> StreamParser:
        raise NotImplementedError

    def _prompt_texts(self) -> Sequence[str]:
        return ()

    def _max_tokens(self) -> int | None:
        return None

    # -- the loop -------------------------------------------------------------------------

    async def _deliver(self, events: Sequence[Event], held: list[Event], emit: Emit) -> None:
        """Emit ``events``; before the first content event, hold what is not content (metadata,
        usage) in ``held``, and raise a provider's error event as a retryable failure."""
        for ev in events:
            if not self._started:
                if not _is_content(ev):
                    held.append(ev)
                    continue
                if isinstance(ev, Error):
                    # An error the provider reported before any content: retryable path.
                    raise ProducerError(ev.message, retryable=ev.retryable)
                self._started = True
                for h in held:
                    await emit(h)
                held.clear()
            await emit(ev)

    async def stream(self, emit: Emit, /) -> None:
        # The retries and each attempt's read loop are one coroutine frame: every frame in the
        # producer's task is resumed at each checkpoint of a sink's write made in that task
        # (the HTTP server's writes, one per token while the client keeps up).
        if self.cost_guard is not None:
            self.cost_guard.check(self._prompt_texts(), self._max_tokens())
        attempt = 0
        while True:
            attempt += 1
            self.attempts = attempt
            try:
                self._started = False
                held: list[Event] = []  # what came before the first content event
                parser = self._parser()
                decoder = SSEDecoder()
                deadline = (
                    trio.current_time() + self.first_token_timeout
                    if self.first_token_timeout is not None
                    else math.inf
                )

                async with contextlib.AsyncExitStack() as stack:
                    # The first-token deadline also covers waiting for the response head.
                    with trio.move_on_at(deadline) as head_scope:
                        body = await stack.enter_async_context(self._open())
                    if head_scope.cancelled_caught:
                        raise ProducerTimeout(
                            f"{self.provider}: no response within {self.first_token_timeout} s"
                        )
                    iterator = body.__aiter__()
                    # The deadlines are kept by a watchdog task that reads ``reads.since`` (when
                    # the read in progress started, inf while we deliver: our own consumers'
                    # backpressure is never a stall): a read costs two attribute stores, not
                    # two moves of a cancel scope's deadline.
                    reads = _Reads(deadline, self.stall_timeout)
                    now = trio.lowlevel.current_clock().current_time  # trio.current_time
                    with lone_exception_unwrapped(), trio.CancelScope() as scope:
                        async with trio.open_nursery() as nursery:
                            if deadline != math.inf or self.stall_timeout is not None:
                                nursery.start_soon(reads.watch, self, scope)
                            try:
                                while True:
                                    reads.since = now()
                                    try:
                                        chunk = await iterator.__anext__()
                                    except StopAsyncIteration:
                                        break
                                    reads.since = math.inf
                                    single = decoder.feed_single(chunk)
                                    for events in (
                                        (parser.feed_data(single),)
                                        if single is not None
                                        else map(parser.feed, decoder.feed(chunk))
                                    ):
                                        if not events:
                                            continue
                                        if self._started:  # the usual case, inline
                                            for ev in events:
                                                await emit(ev)
                                        else:
                                            await self._deliver(events, held, emit)
                                    if parser.ended:
                                        reads.since = now()
                                        await _drain(iterator)
                                        break
                            finally:
                                nursery.cancel_scope.cancel()
                    if scope.cancelled_caught:
                        if self._started:
                            raise ProducerTimeout(
                                f"{self.provider}: the stream stalled: no data for "
                                f"{self.stall_timeout} s"
                            )
                        raise ProducerTimeout(
                            f"{self.provider}: no first token within {self.first_token_timeout} s"
                        )
                    decoder.close()
                    final = list(parser.finish())
                    if not any(is_terminal(e) for e in final):
                        final.append(Done(None))
                    # Done counts as content: it releases what was held.
                    await self._deliver(final, held, emit)
                return
            except Exception as exc:
                err = translate_error(exc, self._secrets, self.errors)
                if self._started or not err.retryable or attempt >= self.retry.max_attempts:
                    if err is exc:
                        raise
                    raise err from exc
                hint = err.retry_after if isinstance(err, ProducerStatusError) else None
                await trio.sleep(self.retry.backoff.delay(attempt - 1, hint, rng=self.rng))
