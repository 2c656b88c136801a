"""Tests for pipeline.text._sentences.SentenceBuffer: golden rules, properties, unit cases."""

# ruff: noqa: RUF001  (full-width and typographic punctuation is the point of some cases)

from __future__ import annotations

import importlib.util
import random
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.text import SentenceBuffer

Segment = Callable[[str], list[str]]
Case = tuple[str, list[str]]


# --- helpers -------------------------------------------------------------------------------------


def _load_golden() -> list[Case]:
    path = Path(__file__).parent / "data" / "golden_rules_en.py"
    spec = importlib.util.spec_from_file_location("_golden_rules_en", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cases: list[Case] = module.GOLDEN_EN_RULES
    return cases


GOLDEN_EN_RULES = _load_golden()


def run(chunks: Sequence[str], **kwargs: int | None) -> list[str]:
    """Feed *chunks* to a fresh buffer, flush, check the invariants, return all pieces."""
    buf = SentenceBuffer(**kwargs)  # type: ignore[arg-type]
    out: list[str] = []
    for chunk in chunks:
        got = buf.feed(chunk)
        assert all(isinstance(p, str) and p for p in got), got
        out += got
    rest = buf.flush()
    assert all(rest), rest
    out += rest
    assert "".join(out) == "".join(chunks)
    assert buf.pending == ""
    return out


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    points = sorted({c for c in cuts if 0 < c < len(text)})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def random_chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    if len(text) < 2:
        return [text]
    return split_at(text, [rng.randrange(1, len(text)) for _ in range(rng.randint(1, 10))])


_WORD_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")


def word_tokens(text: str) -> list[str]:
    """*text* as an LLM streams it: words with their leading space, punctuation alone.

    The buffer skips such a token whole when the scanner waits in plain text (its fast path);
    comparing with the whole text pins that the shortcut changes nothing.
    """
    return _WORD_TOKEN.findall(text)


def segment_all_ways(text: str, **kwargs: int | None) -> list[str]:
    """Segment *text* whole, per character, in word tokens and in random chunks; all agree."""
    whole = run([text], **kwargs)
    assert run(list(text), **kwargs) == whole, text
    assert run(word_tokens(text), **kwargs) == whole, text
    for seed in range(3):
        assert run(random_chunks(text, seed), **kwargs) == whole, (text, seed)
    return whole


def stripped(pieces: list[str]) -> list[str]:
    return [p.strip() for p in pieces]


def score(cases: Sequence[Case], segment: Segment) -> tuple[int, list[str]]:
    ok = 0
    failures: list[str] = []
    for number, (text, expected) in enumerate(cases, 1):
        got = stripped(segment(text))
        if got == expected:
            ok += 1
        else:
            failures.append(f"#{number}: {text!r}\n    expected {expected!r}\n    got      {got!r}")
    return ok, failures


def pysbd_segment() -> Segment:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pysbd 0.3.4 has invalid escape sequences
        import pysbd

    seg = pysbd.Segmenter(language="en", clean=False)

    def segment(text: str) -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [str(s) for s in seg.segment(text)]

    return segment


# --- 1. Golden Rules ---------------------------------------------------------------------------


def test_golden_rules_has_52_cases() -> None:
    assert len(GOLDEN_EN_RULES) == 52
    assert len({text for text, _ in GOLDEN_EN_RULES}) == 52


def test_golden_rules_streaming_beats_pysbd(capsys: pytest.CaptureFixture[str]) -> None:
    ours, our_failures = score(GOLDEN_EN_RULES, segment_all_ways)
    theirs, _ = score(GOLDEN_EN_RULES, pysbd_segment())
    total = len(GOLDEN_EN_RULES)
    with capsys.disabled():
        print(f"\nSentenceBuffer streaming (any chunking): {ours}/{total}")
        print("\n".join(our_failures))
        print(f"pySBD 0.3.4 clean=False, whole texts: {theirs}/{total}")
    assert ours > theirs, "\n".join(our_failures)
    assert ours >= 50, "\n".join(our_failures)


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(t, e, id=f"rule{i}") for i, (t, e) in enumerate(GOLDEN_EN_RULES, 1)],
)
def test_golden_rule_chunk_invariant_and_lossless(text: str, expected: list[str]) -> None:
    pieces = segment_all_ways(text)
    # Every piece but the first starts with a visible character (whitespace trails).
    assert all(not p[0].isspace() for p in pieces[1:])


