"""AdaptiveChunker: word boundaries, size cap, time flush, adaptation, grapheme safety."""

from __future__ import annotations

import math

import regex
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import ConfigError, Done, Pipeline, Route, StageContext, TextDelta
from pipeline.testing import RecordingSink, ScriptedProducer, Step
from pipeline.text import AdaptiveChunker
from pipeline.text._graphemes import can_break


def run_chunker(chunker: AdaptiveChunker, deltas: list[str], now: float = 0.0) -> list[str]:
    out: list[str] = []
    for d in deltas:
        out += [e.text for e in chunker.feed(TextDelta(d), now)]  # type: ignore[union-attr]
    out += [e.text for e in chunker.feed(Done(), now) if isinstance(e, TextDelta)]
    return out


def test_flushes_on_word_boundaries() -> None:
    chunks = run_chunker(AdaptiveChunker(min_chars=6, interval=None), list("hello big world"))
    assert chunks == ["hello ", "big ", "world"]


def test_size_cap_without_spaces_cuts_at_a_character_boundary() -> None:
    chunks = run_chunker(AdaptiveChunker(min_chars=4, max_chars=8, interval=None), ["x" * 30])
    assert "".join(chunks) == "x" * 30
    assert all(len(c) <= 8 for c in chunks)


def test_interval_flush_holds_only_the_last_character() -> None:
    chunker = AdaptiveChunker(min_chars=100, interval=0.05)
    assert chunker.feed(TextDelta("Hello wor"), now=0.0) == []
    assert chunker.deadline() == 0.05
    released = chunker.expire(0.05)
    assert [e.text for e in released] == ["Hello wo"]  # type: ignore[union-attr]
    assert chunker.held == "r"


def test_chunks_grow_when_the_consumer_lags_and_shrink_back() -> None:
    pressure = [1.0]
    chunker = AdaptiveChunker(min_chars=4, max_chars=64, interval=None)
    chunker.bind(StageContext(downstream_pressure=lambda: pressure[0]))
    words = ["ab "] * 200
    sizes = [len(c) for c in run_chunker(chunker, words[:100])]
    assert max(sizes) >= 48
    assert chunker.target == 64
    pressure[0] = 0.0
    run_chunker(chunker, words[:60])
    assert chunker.target == 4


def test_invalid_configuration() -> None:
    for kwargs in ({"min_chars": 0}, {"max_chars": 2, "min_chars": 4}, {"interval": 0}):
        try:
            AdaptiveChunker(**kwargs)  # type: ignore[arg-type]
        except ConfigError:
            continue
        raise AssertionError(f"accepted {kwargs}")


CLUSTERS = [
    "a",
    " ",
    "\n",
    "\r\n",
    "é",
    "e\u0301",
    "👍",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🇫🇷",
    "🇯🇵",
    "\u1100\u1161\u11a8",  # Hangul jamo L V T
    "क्षि",  # Devanagari conjunct
    "x",
    ".",
    "你",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(CLUSTERS), max_size=60),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=12),
    st.booleans(),
)
def test_never_splits_a_grapheme_cluster_and_loses_nothing(
    clusters: list[str], sizes: list[int], min_chars: int, expire: bool
) -> None:
    text = "".join(clusters)
    # Split the text into deltas anywhere (also inside clusters), as a tokenizer may.
    deltas, i, k = [], 0, 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        deltas.append(text[i : i + n])
        i += n
        k += 1
    chunker = AdaptiveChunker(min_chars=min_chars, max_chars=max(min_chars, 8), interval=0.05)
    chunks: list[str] = []
    now = 0.0
    for d in deltas:
        chunks += [e.text for e in chunker.feed(TextDelta(d), now)]  # type: ignore[union-attr]
        if expire:
            now += 0.1
            chunks += [e.text for e in chunker.expire(now)]  # type: ignore[union-attr]
    chunks += [e.text for e in chunker.feed(Done(), now) if isinstance(e, TextDelta)]
    assert "".join(chunks) == text
    assert all(chunks)
    # Every cut is at a grapheme boundary per an independent implementation (regex's \X).
    boundaries = {0}
    pos = 0
    for m in regex.finditer(r"\X", text):
        pos += len(m.group())
        boundaries.add(pos)
    pos = 0
    for c in chunks:
        pos += len(c)
        assert pos in boundaries, (text, chunks)


def test_can_break_basics() -> None:
    assert can_break("ab", 1)
    assert not can_break("\r\n", 1)
    assert not can_break("e\u0301", 1)
    assert not can_break("🇫🇷", 1)
    assert can_break("🇫🇷🇯🇵", 2)
    assert not can_break("🇫🇷🇯🇵", 3)


async def test_chunker_in_a_pipeline_with_mock_time(autojump_clock: trio.abc.Clock) -> None:
    # A producer that stalls mid-sentence: the interval releases what is held.
    script = [TextDelta("Hello "), TextDelta("wor"), Step(TextDelta("ld."), delay=1.0), Done()]
    sink = RecordingSink()
    await Pipeline(
        ScriptedProducer(script),
        stages=[AdaptiveChunker(min_chars=50, interval=0.05)],
        sinks=[Route(sink)],
    ).run()
    assert [e.text for e in sink.events if isinstance(e, TextDelta)] == ["Hello wo", "rld."]
    assert math.isinf(AdaptiveChunker().deadline())
