"""The typed, immutable event model every producer emits and every sink reads.

Every event has ``seq``, its per-stream sequence number. The runner stamps it as events leave
the stage chain (stages may merge or split text, so numbers are assigned after them): it starts
at 1, never repeats and never goes backwards, which is what resume (``Last-Event-ID``) and
exactly-once delivery rest on. An event that was never stamped has ``seq == 0``. When a channel
merges consecutive text deltas (policy ``coalesce``) the merged delta carries the ``seq`` of the
last delta it contains, so numbers seen by one consumer still only go up.

A stream ends with exactly one terminal event, :class:`Done` or :class:`Error`; the runner adds
a ``Done`` if a producer returns without one and delivers nothing after it.

What the plumbing may do with an event is a property of its class, not a list kept elsewhere:
each class states its traits (``terminal``, ``droppable``, ``mergeable``, ``text_field``; see
:class:`_Traits`) and channels, stores and sinks ask the event. A new event class must state all
of them.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring
from typing import Any, ClassVar, Final, Literal, TypeAlias

import attrs

__all__ = [
    "Done",
    "Dropped",
    "Error",
    "Event",
    "Heartbeat",
    "Metadata",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "Usage",
    "event_from_dict",
    "event_from_json",
    "json_text",
    "event_nbytes",
    "event_to_dict",
    "event_to_json",
    "is_terminal",
]

#: The traits every event class must state (see :class:`_Traits`).
_TRAITS: Final = ("terminal", "droppable", "mergeable", "text_field")


class _Traits:
    """What the plumbing may do with an event, stated by each event class (never inherited).

    ``terminal``
        The event ends its stream (:class:`Done`, :class:`Error`); nothing follows it.
    ``droppable``
        A channel with policy ``drop_oldest`` may discard it to make room (it is reported in a
        :class:`Dropped` notice).
    ``mergeable``
        Consecutive events of the class may be delivered as one: the text of all of them joined,
        with the last one's ``seq`` (policy ``coalesce``, the spill file's read-back). Such a
        class has no fields but its text and ``seq``, so nothing is lost by merging.
    ``text_field``
        The name of the field whose text the event weighs (what :func:`event_nbytes` counts
        against a channel's byte budget), or ``None`` for an event without text.

    A class that does not state one of them in its own body is an error at class creation, so a
    new event class cannot silently get a behaviour it was not meant to have.
    """

    __slots__ = ()

    terminal: ClassVar[bool]
    droppable: ClassVar[bool]
    mergeable: ClassVar[bool]
    text_field: ClassVar[str | None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [name for name in _TRAITS if name not in cls.__dict__]
        if missing:
            raise TypeError(f"event class {cls.__name__} must state its traits: {missing}")


@attrs.frozen
class TextDelta(_Traits):
    """A piece of the answer's text."""

    terminal = False
    droppable = True
    mergeable = True
    text_field = "text"

    text: str
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["text"] = attrs.field(default="text", init=False, repr=False)


@attrs.frozen
class ToolCallStart(_Traits):
    """The model started a tool call. ``index`` identifies it among the response's calls."""

    terminal = False
    droppable = False
    mergeable = False
    text_field = None

    index: int
    id: str
    name: str
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["tool_call_start"] = attrs.field(
        default="tool_call_start", init=False, repr=False
    )


@attrs.frozen
class ToolCallDelta(_Traits):
    """A piece of a tool call's JSON arguments, as the model wrote it."""

    terminal = False
    droppable = True
    mergeable = False
    text_field = "arguments_delta"

    index: int
    arguments_delta: str
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["tool_call_delta"] = attrs.field(
        default="tool_call_delta", init=False, repr=False
    )


@attrs.frozen
class ToolCallEnd(_Traits):
    """A tool call is complete; ``arguments`` is the accumulated JSON text."""

    terminal = False
    droppable = False
    mergeable = False
    text_field = "arguments"

    index: int
    id: str
    name: str
    arguments: str
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["tool_call_end"] = attrs.field(default="tool_call_end", init=False, repr=False)


@attrs.frozen
class Usage(_Traits):
    """Token counts reported by the provider."""

    terminal = False
    droppable = False
    mergeable = False
    text_field = None

    input_tokens: int
    output_tokens: int
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["usage"] = attrs.field(default="usage", init=False, repr=False)


@attrs.frozen
class Metadata(_Traits):
    """Who answered: provider, model and response id (as far as the provider tells)."""

    terminal = False
    droppable = False
    mergeable = False
    text_field = None

    provider: str = ""
    model: str = ""
    response_id: str = ""
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["metadata"] = attrs.field(default="metadata", init=False, repr=False)


@attrs.frozen
class Done(_Traits):
    """The stream ended normally. ``stop_reason`` is the provider's word ("stop", "end_turn",
    "tool_calls", "length", ...) or ``None`` when the producer did not say."""

    terminal = True
    droppable = False
    mergeable = False
    text_field = None

    stop_reason: str | None = None
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["done"] = attrs.field(default="done", init=False, repr=False)


@attrs.frozen
class Error(_Traits):
    """The stream failed after it started; this is its last event.

    ``kind`` is a short word (``"connection"``, ``"timeout"``, ``"status"``, ``"validation"``,
    ``"overflow"``, ...), ``retryable`` tells whether sending the same request again may work.
    The output delivered before the error is kept (never retracted): ``partial_chars`` counts its
    characters and ``partial_text`` holds it when the stream kept its text (for example with an
    :class:`pipeline.Accumulate` stage), else ``None``.
    """

    terminal = True
    droppable = False
    mergeable = False
    text_field = "partial_text"

    kind: str
    message: str
    retryable: bool = False
    partial_chars: int = 0
    partial_text: str | None = None
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["error"] = attrs.field(default="error", init=False, repr=False)


@attrs.frozen
class Heartbeat(_Traits):
    """Nothing happened for a while; lets idle connections and watchdogs know we are alive."""

    terminal = False
    droppable = True
    mergeable = False
    text_field = None

    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["heartbeat"] = attrs.field(default="heartbeat", init=False, repr=False)


@attrs.frozen
class Dropped(_Traits):
    """A channel with a dropping policy discarded events; tells this consumer what it missed.

    ``first_seq``/``last_seq`` bound the dropped events' numbers (0 when they were unstamped),
    ``items`` and ``text_bytes`` count them, and ``text_chars`` counts dropped characters.
    """

    terminal = False
    droppable = False
    mergeable = False
    text_field = None

    items: int
    text_bytes: int
    text_chars: int
    first_seq: int
    last_seq: int
    seq: int = attrs.field(default=0, kw_only=True)
    type: Literal["dropped"] = attrs.field(default="dropped", init=False, repr=False)


Event: TypeAlias = (
    TextDelta
    | ToolCallStart
    | ToolCallDelta
    | ToolCallEnd
    | Usage
    | Metadata
    | Done
    | Error
    | Heartbeat
    | Dropped
)

_TYPES: Final[dict[str, type[Any]]] = {
    str(attrs.fields(cls).type.default): cls
    for cls in (
        TextDelta,
        ToolCallStart,
        ToolCallDelta,
        ToolCallEnd,
        Usage,
        Metadata,
        Done,
        Error,
        Heartbeat,
        Dropped,
    )
}
_FIELDS: Final[dict[type[Any], tuple[str, ...]]] = {
    cls: tuple(a.name for a in attrs.fields(cls) if a.name != "type") for cls in _TYPES.values()
}


def is_terminal(event: Event) -> bool:
    """True for the events that end a stream (:class:`Done` and :class:`Error`): their class's
    ``terminal`` trait."""
    return event.terminal


def event_nbytes(event: Event) -> int:
    """Bytes of text an event holds, as counted against a channel's byte budget.

    Text is counted in UTF-8 bytes; events without text count 0 bytes (they still count one
    item). Which text an event holds is its class's ``text_field`` trait: ``TextDelta.text``,
    ``ToolCallDelta.arguments_delta``, ``ToolCallEnd.arguments``, ``Error.partial_text``.
    """
    name = event.text_field
    if name is None:
        return 0
    text: str | None = getattr(event, name)
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict: ``{"type": ..., "seq": ..., <fields>}``."""
    d: dict[str, Any] = {"type": event.type}
    for name in _FIELDS[type(event)]:
        d[name] = getattr(event, name)
    return d


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of :func:`event_to_dict`. Raises ``ValueError`` naming the problem."""
    try:
        cls = _TYPES[data["type"]]
    except KeyError:
        raise ValueError(f"unknown or missing event type: {data.get('type')!r}") from None
    kwargs = {k: v for k, v in data.items() if k != "type"}
    unknown = set(kwargs) - set(_FIELDS[cls])
    if unknown:
        raise ValueError(f"unknown field(s) for {data['type']!r} event: {sorted(unknown)}")
    try:
        event: Event = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad {data['type']!r} event: {exc}") from None
    return event


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def json_text(obj: object) -> str:
    """``obj`` as one line of compact JSON (no newline inside), non-ASCII text as is, and
    always encodable as UTF-8: a surrogate code point (a lone ``\\ud800`` that came from
    a JSON parser, or half of a pair never joined) cannot be, so it is written as the escape
    ``\\udXXX``. That is lossless: a JSON parser (Python's, a browser's ``JSON.parse``)
    gives back the same string (a high and a low surrogate in a row, which only Python keeps
    apart, come back as the one character they encode). Costs one scan when there is none."""
    return _utf8_safe(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def _utf8_safe(text: str) -> str:
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def event_to_json(event: Event) -> str:
    """One line of compact JSON (no newline inside; see :func:`json_text` for surrogates)."""
    if type(event) is TextDelta:
        # The stream's hot path (one per token): the same text as the generic path below,
        # without building a dict and a JSON encoder (``tests/test_events.py`` compares them).
        text = f'{{"type":"text","text":{encode_basestring(event.text)},"seq":{event.seq:d}}}'
        return text if text.isascii() else _utf8_safe(text)
    return json_text(event_to_dict(event))


def event_from_json(line: str | bytes) -> Event:
    """Parse what :func:`event_to_json` wrote."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("an event must be a JSON object")
    return event_from_dict(data)