# --- 2. Properties -------------------------------------------------------------------------------

_CHARS = list("aAbBzZxX01929 \n\t\r.!?\")(']$`…,-:;éÉ你好😀•~")
_TOKENS = [
    "Mr.",
    "Dr. ",
    "U.S.",
    "e.g.",
    "i.e.,",
    " The ",
    " It ",
    " I. ",
    "J. R. ",
    "a.m. ",
    "At 5 ",
    "1. ",
    "2. ",
    "2) ",
    "a. ",
    "b. ",
    "• 9. ",
    "```",
    "```py\n",
    "\n```\n",
    "~~~\n",
    "...",
    ". . .",
    " . . . . ",
    "[...]",
    "$29.95",
    "v1.2.3",
    "example.ai",
    "jane@example.com",
    "https://x.io/a.b?c=1.",
    "world.Today",
    "\n\n",
    '." ',
    "?! ",
    "。",
    "Hello",
    " word",
    "— ",
]

texts = st.lists(
    st.one_of(st.sampled_from(_TOKENS), st.text(alphabet=st.sampled_from(_CHARS), max_size=4)),
    max_size=40,
).map("".join)

_PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def text_and_cuts(draw: st.DrawFn) -> tuple[str, list[int]]:
    text = draw(texts)
    cuts = draw(st.lists(st.integers(0, max(len(text), 1)), max_size=20))
    return text, cuts


@_PROPS
@given(
    data=text_and_cuts(),
    config=st.sampled_from(
        [
            {},
            {"first_fragment_min_chars": 1},
            {"first_fragment_min_chars": 8},
            {"max_chars": 16},
            {"max_chars": 40, "first_fragment_min_chars": 5},
            {"first_fragment_max_chars": 12},
            {"first_fragment_min_chars": 5, "first_fragment_max_chars": 20, "max_chars": 60},
        ]
    ),
)
def test_lossless_and_chunk_invariant(
    data: tuple[str, list[int]], config: dict[str, int | None]
) -> None:
    text, cuts = data
    whole = run([text], **config) if text else run([], **config)
    assert run(split_at(text, cuts), **config) == whole
    assert run(list(text), **config) == whole
    assert run(word_tokens(text), **config) == whole


@_PROPS
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=20))
def test_flush_splits_segments(text: str, cuts: list[int]) -> None:
    """Feeding after flush() behaves exactly like a new buffer (a fresh segment)."""
    buf = SentenceBuffer()
    first = buf.feed("Some earlier text. And an unfinished") + buf.flush()
    assert "".join(first) == "Some earlier text. And an unfinished"
    out: list[str] = []
    for chunk in split_at(text, cuts):
        out += buf.feed(chunk)
    out += buf.flush()
    assert out == run([text])


@_PROPS
@given(text=texts, chunk=st.integers(1, 7))
def test_memory_is_bounded(text: str, chunk: int) -> None:
    buf = SentenceBuffer(max_chars=32)
    long_text = text * 20
    for i in range(0, len(long_text), chunk):
        buf.feed(long_text[i : i + chunk])
        assert len(buf.pending) <= 32 + 400


# --- 3. Unit cases -------------------------------------------------------------------------------


def test_price_split_across_chunks_is_held() -> None:
    buf = SentenceBuffer()
    assert buf.feed("It costs $29.") == []
    assert buf.pending == "It costs $29."
    assert buf.feed("95") == []
    assert buf.feed(" today. Buy") == ["It costs $29.95 today. "]
    assert buf.flush() == ["Buy"]


