"""The event model: every class states its traits, and the wire form does not include them."""

from __future__ import annotations

import typing

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import (
    Done,
    Dropped,
    Error,
    Event,
    Heartbeat,
    Metadata,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    event_from_json,
    event_nbytes,
    event_to_dict,
    event_to_json,
    is_terminal,
    json_text,
)

TRAITS = ("terminal", "droppable", "mergeable", "text_field")
EVENT_CLASSES: tuple[type[Event], ...] = typing.get_args(Event)

# (event, its JSON line as before the traits existed, event_nbytes, is_terminal)
GOLDEN: list[tuple[Event, str, int, bool]] = [
    (TextDelta("é", seq=1), '{"type":"text","text":"é","seq":1}', 2, False),
    (
        ToolCallStart(0, "c1", "f", seq=2),
        '{"type":"tool_call_start","index":0,"id":"c1","name":"f","seq":2}',
        0,
        False,
    ),
    (
        ToolCallDelta(0, '{"a"', seq=3),
        '{"type":"tool_call_delta","index":0,"arguments_delta":"{\\"a\\"","seq":3}',
        4,
        False,
    ),
    (
        ToolCallEnd(0, "c1", "f", '{"a":1}', seq=4),
        '{"type":"tool_call_end","index":0,"id":"c1","name":"f","arguments":"{\\"a\\":1}","seq":4}',
        7,
        False,
    ),
    (Usage(3, 4, seq=5), '{"type":"usage","input_tokens":3,"output_tokens":4,"seq":5}', 0, False),
    (
        Metadata("openai", "m", "r", seq=6),
        '{"type":"metadata","provider":"openai","model":"m","response_id":"r","seq":6}',
        0,
        False,
    ),
    (Done("stop", seq=7), '{"type":"done","stop_reason":"stop","seq":7}', 0, True),
    (
        Error("timeout", "slow", True, 2, "hé", seq=8),
        '{"type":"error","kind":"timeout","message":"slow","retryable":true,"partial_chars":2,'
        '"partial_text":"hé","seq":8}',
        3,
        True,
    ),
    (Error("timeout", "slow"), "", 0, True),
    (Heartbeat(seq=9), '{"type":"heartbeat","seq":9}', 0, False),
    (
        Dropped(1, 2, 3, 4, 5, seq=10),
        '{"type":"dropped","items":1,"text_bytes":2,"text_chars":3,"first_seq":4,"last_seq":5,'
        '"seq":10}',
        0,
        False,
    ),
]


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_every_event_class_states_every_trait(cls: type[Event]) -> None:
    for name in TRAITS:
        assert name in cls.__dict__, f"{cls.__name__} does not state {name!r}"
    assert isinstance(cls.terminal, bool)
    assert isinstance(cls.droppable, bool)
    assert isinstance(cls.mergeable, bool)
    field_names = [a.name for a in attrs.fields(cls)]
    assert cls.text_field is None or cls.text_field in field_names
    assert not set(TRAITS) & set(field_names)  # traits are class variables, never fields


@pytest.mark.parametrize("cls", [c for c in EVENT_CLASSES if c.mergeable], ids=lambda c: c.__name__)
def test_a_mergeable_event_is_only_its_text(cls: type[Event]) -> None:
    # Merging keeps the text and the last seq: a mergeable class must have nothing else.
    assert {a.name for a in attrs.fields(cls)} == {cls.text_field, "seq", "type"}


def test_a_class_that_leaves_out_a_trait_is_refused() -> None:
    base = TextDelta.__mro__[1]
    with pytest.raises(TypeError, match=r"Fresh must state its traits: \['mergeable'"):

        @attrs.frozen
        class Fresh(base):  # type: ignore[misc,valid-type]
            terminal = False
            droppable = False
            text_field = None
            seq: int = 0

    with pytest.raises(TypeError, match="Louder must state its traits"):
        # A subclass does not inherit its parent's traits.
        @attrs.frozen
        class Louder(TextDelta):
            pass


def test_traits_as_stated() -> None:
    assert {c for c in EVENT_CLASSES if c.terminal} == {Done, Error}
    assert {c for c in EVENT_CLASSES if c.droppable} == {TextDelta, ToolCallDelta, Heartbeat}
    assert {c for c in EVENT_CLASSES if c.mergeable} == {TextDelta}


@pytest.mark.parametrize(("event", "line", "nbytes", "terminal"), GOLDEN)
def test_wire_form_weight_and_end(event: Event, line: str, nbytes: int, terminal: bool) -> None:
    if line:
        assert event_to_json(event) == line
        assert event_from_json(line) == event
    assert event_nbytes(event) == nbytes
    assert is_terminal(event) is terminal


@given(st.text(st.characters(exclude_categories=())), st.integers(min_value=0, max_value=2**63))
def test_a_text_delta_is_encoded_as_the_generic_path_would(text: str, seq: int) -> None:
    """``event_to_json`` writes a TextDelta (one per token) without a dict or an encoder; the
    text must be what the generic path writes, surrogates and control characters included."""
    event = TextDelta(text, seq=seq)
    assert event_to_json(event) == json_text(event_to_dict(event))
