"""Transform, Validate, Accumulate and SentenceStage, alone and in a pipeline."""

from __future__ import annotations

import pytest
import trio

from pipeline import (
    Accumulate,
    ConfigError,
    Done,
    Error,
    Pipeline,
    TextDelta,
    Transform,
    Usage,
    Validate,
)
from pipeline.testing import RecordingSink, ScriptedProducer, Step
from pipeline.text import SentenceStage


def test_transform_maps_text_and_drops_empty() -> None:
    stage = Transform(lambda t: t.replace("secret", "******").strip("#"))
    assert stage.feed(TextDelta("a secret"), 0) == (TextDelta("a ******"),)
    assert stage.feed(TextDelta("###"), 0) == ()
    assert stage.feed(Done(), 0) == (Done(),)


def test_validate_window_and_final_check() -> None:
    calls: list[str] = []

    def check(text: str) -> str | None:
        calls.append(text)
        return None

    stage = Validate(check, window=4, final_check=lambda t: None if t.endswith(".") else "cut")
    for piece in ["abc", "def", "gh"]:
        stage.feed(TextDelta(piece), 0)
    assert calls == ["abc", "cdef", "efgh"]
    out = stage.feed(Done("stop"), 0)
    assert isinstance(out[0], Error)
    assert out[0].message == "cut"
    assert out[0].partial_chars == 8
    assert stage.feed(TextDelta("more"), 0) == ()  # nothing after the failure


def test_accumulate_keeps_text_usage_timings_and_budget() -> None:
    acc = Accumulate(max_chars=10)
    acc.feed(TextDelta("hello "), 1.0)
    acc.feed(Usage(3, 2), 1.5)
    acc.feed(TextDelta("you"), 2.0)
    assert acc.text == "hello you"
    assert acc.usage == Usage(3, 2)
    t = acc.timings()
    assert (t.first_text_at, t.last_text_at, t.text_deltas) == (1.0, 2.0, 2)
    out = acc.feed(TextDelta("!!"), 3.0)
    assert isinstance(out[0], Error)
    assert out[0].kind == "budget"


def test_sentence_stage_releases_sentences_and_flushes_on_other_events() -> None:
    stage = SentenceStage(stall_timeout=None)
    out = []
    for piece in ["The price is $29.", "95 today. Mr. Smith ", "agreed. And"]:
        out += stage.feed(TextDelta(piece), 0)
    out += stage.feed(Done(), 0)
    assert [e.text for e in out if isinstance(e, TextDelta)] == [
        "The price is $29.95 today. ",
        "Mr. Smith agreed. ",
        "And",
    ]
    assert isinstance(out[-1], Done)


async def test_sentence_stage_stall_deadline(autojump_clock: trio.abc.Clock) -> None:
    script = [
        TextDelta("First one. Second"),
        Step(TextDelta(" part."), delay=5.0),
        Done(),
    ]
    sink = RecordingSink()
    await Pipeline(
        ScriptedProducer(script), stages=[SentenceStage(stall_timeout=1.0)], sinks=[sink]
    ).run()
    texts = [e.text for e in sink.events if isinstance(e, TextDelta)]
    assert texts == ["First one. ", "Second", " part."]


def test_sentence_stage_first_fragment_fast_path() -> None:
    stage = SentenceStage(stall_timeout=None, first_fragment_min_chars=8)
    out = stage.feed(TextDelta("Well, I think, that this is great. Yes it is. "), 0)
    out += stage.feed(Done(), 0)
    texts = [e.text for e in out if isinstance(e, TextDelta)]
    assert "".join(texts) == "Well, I think, that this is great. Yes it is. "
    assert texts[0] == "Well, I think, "


def test_stage_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        SentenceStage(stall_timeout=0)
    with pytest.raises(ConfigError):
        Validate(lambda t: None, window=0)
    with pytest.raises(ConfigError):
        Accumulate(max_chars=0)