def test_price_at_sentence_end() -> None:
    assert run(["It costs $29.", " It is cheap."]) == ["It costs $29. ", "It is cheap."]
    assert run(["She has $100.00. It is in her bag."]) == ["She has $100.00. ", "It is in her bag."]


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade to v1.2.3 first.",
        "See example.ai for details.",
        "Visit www.example.com today.",
        "Write to jane.doe@example.com with questions.",
        "Open https://example.com/docs/page.html?x=1.5&y=2 in a browser.",
        "Pi is 3.14159 roughly.",
        "The file is named report.final.pdf here.",
    ],
)
def test_no_split_inside_tokens(text: str) -> None:
    assert segment_all_ways(text) == [text]


def test_url_and_email_at_sentence_end() -> None:
    assert segment_all_ways("Mail jane.doe@example.com. Then wait.") == [
        "Mail jane.doe@example.com. ",
        "Then wait.",
    ]
    assert segment_all_ways("Go to https://example.com/a.html. Please check.") == [
        "Go to https://example.com/a.html. ",
        "Please check.",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith met Mrs. Jones and Dr. Watson.",
        "I am in the U.S. Army now.",
        "J. R. R. Tolkien wrote it.",
        "Did you see Albert I. Jones yesterday?",
        "Bring fruit, e.g. apples, and i.e. not bread.",
        "The Giants vs. Tigers game starts soon.",
        "Turn to p. 55 and Fig. 3 now.",
        "That is JFK Jr.'s book.",
        "She works at Yahoo! in the accounting department.",
        "At 5 a.m. Mr. Smith went to the bank.",
        "Pitt, Briggs & Co. at noon.",
    ],
)
def test_abbreviations_do_not_split(text: str) -> None:
    assert segment_all_ways(text) == [text]


def test_abbreviations_that_end_a_sentence() -> None:
    assert stripped(segment_all_ways("I live in the U.S. How about you?")) == [
        "I live in the U.S.",
        "How about you?",
    ]
    assert stripped(segment_all_ways("Ask Jane and co. They should know.")) == [
        "Ask Jane and co.",
        "They should know.",
    ]
    assert stripped(segment_all_ways("He left at 6 P.M. Mr. Smith stayed.")) == [
        "He left at 6 P.M.",
        "Mr. Smith stayed.",
    ]
    assert stripped(segment_all_ways("We make a good team, you and I. Did you know?")) == [
        "We make a good team, you and I.",
        "Did you know?",
    ]


def test_ellipses() -> None:
    assert stripped(segment_all_ways("I never meant that... She left.")) == [
        "I never meant that...",
        "She left.",
    ]
    assert stripped(segment_all_ways("Well… I think so.")) == ["Well…", "I think so."]
    assert segment_all_ways("I was really ... well, thinking.") == [
        "I was really ... well, thinking."
    ]
    assert segment_all_ways("He said [...] That was all.") == ["He said [...] That was all."]
    assert segment_all_ways("Wait...what?") == ["Wait...what?"]


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert segment_all_ways('He said "Hi." Then he left.') == ['He said "Hi." ', "Then he left."]
    assert segment_all_ways("(This is it.) Next one!") == ["(This is it.) ", "Next one!"]
    assert segment_all_ways("“Really?” She nodded.") == ["“Really?” ", "She nodded."]
    assert segment_all_ways('She said, "This is great." she said.') == [
        'She said, "This is great." she said.'
    ]
    assert segment_all_ways("**Done.** Next.") == ["**Done.** ", "Next."]


def test_question_and_exclamation() -> None:
    assert segment_all_ways("Hello?! Is that you? Yes!") == [
        "Hello?! ",
        "Is that you? ",
        "Yes!",
    ]


def test_numbered_lists() -> None:
    assert segment_all_ways("1. First item\n2. Second item\n3. Third") == [
        "1. First item\n",
        "2. Second item\n",
        "3. Third",
    ]
    assert stripped(segment_all_ways("1. The first item 2. The second item")) == [
        "1. The first item",
        "2. The second item",
    ]
    assert stripped(segment_all_ways("a) apples b) pears c) plums")) == [
        "a) apples",
        "b) pears",
        "c) plums",
    ]
    # Non-consecutive numbers are not a list.
    assert segment_all_ways("1) Add 3 cups 3) more") == ["1) Add 3 cups 3) more"]


