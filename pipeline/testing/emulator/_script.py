"""What the emulator answers: :class:`Reply`, :class:`ToolCall`, the faults, :class:`Script`,
and :class:`SpeechReply` for the speech endpoint.

Everything here is frozen attrs data, provider-neutral. The wire formats in ``_formats`` turn a
:class:`Reply` into the byte frames of one provider; the server in ``_server`` paces them and
injects the fault.

Counting for the ``*_after(n)`` faults: ``n`` is the number of *deltas* (text tokens and
tool-argument pieces) the client has been sent when the fault fires. ``0`` fires right after
the stream's preamble (``message_start`` / ``response.created`` / the role chunk); an ``n``
larger than the reply fires after the last delta, before the closing events. So
``error_event_after(2)`` on a reply ``("Hel", "lo", " world")`` lets every SDK see exactly
``"Hello"`` before the error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import attrs

if TYPE_CHECKING:
    from ._server import RequestRecord

__all__ = [
    "ErrorEventAfter",
    "Fault",
    "Finish",
    "MalformedAfter",
    "Reply",
    "ReplySource",
    "ResetAfter",
    "Script",
    "SpeechAudio",
    "SpeechReply",
    "SplitUtf8",
    "StallAfter",
    "StatusFault",
    "ToolCall",
    "error_event_after",
    "malformed_after",
    "parse_fault",
    "reset_after",
    "split_tokens",
    "split_utf8",
    "stall_after",
    "status",
]

_TOKEN_RE: Final = re.compile(r"\s*\S+")
ARGUMENT_PIECE_CHARS: Final = 8
"""Tool arguments given as one string or mapping are streamed in pieces of this many characters."""


def split_tokens(text: str) -> tuple[str, ...]:
    """Split ``text`` into word-like tokens with leading whitespace: ``"a b"`` → ``"a", " b"``.

    ``"".join(split_tokens(text)) == text`` always holds; trailing whitespace joins the last token.
    """
    tokens = _TOKEN_RE.findall(text)
    rest = text[sum(map(len, tokens)) :]
    if rest:
        if tokens:
            tokens[-1] += rest
        else:
            tokens.append(rest)
    return tuple(tokens)


def _to_tokens(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return split_tokens(value)
    return tuple(value)


def _to_pieces(value: str | Mapping[str, Any] | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        if not value:
            return ("",)
        step = ARGUMENT_PIECE_CHARS
        return tuple(value[i : i + step] for i in range(0, len(value), step))
    return tuple(value)


def _to_tool_calls(value: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(value)


def _to_replies(value: Iterable[Reply]) -> tuple[Reply, ...]:
    return tuple(value)


def _check_after(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class ToolCall:
    """One function/tool call in a reply.

    ``arguments`` is the JSON text of the arguments, streamed piece by piece. Give a mapping
    (serialised with ``json.dumps``), a string (cut into pieces of
    :data:`ARGUMENT_PIECE_CHARS`), or an explicit sequence of pieces. ``id`` defaults to a
    provider-looking id derived from the call's position (``call_emu_0``, ``toolu_emu_0``).
    """

    name: str
    arguments: tuple[str, ...] = attrs.field(default=("{}",), converter=_to_pieces)
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        """The complete arguments text, as the SDK accumulates it."""
        return "".join(self.arguments)


# ---------------------------------------------------------------------------------------------
# Faults


@attrs.frozen
class ErrorEventAfter:
    """An SSE error event in the provider's own format after ``after`` deltas; then the body ends.

    Anthropic: ``event: error`` with ``{"type": "error", "error": {"type": error_type, ...}}``.
    OpenAI chat: ``data: {"error": {...}}``. OpenAI Responses: ``response.failed`` whose
    ``response.error.code`` is ``error_type``. ``error_type=None`` picks the provider's usual
    word (``overloaded_error``, ``server_error``).
    """

    after: int = attrs.field(validator=_check_after)
    message: str = "Overloaded"
    error_type: str | None = None


@attrs.frozen
class ResetAfter:
    """Abort the TCP connection after ``after`` deltas (``SO_LINGER`` 0: the peer gets an RST)."""

    after: int = attrs.field(validator=_check_after)


@attrs.frozen
class StallAfter:
    """Send nothing for ``seconds`` (``trio.sleep``, so MockClock applies) after ``after`` deltas.

    The stream then continues normally. ``math.inf`` stalls until the client gives up.
    """

    after: int = attrs.field(validator=_check_after)
    seconds: float = math.inf


@attrs.frozen
class StatusFault:
    """Answer with HTTP ``code`` and the provider's JSON error body before any stream byte.

    ``retry_after`` (seconds, may be fractional) is sent as ``Retry-After``. ``times`` limits
    the failure to the first ``times`` requests that were given *this same Reply* by this
    emulator; later ones stream the reply normally (``None``: fail every time).
    """

    code: int
    retry_after: float | None = None
    times: int | None = None
    message: str | None = None


@attrs.frozen
class MalformedAfter:
    """After ``after`` deltas send an event whose ``data:`` is not valid JSON; then end the body.

    ``payload`` replaces the whole garbage frame (raw bytes, sent as is).
    """

    after: int = attrs.field(validator=_check_after)
    payload: bytes | None = None


@attrs.frozen
class SplitUtf8:
    """Cut every multi-byte UTF-8 character in two, with ``pause`` seconds between the writes.

    The halves go out in separate socket writes (separate HTTP chunks), so the client receives
    them in separate reads. The stream is otherwise normal.
    """

    pause: float = 0.002


Fault: TypeAlias = (
    ErrorEventAfter | ResetAfter | StallAfter | StatusFault | MalformedAfter | SplitUtf8 | None
)


def error_event_after(
    n: int, message: str = "Overloaded", *, error_type: str | None = None
) -> ErrorEventAfter:
    """Shorthand for :class:`ErrorEventAfter`."""
    return ErrorEventAfter(n, message, error_type)


def reset_after(n: int) -> ResetAfter:
    """Shorthand for :class:`ResetAfter`."""
    return ResetAfter(n)


def stall_after(n: int, seconds: float = math.inf) -> StallAfter:
    """Shorthand for :class:`StallAfter`."""
    return StallAfter(n, seconds)


def status(
    code: int,
    *,
    retry_after: float | None = None,
    times: int | None = None,
    message: str | None = None,
) -> StatusFault:
    """Shorthand for :class:`StatusFault`."""
    return StatusFault(code, retry_after, times, message)


def malformed_after(n: int, payload: bytes | None = None) -> MalformedAfter:
    """Shorthand for :class:`MalformedAfter`."""
    return MalformedAfter(n, payload)


def split_utf8(pause: float = 0.002) -> SplitUtf8:
    """Shorthand for :class:`SplitUtf8`."""
    return SplitUtf8(pause)


# ---------------------------------------------------------------------------------------------
# Replies

Finish: TypeAlias = Literal["stop", "length", "tool_calls"]
"""Why the reply ends, provider-neutral. Mapped to ``stop``/``length``/``tool_calls`` (OpenAI
chat), ``end_turn``/``max_tokens``/``tool_use`` (Anthropic), and ``response.completed`` or
``response.incomplete`` (Responses)."""


@attrs.frozen
class Reply:
    """One scripted answer.

    ``tokens`` is a sequence of text deltas, or a string split with :func:`split_tokens`.
    ``output_tokens=None`` reports one output token per delta (text and argument pieces).
    ``finish=None`` means ``"tool_calls"`` if there are tool calls, else ``"stop"``.
    ``tokens_per_second`` paces the deltas with ``trio.sleep(1 / rate)`` before each one
    (``0``: as fast as the socket takes them). ``model=None`` echoes the request's ``model``.
    """

    tokens: tuple[str, ...] = attrs.field(default=(), converter=_to_tokens)
    tool_calls: tuple[ToolCall, ...] = attrs.field(default=(), converter=_to_tool_calls)
    input_tokens: int = 10
    output_tokens: int | None = None
    finish: Finish | None = None
    tokens_per_second: float = 0.0
    fault: Fault = None
    model: str | None = None

    @property
    def text(self) -> str:
        """The complete text, as the SDK accumulates it."""
        return "".join(self.tokens)

    @property
    def delta_count(self) -> int:
        """Number of deltas (text tokens plus tool-argument pieces) the reply streams."""
        return len(self.tokens) + sum(len(call.arguments) for call in self.tool_calls)

    @property
    def completion_tokens(self) -> int:
        """``output_tokens``, or :attr:`delta_count` when that is ``None``."""
        return self.delta_count if self.output_tokens is None else self.output_tokens

    @property
    def finish_reason(self) -> Finish:
        """``finish``, or the default it stands for."""
        if self.finish is not None:
            return self.finish
        return "tool_calls" if self.tool_calls else "stop"


ReplySource: TypeAlias = (
    "Reply | Script | Sequence[Reply] | Callable[[RequestRecord], Reply | Awaitable[Reply]]"
)
"""What an emulator is given: one reply for every request; a :class:`Script` or a sequence
(request *i* gets reply *i*); or a callable called with the request's record (its ``path`` and
``body``), sync or async."""


@attrs.frozen
class Script:
    """A reply per request, in order. Past the end, the last reply repeats (or, with
    ``cycle=True``, the script starts over)."""

    replies: tuple[Reply, ...] = attrs.field(converter=_to_replies)
    cycle: bool = False

    @replies.validator
    def _check_replies(self, _attribute: attrs.Attribute[tuple[Reply, ...]], value: object) -> None:
        if not value:
            raise ValueError("a Script needs at least one Reply")

    def reply_for(self, index: int) -> Reply:
        """The reply for the ``index``-th request (0-based) this emulator has received."""
        if self.cycle:
            return self.replies[index % len(self.replies)]
        return self.replies[min(index, len(self.replies) - 1)]


def parse_fault(spec: str) -> Fault:
    """Parse a fault from a command-line word, for ``llmpipe emulate --fault SPEC``.

    ``none`` · ``error_event_after:N`` · ``reset_after:N`` · ``stall_after:N[:SECONDS]`` ·
    ``status:CODE[:RETRY_AFTER[:TIMES]]`` · ``malformed_after:N`` · ``split_utf8[:PAUSE]``.
    Raises ``ValueError`` naming the problem.
    """
    name, *args = spec.strip().split(":")
    try:
        if name in ("", "none"):
            fault: Fault = None
        elif name == "error_event_after" and len(args) == 1:
            fault = error_event_after(int(args[0]))
        elif name == "reset_after" and len(args) == 1:
            fault = reset_after(int(args[0]))
        elif name == "stall_after" and len(args) in (1, 2):
            fault = stall_after(int(args[0]), float(args[1]) if len(args) == 2 else math.inf)
        elif name == "status" and 1 <= len(args) <= 3:
            retry = float(args[1]) if len(args) >= 2 and args[1] else None
            times = int(args[2]) if len(args) == 3 else None
            fault = status(int(args[0]), retry_after=retry, times=times)
        elif name == "malformed_after" and len(args) == 1:
            fault = malformed_after(int(args[0]))
        elif name == "split_utf8" and len(args) <= 1:
            fault = split_utf8(float(args[0])) if args else split_utf8()
        else:
            raise ValueError(f"unknown fault {spec!r}")
    except ValueError as exc:
        raise ValueError(f"bad fault spec {spec!r}: {exc}") from None
    return fault


# ---------------------------------------------------------------------------------------------
# Speech

SpeechAudio: TypeAlias = Callable[[str], "bytes | Awaitable[bytes]"]
"""Makes the audio (s16le mono PCM) for a speech request's ``input`` text, sync or async."""


