"""Tests for pipeline.text._speakable: text for speech, offsets back, what was heard."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text import (
    SentenceBuffer,
    SpeakableStream,
    Spoken,
    SpokenRun,
    heard_original,
    speakable,
)

# --- the rules, case by case ---------------------------------------------------------------------

CASES: list[tuple[str, str]] = [
    # emphasis, code, strike
    ("**Bold** move, friend.", "Bold move, friend."),
    ("An *em* and _em_ and __strong__ word.", "An em and em and strong word."),
    ("~~gone~~ text", "gone text"),
    ("***Both*** here.", "Both here."),
    ("Use `x = 1` here.", "Use x = 1 here."),
    ("Run ``a `b` c`` now.", "Run a `b` c now."),
    ("A lone ` backtick.", "A lone backtick."),
    ("snake_case and 2*3 and a * b.", "snake_case and 2*3 and a * b."),
    ("Half **open, then on.", "Half open, then on."),
    ("\\*not em\\* and \\_x\\_.", "*not em* and _x_."),
    # blocks
    ("# Title", "Title"),
    ("## Intro ##\n", "Intro"),
    ("#hashtag stays.", "#hashtag stays."),
    ("- item one", "item one"),
    ("* item two", "item two"),
    ("  + item three", "item three"),
    ("1. First thing.", "First thing."),
    ("12) Twelfth thing.", "Twelfth thing."),
    ("- [x] done\n- [ ] todo", "done todo"),
    ("> quoted *text*", "quoted text"),
    ("> > - nested", "nested"),
    ("Above.\n\n---\n\nBelow.", "Above. Below."),
    ("Title\n=====\nText.", "Title Text."),
    ("Not - a list, and 3. not a number.", "Not - a list, and 3. not a number."),
    ("| Name | Age |\n|------|:---:|\n| Ann | 30 |\n|| x \\| y |", "Name, Age Ann, 30 x | y"),
    ("a | b", "a | b"),
    ("Line.\r\n---\r\n```\r\ncode\r\n```\r\nAfter.\r\n", "Line. After."),
    # links, images, HTML
    ("See [the docs](https://x.com/a_(b)) now.", "See the docs now."),
    ("See [the docs][1] now.", "See the docs now."),
    ("![a cat](cat.png)", "a cat"),
    ("[**Bold** link](u) end.", "Bold link end."),
    ("A claim[^1] here.", "A claim here."),
    ("[not a link] here.", "[not a link] here."),
    ("<b>bold</b><br>line", "bold line"),
    ("a <!-- hidden --> b", "a b"),
    ("x < y and y > z.", "x < y and y > z."),
    # URLs and e-mail
    ("Visit https://www.example.com/path?q=1.", "Visit example.com."),
    ("(see http://Docs.Python.org/3/)", "(see docs.python.org)"),
    ("Go to www.example.org, then.", "Go to example.org, then."),
    ("x<https://a.org/p> y", "x a.org y"),
    ("Write to <mailto:a@b.io>.", "Write to a at b.io."),
    ("Mail john.doe@example.com!", "Mail john.doe at example.com!"),
    ("[https://e.com/x](https://e.com/x)", "e.com"),
    # symbols
    ("Tom & Jerry", "Tom and Jerry"),
    ("R&D", "R and D"),
    ("a &amp; b&nbsp;c &lt; d", "a and b c < d"),
    ("50% off, 5 % left.", "50 percent off, 5 % left."),
    ("$5 and 5$ and $1 and 1$.", "5 dollars and 5 dollars and 1 dollar and 1 dollar."),
    ("$2.5 million, $1,000 and €3.", "2.5 million dollars, 1,000 dollars and 3 euros."),
    ("It costs £10!", "It costs 10 pounds!"),
    (
        "It is 20°C. Or 68°F? 90° angle.",
        "It is 20 degrees Celsius. Or 68 degrees Fahrenheit? 90 degrees angle.",
    ),
    ("a -> b => c → d", "a to b to c to d"),
    ("#1 hit, issue #42.", "number 1 hit, issue number 42."),
    # whitespace
    ("  Hello,   world.\n\nNext.\t", "Hello, world. Next."),
    ("", ""),
    ("<br>", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_speakable_rules(text: str, expected: str) -> None:
    spoken = speakable(text)
    assert spoken.text == expected
    _check_invariants(text, spoken)


def test_code_blocks_skipped_or_read() -> None:
    text = "Before.\n```python\nprint('hi!')  # *no* markup\n```\nAfter."
    assert speakable(text).text == "Before. After."
    assert speakable(text, code_blocks="read").text == "Before. print('hi!') # *no* markup After."
    # A tilde fence, closed only by a fence at least as long; an unclosed fence runs to the end.
    assert speakable("~~~~\na\n~~~\nb\n~~~~\nc").text == "c"
    assert speakable("A.\n```\nnever closed.").text == "A."
    # Backticks in the info string: not a fence but inline code.
    assert speakable("```x``` y").text == "x y"


def test_stream_remembers_the_fence_across_pieces() -> None:
    stream = SpeakableStream()
    assert stream.feed("Look:\n").text == "Look:"
    assert not stream.in_code_block
    assert stream.feed("```py\nx = 1\n").text == ""
    assert stream.in_code_block
    assert stream.feed("y = 2. Still code.\n").text == ""
    assert stream.feed("```\n").text == ""
    assert not stream.in_code_block
    assert stream.feed("Done. ").text == "Done."
    stream.feed("```\n")  # not at the start of a line: inline code, not a fence
    assert not stream.in_code_block
    stream.feed("\n```\n")
    assert stream.in_code_block
    stream.reset()
    assert not stream.in_code_block
    assert stream.feed("Fresh.").text == "Fresh."


def test_stream_reads_code_when_asked() -> None:
    stream = SpeakableStream(code_blocks="read")
    assert stream.code_blocks == "read"
    assert stream.feed("```\n").text == ""
    assert stream.feed("a = 1\n").text == "a = 1"
    assert stream.feed("```\nText.").text == "Text."


def test_block_markers_only_at_the_start_of_a_line() -> None:
    stream = SpeakableStream()
    assert stream.feed("One. ").text == "One."
    assert stream.feed("- two, not a list item.").text == "- two, not a list item."
    assert stream.feed("\n").text == ""
    assert stream.feed("- three").text == "three"
    assert stream.feed("\n  ").text == ""
    assert stream.feed("- four").text == "four"


def test_sentence_buffer_pieces_through_the_stream() -> None:
    doc = (
        "# Setup\n\n"
        "First, install **llmpipe** with `pip`. Then run it!\n\n"
        "```bash\npip install llmpipe. Really.\n```\n\n"
        "- Read [the guide](https://docs.example.com/guide).\n"
        "- Ask me@example.com & wait.\n"
    )
    buffer = SentenceBuffer()
    stream = SpeakableStream()
    pieces = [*buffer.feed(doc), *buffer.flush()]
    spoken = [stream.feed(piece).text for piece in pieces]
    assert [s for s in spoken if s] == [
        "Setup",
        "First, install llmpipe with pip.",
        "Then run it!",
        "Read the guide.",
        "Ask me at example.com and wait.",
    ]
    assert " ".join(s for s in spoken if s) == speakable(doc).text


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="code_blocks"):
        SpeakableStream(code_blocks="mumble")  # type: ignore[arg-type]
    spoken = speakable("Hi & bye.")
    with pytest.raises(IndexError):
        spoken.original_offset(len(spoken.text) + 1)
    with pytest.raises(IndexError):
        spoken.original_offset(-1)
    with pytest.raises(IndexError):
        spoken.original_span(len(spoken.text))
    with pytest.raises(ValueError, match="original"):
        heard_original("Hi and bye.", spoken, 2)


# --- offsets -------------------------------------------------------------------------------------


def test_offsets_of_copied_and_replaced_text() -> None:
    text = "Tom & Jerry"
    spoken = speakable(text)
    assert spoken.text == "Tom and Jerry"
    assert [spoken.original_offset(i) for i in range(len(spoken.text) + 1)] == [
        *[0, 1, 2, 3],  # "Tom "
        *[4, 4, 4],  # "and" -> "&"
        5,  # " "
        *[6, 7, 8, 9, 10],  # "Jerry"
        11,
    ]
    assert spoken.original_span(4) == (4, 5)
    assert spoken.runs == (
        SpokenRun(0, 0, 4, True),
        SpokenRun(4, 4, 5, False),
        SpokenRun(7, 5, 11, True),
    )


def test_offsets_of_a_url_and_an_amount() -> None:
    text = "See https://www.example.com/a. Pay $5."
    spoken = speakable(text)
    assert spoken.text == "See example.com. Pay 5 dollars."
    url = spoken.text.index("example")
    assert spoken.original_offset(url) == text.index("https")
    assert spoken.original_offset(url + len("example.com")) == text.index(". Pay")
    five = spoken.text.index("5")
    assert spoken.original_offset(five) == text.index("5")
    dollars = spoken.text.index("dollars")
    assert spoken.original_offset(dollars) == text.index("5") + 1  # inserted after the number
    assert heard_original(text, spoken, url + 3) == "See https://www.example.com/a."
    assert heard_original(text, spoken, five + 1) == "See https://www.example.com/a. Pay $5"
    assert heard_original(text, spoken, dollars + 7) == text


# --- what was heard ------------------------------------------------------------------------------


def _word_ends(text: str) -> list[int]:
    return [m.end() for m in re.finditer(r"\S+", text)]


def test_heard_original_keeps_punctuation_and_markup() -> None:
    text = "**Bold** move, friend."
    spoken = speakable(text)
    ends = _word_ends(spoken.text)
    assert [heard_original(text, spoken, e) for e in ends] == [
        "**Bold**",
        "**Bold** move,",
        "**Bold** move, friend.",
    ]
    hello = "Hello, world."
    assert heard_original(hello, speakable(hello), 5) == "Hello,"  # a mark's end, before ","


def test_heard_original_word_boundaries() -> None:
    text = "Read [the guide](https://x.org/g), then _rest_."
    spoken = speakable(text)
    assert spoken.text == "Read the guide, then rest."
    assert heard_original(text, spoken, 0) == ""
    assert heard_original(text, spoken, -3) == ""
    assert heard_original(text, spoken, 2) == "Read"  # inside a word: the whole word
    assert heard_original(text, spoken, 5) == "Read"  # in the space after it
    assert heard_original(text, spoken, 8) == "Read [the"
    assert heard_original(text, spoken, 15) == "Read [the guide](https://x.org/g),"
    assert heard_original(text, spoken, 10_000) == text
    assert heard_original("```\ncode\n```", speakable("```\ncode\n```"), 3) == ""


# --- properties ----------------------------------------------------------------------------------


def _check_invariants(original: str, spoken: Spoken) -> None:
    text = spoken.text
    assert text == text.strip()
    assert "  " not in text
    assert all(ch == " " or not ch.isspace() for ch in text)
    assert spoken.original_length == len(original)
    offsets = [spoken.original_offset(i) for i in range(len(text) + 1)]
    assert offsets == sorted(offsets)
    assert all(0 <= o <= len(original) for o in offsets)
    if text:
        assert spoken.runs[0].spoken_start == 0
    starts = [r.spoken_start for r in spoken.runs]
    assert starts == sorted(set(starts))
    for i, ch in enumerate(text):
        a, b = spoken.original_span(i)
        assert 0 <= a <= b <= len(original)
        run = next(r for r in reversed(spoken.runs) if r.spoken_start <= i)
        if run.copied:
            assert b == a + 1
            assert original[a] == ch or (ch == " " and original[a].isspace())
    # Sentence marks are never inserted.
    for mark in ".!?":
        assert text.count(mark) <= original.count(mark)
    heard = [heard_original(original, spoken, e) for e in range(len(text) + 1)]
    assert all(original.startswith(h) for h in heard)
    assert [len(h) for h in heard] == sorted(len(h) for h in heard)


_MARKUP_SOUP = st.text(alphabet="aw1 .!?\n*_~`[]()<>#&%$°->=@:/\\", max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), _MARKUP_SOUP))
def test_any_text_keeps_the_invariants(text: str) -> None:
    _check_invariants(text, speakable(text))
    _check_invariants(text, speakable(text, code_blocks="read"))


_PLAIN = st.text(
    alphabet=st.sampled_from(list("abcXYZéü019 \t\n\u00a0\u2003.,!?;:'\"()")), max_size=80
).filter(lambda t: re.search(r"(?m)^\s*\d+[.)][ \t]", t) is None)


def _sentence_ends(text: str) -> int:
    return len(re.findall(r"[.!?]+(?=\s|$)", text))


@settings(max_examples=300, deadline=None)
@given(_PLAIN)
def test_plain_text_is_only_whitespace_collapsed(text: str) -> None:
    spoken = speakable(text)
    assert spoken.text == " ".join(text.split())
    assert _sentence_ends(spoken.text) == _sentence_ends(text)
    for i, ch in enumerate(spoken.text):
        o = spoken.original_offset(i)
        assert text[o] == ch or (ch == " " and text[o].isspace())
    _check_invariants(text, spoken)


# A markdown document whose spoken form is known: words, each maybe decorated, in sentences,
# in lines with block markers, with code blocks in between.

# No "w": a word "www" could start a URL.
_WORD = st.text(
    alphabet="abcdefghijklmnopqrstuvxyzABCDEFGHIJKLMNOPQRSTUVXYZ", min_size=1, max_size=7
)
_DECORATIONS = [
    "{}",
    "{}",
    "*{}*",
    "**{}**",
    "_{}_",
    "__{}__",
    "~~{}~~",
    "`{}`",
    "[{}](https://example.com/x_(y))",
    "![{}](img.png)",
    "<b>{}</b>",
    "<em>{}</em>",
]
_PREFIXES = ["", "", "# ", "## ", "- ", "* ", "1. ", "> ", "> - ", "  + "]


@st.composite
def _sentence(draw: st.DrawFn) -> tuple[str, str]:
    """(markdown, spoken) for one sentence."""
    words = draw(st.lists(_WORD, min_size=1, max_size=5))
    marks = draw(st.lists(st.sampled_from(["", "", ","]), min_size=len(words), max_size=len(words)))
    marks[-1] = draw(st.sampled_from([".", "!", "?", "?!"]))
    plain = " ".join(w + m for w, m in zip(words, marks, strict=True))
    parts = []
    for w, m in zip(words, marks, strict=True):
        parts.append(draw(st.sampled_from(_DECORATIONS)).format(w) + m)
    md = " ".join(parts)
    md = draw(st.sampled_from(["{}", "{}", "**{}**", "_{}_"])).format(md)
    return md, plain


@st.composite
def _document(draw: st.DrawFn) -> tuple[str, str]:
    lines: list[str] = []
    spoken: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 5)) == 0:
            code = draw(st.lists(st.text(alphabet="ab .!?*_#-\n", max_size=12), max_size=3))
            lines += ["```", *"\n".join(code).split("\n"), "```"]
            continue
        sentences = draw(st.lists(_sentence(), min_size=1, max_size=3))
        lines.append(draw(st.sampled_from(_PREFIXES)) + " ".join(md for md, _ in sentences))
        spoken += [plain for _, plain in sentences]
        if draw(st.booleans()):
            lines.append("")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"])), " ".join(spoken)


@settings(max_examples=300, deadline=None)
@given(_document())
def test_markdown_becomes_its_text(doc: tuple[str, str]) -> None:
    text, expected = doc
    spoken = speakable(text)
    assert spoken.text == expected
    assert _sentence_ends(spoken.text) == _sentence_ends(expected)
    _check_invariants(text, spoken)
    # Every word maps to where it is in the original.
    for m in re.finditer(r"\w+", spoken.text):
        assert text.startswith(m.group(), spoken.original_offset(m.start()))
    # What was heard, spoken again, is what was spoken up to there.
    for end in _word_ends(spoken.text):
        assert speakable(heard_original(text, spoken, end)).text == spoken.text[:end]


@settings(max_examples=300, deadline=None)
@given(_document())
def test_sentence_pieces_speak_as_the_whole(doc: tuple[str, str]) -> None:
    text, expected = doc
    buffer = SentenceBuffer()
    stream = SpeakableStream()
    pieces = [*buffer.feed(text), *buffer.flush()]
    spoken = [stream.feed(piece) for piece in pieces]
    assert " ".join(s.text for s in spoken if s.text) == expected
    # Cleaning piece by piece keeps every sentence end: no sentence merged into another.
    assert sum(_sentence_ends(s.text) for s in spoken) == _sentence_ends(expected)
    for piece, s in zip(pieces, spoken, strict=True):
        _check_invariants(piece, s)