def test_bullet_lists_and_headings_split_at_newlines() -> None:
    assert segment_all_ways("# Title\n- one\n- two\n\nText.") == [
        "# Title\n",
        "- one\n",
        "- two\n\n",
        "Text.",
    ]


def test_paragraph_break_and_wrapped_line() -> None:
    assert segment_all_ways("No punctuation here\n\nNext paragraph") == [
        "No punctuation here\n\n",
        "Next paragraph",
    ]
    assert segment_all_ways("It was a cold \nnight in the city.") == [
        "It was a cold \nnight in the city."
    ]


def test_code_fence_is_never_split_and_released_when_closed() -> None:
    buf = SentenceBuffer()
    assert buf.feed("Here is code:\n```python\nx = 1. Y = 2.\n\nprint(x)! Done?\n") == [
        "Here is code:\n"
    ]
    assert buf.feed("``") == []
    assert buf.feed("`\n") == []
    assert buf.feed("After. ") == ["```python\nx = 1. Y = 2.\n\nprint(x)! Done?\n```\n"]
    assert buf.flush() == ["After. "]


def test_code_fence_any_chunking() -> None:
    text = "Intro.\n~~~\na. b. 1. 2. Hi! Yo.\n~~~\n```js\nlet a = 1;\n```\nEnd."
    assert segment_all_ways(text) == [
        "Intro.\n",
        "~~~\na. b. 1. 2. Hi! Yo.\n~~~\n",
        "```js\nlet a = 1;\n```\n",
        "End.",
    ]


def test_unclosed_fence_is_released_whole_on_flush() -> None:
    assert segment_all_ways("```\nA. B. C.\n\nD.") == ["```\nA. B. C.\n\nD."]


def test_long_fence_is_cut_at_line_ends() -> None:
    lines = "".join(f"line {i}. Next\n" for i in range(20))
    pieces = segment_all_ways("```\n" + lines + "```\n", max_chars=64)
    assert all(len(p) <= 64 for p in pieces)
    assert all(p.endswith("\n") for p in pieces)


def test_max_chars_releases_at_last_whitespace() -> None:
    text = "word " * 30
    pieces = segment_all_ways(text, max_chars=32)
    assert all(len(p) <= 32 for p in pieces)
    assert pieces[0] == "word " * 6
    assert all(p.endswith(" ") for p in pieces)


def test_max_chars_hard_cut_without_whitespace() -> None:
    # The hard cut is at the last grapheme boundary inside the max_chars window (the character
    # after the cut must be in the window so the choice depends on the text alone): max - 1.
    pieces = segment_all_ways("x" * 100, max_chars=40)
    assert pieces == ["x" * 39, "x" * 39, "x" * 22]


def test_max_chars_hard_cut_never_splits_a_grapheme_cluster() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one cluster, 5 code points
    text = family * 30
    pieces = segment_all_ways(text, max_chars=17)
    assert "".join(pieces) == text
    assert all(len(p) % 5 == 0 for p in pieces), [len(p) for p in pieces]


def test_first_fragment_fast_path() -> None:
    text = "Well, I think that is great. Yes."
    assert segment_all_ways(text, first_fragment_min_chars=5) == [
        "Well, ",
        "I think that is great. ",
        "Yes.",
    ]
    assert segment_all_ways(text, first_fragment_min_chars=6) == [
        "Well, I think that is great. ",
        "Yes.",
    ]
    assert segment_all_ways(text) == ["Well, I think that is great. ", "Yes."]
    # Only the first piece: later clauses are not split.
    assert segment_all_ways("Hi. Well, ok; then — fine.", first_fragment_min_chars=1) == [
        "Hi. ",
        "Well, ok; then — fine.",
    ]
    # Not at commas inside numbers or hyphenated words.
    assert segment_all_ways(
        "It costs 1,000 well-known coins: wow.", first_fragment_min_chars=3
    ) == [
        "It costs 1,000 well-known coins: ",
        "wow.",
    ]