def _check_speech_fault(
    _instance: object, _attribute: attrs.Attribute[Fault], value: Fault
) -> None:
    if not isinstance(value, StatusFault | ResetAfter | StallAfter | None):
        raise TypeError(f"{type(value).__name__} is not a speech fault (status, reset, stall)")


def _check_positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


@attrs.frozen
class SpeechReply:
    """What ``POST /v1/audio/speech`` answers: the request's ``input`` as raw PCM (s16le mono,
    OpenAI's ``response_format: "pcm"``), streamed in HTTP chunks of ``write_bytes`` bytes (one
    socket write each; an odd size cuts samples in two across writes).

    ``audio`` makes the PCM from the text (a test may synthesise it with a real engine); by
    default it is a tone of ``tone_hz`` lasting ``seconds_per_char`` per character of the text
    at ``sample_rate``. ``realtime_factor`` paces the writes: before each one the server sleeps
    ``realtime_factor`` times the write's duration at ``sample_rate`` (0: as fast as the socket
    takes them; 1: real time). ``fault`` is a :class:`StatusFault` (before any audio),
    :class:`ResetAfter` or :class:`StallAfter`, whose ``after`` counts audio writes (a larger
    ``after`` fires after the last one); the SSE faults are refused (``TypeError``). An
    exception raised by ``audio`` is not caught: it stops the emulator, like a reply
    callable's.
    """

    audio: SpeechAudio | None = None
    sample_rate: int = attrs.field(default=24000, validator=_check_positive)
    seconds_per_char: float = 0.06
    tone_hz: float = 440.0
    write_bytes: int = attrs.field(default=4800, validator=_check_positive)
    realtime_factor: float = 0.0
    fault: Fault = attrs.field(default=None, validator=_check_speech_fault)