def test_first_fragment_max_chars_cuts_a_long_first_sentence_at_a_word() -> None:
    text = "The sky looks blue because air scatters short waves more. Then red at dusk."
    assert segment_all_ways(text, first_fragment_max_chars=20) == [
        "The sky looks blue ",
        "because air scatters short waves more. ",
        "Then red at dusk.",
    ]
    # A clause boundary first wins; only the first piece is bounded; off by default.
    assert segment_all_ways(
        "Well, the sky looks blue today. Yes.",
        first_fragment_min_chars=3,
        first_fragment_max_chars=20,
    ) == ["Well, ", "the sky looks blue today. ", "Yes."]
    assert segment_all_ways(text) == [
        "The sky looks blue because air scatters short waves more. ",
        "Then red at dusk.",
    ]
    with pytest.raises(ValueError, match="first_fragment_max_chars"):
        SentenceBuffer(first_fragment_max_chars=0)
    with pytest.raises(ValueError, match="first_fragment_max_chars"):
        SentenceBuffer(max_chars=10, first_fragment_max_chars=11)


def test_first_fragment_fast_path_applies_again_after_flush_and_reset() -> None:
    buf = SentenceBuffer(first_fragment_min_chars=3)
    assert buf.feed("Sure, here. Okay, fine. ") == ["Sure, ", "here. "]
    assert buf.flush() == ["Okay, fine. "]
    assert buf.feed("Also, this. ") == ["Also, "]
    buf.reset()
    assert buf.pending == ""
    assert buf.feed("Then, that. X") == ["Then, ", "that. "]


def test_flush_then_continue_feeding() -> None:
    buf = SentenceBuffer()
    assert buf.feed("The deadline hit mid") == []
    assert buf.flush() == ["The deadline hit mid"]
    assert buf.flush() == []
    assert buf.feed("sentence. Next one") == ["sentence. "]
    assert buf.flush() == ["Next one"]


def test_reset_drops_pending() -> None:
    buf = SentenceBuffer()
    buf.feed("Held text")
    assert buf.pending == "Held text"
    buf.reset()
    assert buf.pending == ""
    assert buf.flush() == []


def test_glued_sentences() -> None:
    assert stripped(segment_all_ways("Hello world.Today is Tuesday.Mr. Smith came.")) == [
        "Hello world.",
        "Today is Tuesday.",
        "Mr. Smith came.",
    ]


def test_full_width_terminators() -> None:
    assert segment_all_ways("你好。我是机器人！好吗？") == ["你好。", "我是机器人！", "好吗？"]


def test_whitespace_only_and_empty_input() -> None:
    assert SentenceBuffer().feed("") == []
    assert run(["  \n\n "]) == ["  \n\n "]
    assert run([" \n Hello. ", " World"]) == [" \n Hello.  ", "World"]


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="first_fragment_min_chars"):
        SentenceBuffer(first_fragment_min_chars=0)
    with pytest.raises(ValueError, match="max_chars"):
        SentenceBuffer(max_chars=3)
    with pytest.raises(TypeError):
        SentenceBuffer().feed(b"bytes")  # type: ignore[arg-type]
    buf = SentenceBuffer(first_fragment_min_chars=12, max_chars=100)
    assert buf.first_fragment_min_chars == 12
    assert buf.max_chars == 100
    assert "max_chars=100" in repr(buf)


def test_long_input_per_character_is_linear() -> None:
    text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 400 + "x" * 5000
    buf = SentenceBuffer(max_chars=500)
    out: list[str] = []
    for ch in text:
        out += buf.feed(ch)
        assert len(buf.pending) <= 500 + 400
    out += buf.flush()
    assert "".join(out) == text
    assert len(out) == 400 + 11  # 5000 x's in hard cuts of max_chars - 1
