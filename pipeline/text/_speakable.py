"""Text for speech: what a voice should say for a piece of an LLM's (markdown) answer.

:func:`speakable` turns one sentence or clause (or any text) into the text a speech engine gets,
and :class:`SpeakableStream` does the same for the successive pieces of one answer (it remembers
an open code fence and whether a piece starts a line). The result, :class:`Spoken`, maps every
offset of the spoken text back to the original, and :func:`heard_original` turns "heard up to
this spoken word" into the original text that was heard, with its punctuation and markup.

Rules
=====

Blocks (at the start of a line):

* A fenced code block (a line of three or more backticks or tildes, up to the closing fence) is
  skipped whole with ``code_blocks="skip"``; with ``"read"`` its lines are read as they are
  (no markup or symbol rules inside), without the fence lines.
* Heading markers (``# ``, and a closing ``##``), block quote markers (``> ``), bullet and
  numbered list markers (``- ``, ``* ``, ``+ ``, ``• ``, ``1. ``, ``1) ``) and task boxes
  (``[ ]``, ``[x]``) are removed; thematic breaks and setext underlines (``---``, ``***``,
  ``===``) are dropped. A table row ``| a | b |`` is read ``a, b``; its ``|---|`` rule is
  dropped. Nothing is added: a heading without final punctuation stays without.

Inline:

* Emphasis ``*x*``, ``**x**``, ``_x_``, ``__x__``, ``~~x~~`` -> ``x``: delimiter runs that open
  or close (CommonMark's flanking rules) are removed, also when their partner is in another
  piece; an underscore inside a word (``snake_case``) and a star between digits (``2*3``) stay.
* Inline code (in backticks) -> its text as it is (no rules inside); an unmatched backtick is
  dropped.
* Links ``[text](url)`` and ``[text][ref]`` -> ``text``; images ``![alt](url)`` -> ``alt``;
  footnote references ``[^1]`` are dropped; HTML tags and comments are removed (block-level tags
  such as ``<br>`` and ``<p>`` leave a space); backslash escapes (``\\*``) keep the character.
* Bare URLs (``http://``, ``https://``, ``ftp://``, ``www.``) and ``<url>`` autolinks -> the host
  without ``www.``: ``https://www.example.com/path?q=1`` -> ``example.com``. Punctuation after a
  URL (``.``, ``,``, a closing bracket without its opener) is not part of it and stays.
* E-mail addresses are kept, with ``@`` -> ``at``.
* Symbols (a small table): ``&`` -> ``and``; ``%`` after a digit -> ``percent``; ``$``,
  ``€``, ``£`` before or after a number -> ``dollars``, ``euros``, ``pounds`` after it (``$5``
  and ``5$`` -> ``5 dollars``, ``$1`` -> ``1 dollar``, ``$2 million`` -> ``2 million
  dollars``); ``°C``, ``°F``, ``°`` -> ``degrees Celsius``, ``degrees Fahrenheit``,
  ``degrees``; ``->``, ``=>``, ``→`` -> ``to``; ``#`` before a digit -> ``number``; HTML
  entities are decoded.
* Whitespace runs become one space; leading and trailing whitespace is dropped.

Sentence punctuation (``.``, ``!``, ``?``) is never inserted, and never removed outside markup,
URLs and code: sentence boundaries come from :class:`SentenceBuffer` upstream and cleaning a
piece keeps them. A piece that is only markup or code speaks as ``""``.

Offsets
=======

:attr:`Spoken.runs` is a compact list of :class:`SpokenRun`: a copied run maps its characters
one to one onto the original; a replacement (``and`` for ``&``, ``example.com`` for a URL, a
space for a newline) maps all its characters to the start of the text it replaces, and
inserted text (``dollars`` after a number, the comma between table cells) maps to where it is
inserted. The mapping is monotonic.
"""

from __future__ import annotations

import html
import re
import unicodedata
from bisect import bisect_right
from typing import Final, Literal, NamedTuple

import attrs

__all__ = [
    "CodeBlocks",
    "SpeakableStream",
    "Spoken",
    "SpokenRun",
    "heard_original",
    "speakable",
]

CodeBlocks = Literal["skip", "read"]
"""What to do with fenced code blocks: skip them, or read their text as it is."""


class SpokenRun(NamedTuple):
    """A run of :attr:`Spoken.text` from ``spoken_start`` to the next run's start.

    ``copied``: the run is ``original[original_start:original_end]`` character for character
    (whitespace may be a space for another whitespace character). Otherwise it replaces that
    span (empty for inserted text) and all its characters map to ``original_start``.
    """

    spoken_start: int
    original_start: int
    original_end: int
    copied: bool


@attrs.frozen
class Spoken:
    """The text for the speech engine and its way back to the original.

    ``text`` has no leading, trailing or repeated whitespace; ``runs`` cover it in order (the
    first starts at 0 when ``text`` is not empty); ``original_length`` is the original's length.
    """

    text: str
    runs: tuple[SpokenRun, ...]
    original_length: int

    def _run(self, i: int) -> SpokenRun:
        return self.runs[bisect_right(self.runs, i, key=lambda r: r.spoken_start) - 1]

    def original_offset(self, i: int) -> int:
        """Where spoken offset *i* (``0 <= i <= len(text)``) comes from in the original.

        Monotonic non-decreasing in *i*; ``original_offset(len(text))`` is the original's length.
        """
        if not 0 <= i <= len(self.text):
            raise IndexError(f"spoken offset {i} outside 0..{len(self.text)}")
        if i == len(self.text):
            return self.original_length
        run = self._run(i)
        return run.original_start + (i - run.spoken_start) if run.copied else run.original_start

    def original_span(self, i: int) -> tuple[int, int]:
        """The span of the original that spoken character *i* stands for (start, end)."""
        if not 0 <= i < len(self.text):
            raise IndexError(f"spoken index {i} outside 0..{len(self.text) - 1}")
        run = self._run(i)
        if run.copied:
            o = run.original_start + (i - run.spoken_start)
            return o, o + 1
        return run.original_start, run.original_end


def heard_original(original: str, spoken: Spoken, spoken_end: int) -> str:
    """The original text heard when speech has reached *spoken_end* in ``spoken.text``.

    ``spoken`` must come from *original*. The word (whitespace-separated) that *spoken_end* ends
    or falls inside counts as heard whole; a *spoken_end* in whitespace counts the word before
    it. The result is *original* up to the end of that word, extended over the punctuation and
    markup that directly follow it (up to whitespace or the next spoken character): heard up to
    ``Hello`` of ``Hello, world.`` is ``Hello,``; up to ``move`` of ``**Bold** move, friend.``
    it is ``**Bold** move,``. ``""`` if nothing was heard. Skipped text after the last spoken
    word (a code block, trailing whitespace) is not included.

    With word marks, pass the ``end`` of the last word heard (or the ``start`` of the first word
    not heard); an estimated position inside a word counts that word as heard. The length of
    the result is the original offset that was heard up to.
    """
    if len(original) != spoken.original_length:
        raise ValueError("spoken was not made from this original text")
    text = spoken.text
    end = min(max(spoken_end, 0), len(text))
    if end == 0:
        return ""
    if not text[end - 1].isspace():
        while end < len(text) and not text[end].isspace():
            end += 1
    while end > 0 and text[end - 1].isspace():
        end -= 1
    if end == 0:
        return ""
    o = spoken.original_span(end - 1)[1]
    limit = spoken.original_offset(end)
    while o < limit and not original[o].isspace():
        o += 1
    return original[:o]


class SpeakableStream:
    """Clean the successive pieces of one text (from :class:`SentenceBuffer`) for speech.

    Remembers across :meth:`feed` calls whether it is inside a fenced code block and whether the
    next piece starts a line (block markers such as ``- `` count only at the start of a line).
    Each :class:`Spoken` maps offsets within its own piece. Not thread-safe.
    """

    __slots__ = ("_code_blocks", "_fence", "_line_start")

    def __init__(self, *, code_blocks: CodeBlocks = "skip") -> None:
        if code_blocks not in ("skip", "read"):
            raise ValueError(f"code_blocks must be 'skip' or 'read', not {code_blocks!r}")
        self._code_blocks: CodeBlocks = code_blocks
        self._fence: tuple[str, int] | None = None
        self._line_start = True

    @property
    def code_blocks(self) -> CodeBlocks:
        return self._code_blocks

    @property
    def in_code_block(self) -> bool:
        """Whether the text fed so far ends inside an open code fence."""
        return self._fence is not None

    def feed(self, fragment: str) -> Spoken:
        """The spoken form of the next piece of the text."""
        conv = _Converter(fragment, read_code=self._code_blocks == "read")
        self._fence, self._line_start = conv.run(self._fence, self._line_start)
        return conv.builder.build(len(fragment))

    def reset(self) -> None:
        """Start a new text: outside any code block, at the start of a line."""
        self._fence = None
        self._line_start = True

    def __repr__(self) -> str:
        return (
            f"SpeakableStream(code_blocks={self._code_blocks!r}, "
            f"in_code_block={self.in_code_block})"
        )


def speakable(text: str, *, code_blocks: CodeBlocks = "skip") -> Spoken:
    """The spoken form of *text* on its own (a fresh :class:`SpeakableStream`'s first piece)."""
    return SpeakableStream(code_blocks=code_blocks).feed(text)


# --- building the spoken text -------------------------------------------------------------------

_NON_SPACE: Final = re.compile(r"\S+")
_CLOSING: Final = frozenset(".,;:!?)]}…")


class _Builder:
    """Spoken text and its runs, with whitespace collapsed as it is added."""

    __slots__ = ("_n", "_parts", "_runs", "_soft", "_space")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._runs: list[SpokenRun] = []
        self._n = 0
        # The source of a pending space (the first whitespace of the original since the last
        # word, else the replacement that asked for it), and whether only replacements asked
        # for it (then it is dropped before closing punctuation).
        self._space: tuple[int, int, bool] | None = None
        self._soft = False

    def _add(self, text: str, start: int, end: int, copied: bool) -> None:
        runs = self._runs
        last = runs[-1] if runs else None
        if (
            last is not None
            and copied
            and last.copied
            and last.original_start + (self._n - last.spoken_start) == start
        ):
            runs[-1] = last._replace(original_end=end)
        elif (
            last is None
            or copied
            or last.copied
            or (last.original_start, last.original_end) != (start, end)
        ):
            runs.append(SpokenRun(self._n, start, end, copied))
        self._parts.append(text)
        self._n += len(text)

    def _word(self, text: str, start: int, end: int, copied: bool) -> None:
        if self._space is not None:
            if self._n and not (self._soft and text[0] in _CLOSING):
                self._add(" ", *self._space)
            self._space = None
        self._add(text, start, end, copied)

    def space(self, start: int, end: int, copied: bool, *, soft: bool = False) -> None:
        if self._space is None or (self._soft and not soft):
            self._space = (start, end, copied)
            self._soft = soft

    def copy(self, s: str, start: int, end: int) -> None:
        """Add ``s[start:end]`` as it is (whitespace collapsed)."""
        pos = start
        for m in _NON_SPACE.finditer(s, start, end):
            if m.start() > pos:
                self.space(pos, pos + 1, True)
            self._word(m.group(), m.start(), m.end(), True)
            pos = m.end()
        if pos < end:
            self.space(pos, pos + 1, True)

    def replace(self, text: str, start: int, end: int) -> None:
        """Say *text* for ``original[start:end]`` (an empty span: insert it there).

        Spaces in *text* separate it from its neighbours but not from closing punctuation
        (``$5.`` -> ``5 dollars.``).
        """
        pos = 0
        for m in _NON_SPACE.finditer(text):
            if m.start() > pos:
                self.space(start, end, False, soft=True)
            self._word(m.group(), start, end, False)
            pos = m.end()
        if pos < len(text):
            self.space(start, end, False, soft=True)

    def build(self, original_length: int) -> Spoken:
        return Spoken("".join(self._parts), tuple(self._runs), original_length)


# --- the converter ------------------------------------------------------------------------------

_FENCE_OPEN: Final = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})(.*)")
_BREAK: Final = re.compile(r"[ \t]{0,3}([-*_=])(?:[ \t]*\1){2,}\s*")
_TABLE_RULE: Final = re.compile(r"[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+(?:[ \t]*:?-+:?)?\s*")
_QUOTE: Final = re.compile(r"[ \t]{0,3}>[ \t]?")
_HEADING: Final = re.compile(r"[ \t]{0,3}#{1,6}(?:[ \t]+|\Z)")
_HEADING_CLOSE: Final = re.compile(r"[ \t]+#+[ \t]*\Z")
_LIST: Final = re.compile(r"[ \t]*(?:[-*+•‣◦▪]|\d{1,9}[.)])[ \t]+(?:\[[ xX]\][ \t]+)?")

_URL: Final = re.compile(r"(?:(?:https?|ftp)://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._%+-]*@{_LABEL}(?:\.{_LABEL})+")
_URL_TRAIL: Final = ".,;:!?'\"*_~"
_AUTOLINK: Final = re.compile(r"<((?:https?|ftp)://[^\s<>]+|mailto:[^\s<>]+|[^\s<>@]+@[^\s<>@]+)>")
_COMMENT: Final = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG: Final = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)(?:\s[^<>]*)?/?>")
_BLOCK_TAGS_NAMES: Final = "br p div li ul ol tr td th table h1 h2 h3 h4 h5 h6 hr blockquote pre"
_BLOCK_TAGS: Final = frozenset(_BLOCK_TAGS_NAMES.split())
_ENTITY: Final = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_NUMBER: Final = re.compile(
    r"\d+(?:,\d{3})*(?:\.\d+)?(?:[ \t]+(?:thousand|million|billion|trillion)\b)?"
)
_CURRENCY: Final = {"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("pound", "pounds")}
_TRIGGERS: Final = frozenset("\\`![<*_~&%$€£°-=→#")
_DIGITS: Final = frozenset("0123456789")
_NOT_WORD_START: Final = frozenset("._%+-@/:")
_ASCII_PUNCT: Final = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_SENTENCE_MARKS: Final = frozenset(".!?…")


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def _host(url: str) -> str:
    """``https://user@www.Example.com:80/p?q`` -> ``example.com``."""
    scheme = _SCHEME.match(url)
    rest = url[scheme.end() :] if scheme is not None else url
    for sep in "/?#":
        rest = rest.split(sep, 1)[0]
    host = rest.rpartition("@")[2].split(":", 1)[0].lower()
    if host.startswith("www."):
        host = host[4:]
    return host


class _Converter:
    """One piece of text -> a :class:`_Builder`; block rules per line, then inline rules."""

    __slots__ = ("_lit", "_read", "_s", "builder")

    def __init__(self, s: str, *, read_code: bool) -> None:
        self._s = s
        self._read = read_code
        self._lit = 0  # start of the literal text not yet given to the builder
        self.builder = _Builder()

    def run(
        self, fence: tuple[str, int] | None, line_start: bool
    ) -> tuple[tuple[str, int] | None, bool]:
        """Convert the whole piece; return the fence state and whether it ends at a line start."""
        s, b = self._s, self.builder
        n = len(s)
        pos = 0
        while pos < n:
            nl = s.find("\n", pos)
            end = n if nl < 0 else nl
            if fence is not None:
                if line_start and self._closes(pos, end, fence):
                    fence = None
                elif self._read:
                    b.copy(s, pos, end)
            elif line_start:
                fence = self._block(pos, end)
            else:
                self._inline(pos, end)
            if nl < 0:
                line_start = line_start and not s[pos:].strip()
                break
            b.space(nl, nl + 1, True)
            line_start = True
            pos = nl + 1
        return fence, line_start

    def _closes(self, pos: int, end: int, fence: tuple[str, int]) -> bool:
        line = self._s[pos:end].strip()
        char, length = fence
        return len(line) >= length and line == char * len(line)

    def _block(self, pos: int, end: int) -> tuple[str, int] | None:
        """A line that starts a line: a fence opens, a break is dropped, markers go."""
        s = self._s
        m = _FENCE_OPEN.match(s, pos, end)
        if m is not None and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            return m.group(1)[0], len(m.group(1))
        if _BREAK.fullmatch(s, pos, end) is not None:
            return None
        start = pos
        while (q := _QUOTE.match(s, start, end)) is not None:
            start = q.end()
        if s.startswith("|", start):
            if _TABLE_RULE.fullmatch(s, start, end) is None:
                self._table_row(start, end)
            return None
        h = _HEADING.match(s, start, end)
        if h is not None:
            start = h.end()
            c = _HEADING_CLOSE.search(s, start, end)
            if c is not None:
                end = c.start()
        elif (li := _LIST.match(s, start, end)) is not None:
            start = li.end()
        self._inline(start, end)
        return None

    def _table_row(self, start: int, end: int) -> None:
        """``| a | b |`` -> ``a, b`` (empty cells skipped)."""
        s = self._s
        cells: list[tuple[int, int]] = []
        k = cell = start + 1
        while k < end:
            if s[k] == "\\":
                k += 2
                continue
            if s[k] == "|":
                cells.append((cell, k))
                cell = k + 1
            k += 1
        cells.append((cell, end))
        first = True
        for a, z in cells:
            while a < z and s[a].isspace():
                a += 1
            while z > a and s[z - 1].isspace():
                z -= 1
            if a == z:
                continue
            if not first:
                self.builder.replace(", ", a - 1, a - 1)
            first = False
            self._inline(a, z)

    # --- inline rules ---------------------------------------------------------------------------

    def _flush(self, i: int) -> None:
        if i > self._lit:
            self.builder.copy(self._s, self._lit, i)
        self._lit = i

    def _inline(self, lo: int, hi: int) -> None:
        s = self._s
        self._lit = i = lo
        while i < hi:
            c = s[i]
            j = -1
            if c in _TRIGGERS:
                j = self._symbol(i, lo, hi)
            elif c.isalnum() and (
                i == lo or not (s[i - 1].isalnum() or s[i - 1] in _NOT_WORD_START)
            ):
                j = self._url_or_email(i, hi)
            i = i + 1 if j < 0 else j
        self._flush(hi)

    def _symbol(self, i: int, lo: int, hi: int) -> int:
        """Markup or a symbol at *i*: emit it and return where to go on, or ``-1``."""
        s, b = self._s, self.builder
        c = s[i]
        nxt = s[i + 1] if i + 1 < hi else ""
        prev = s[i - 1] if i > lo else ""
        if c == "\\":
            if nxt in _ASCII_PUNCT:
                self._flush(i)
                self._lit = i + 1
                return i + 2
            return -1
        if c == "`":
            return self._code_span(i, hi)
        if c == "!":
            return self._link(i + 1, hi, i) if nxt == "[" else -1
        if c == "[":
            return self._link(i, hi, i)
        if c == "<":
            return self._angle(i, hi)
        if c in "*_~":
            return self._emphasis(i, lo, hi)
        if c == "&":
            return self._ampersand(i, hi)
        if c == "%":
            if prev in _DIGITS:
                return self._say(" percent ", i, i + 1)
            return -1
        if c in _CURRENCY:
            one, many = _CURRENCY[c]
            if nxt in _DIGITS:
                m = _NUMBER.match(s, i + 1, hi)
                assert m is not None
                self._flush(i)
                b.copy(s, i + 1, m.end())
                word = one if m.group() == "1" else many
                b.replace(f" {word} ", m.end(), m.end())
                self._lit = m.end()
                return m.end()
            if prev in _DIGITS:
                k = i - 1
                while k > lo and s[k - 1] in _DIGITS:
                    k -= 1
                single = s[k:i] == "1" and (k == lo or s[k - 1] not in ".,")
                return self._say(f" {one if single else many} ", i, i + 1)
            return -1
        if c == "°":
            unit = {"C": "Celsius", "F": "Fahrenheit"}.get(nxt)
            after = s[i + 2] if i + 2 < hi else ""
            if unit is not None and not after.isalpha():
                return self._say(f" degrees {unit} ", i, i + 2)
            return self._say(" degrees ", i, i + 1)
        if c in "-=":
            return self._say(" to ", i, i + 2) if nxt == ">" else -1
        if c == "→":
            return self._say(" to ", i, i + 1)
        if c == "#":
            if nxt in _DIGITS and not prev.isalnum():
                return self._say("number ", i, i + 1)
            return -1
        return -1  # pragma: no cover - every trigger is handled above

    def _say(self, text: str, start: int, end: int) -> int:
        self._flush(start)
        self.builder.replace(text, start, end)
        self._lit = end
        return end

    def _drop(self, start: int, end: int) -> int:
        self._flush(start)
        self._lit = end
        return end

    def _code_span(self, i: int, hi: int) -> int:
        s = self._s
        k = i
        while k < hi and s[k] == "`":
            k += 1
        n = k - i
        j = k
        while (j := s.find("`", j, hi)) >= 0:
            e = j
            while e < hi and s[e] == "`":
                e += 1
            if e - j == n:
                self._flush(i)
                self.builder.copy(s, k, j)
                self._lit = e
                return e
            j = e
        return self._drop(i, k)  # an unmatched backtick run

    def _bracket(self, i: int, hi: int, close: str) -> int:
        """The index of the bracket that closes the one at *i*, or ``-1``."""
        s = self._s
        opening = s[i]
        depth = 0
        k = i
        while k < hi:
            ch = s[k]
            if ch == "\\":
                k += 2
                continue
            if ch == opening:
                depth += 1
            elif ch == close:
                depth -= 1
                if depth == 0:
                    return k
            k += 1
        return -1

    def _link(self, i: int, hi: int, start: int) -> int:
        s = self._s
        close = self._bracket(i, hi, "]")
        if close < 0:
            return -1
        if start == i and s.startswith("^", i + 1):
            return self._drop(start, close + 1)  # a footnote reference
        after = s[close + 1] if close + 1 < hi else ""
        if after == "(":
            end = self._bracket(close + 1, hi, ")")
        elif after == "[":
            end = self._bracket(close + 1, hi, "]")
        else:
            return -1
        if end < 0:
            return -1
        self._flush(start)
        self._inline(i + 1, close)
        self._lit = end + 1
        return end + 1

    def _angle(self, i: int, hi: int) -> int:
        s = self._s
        m = _AUTOLINK.match(s, i, hi)
        if m is not None:
            self._flush(i)
            inner = m.group(1)
            a, z = m.span(1)
            if inner.lower().startswith("mailto:"):
                a += len("mailto:")
            if "://" in inner:
                self.builder.replace(f" {_host(inner)} ", a, z)
            else:
                self._email(a, z)
            self._lit = m.end()
            return m.end()
        m = _COMMENT.match(s, i, hi)
        if m is not None:
            return self._drop(i, m.end())
        m = _TAG.match(s, i, hi)
        if m is not None:
            if m.group(1).lower() in _BLOCK_TAGS:
                return self._say(" ", i, m.end())
            return self._drop(i, m.end())
        return -1

    def _emphasis(self, i: int, lo: int, hi: int) -> int:
        s = self._s
        c = s[i]
        k = i
        while k < hi and s[k] == c:
            k += 1
        if c == "~" and k - i < 2:
            return -1
        before = s[i - 1] if i > lo else " "
        after = s[k] if k < hi else " "
        opens = not after.isspace() and (
            not _is_punct(after) or before.isspace() or _is_punct(before)
        )
        closes = not before.isspace() and (
            not _is_punct(before) or after.isspace() or _is_punct(after)
        )
        inside_word = before.isalnum() and after.isalnum()
        if not (opens or closes) or (
            inside_word and (c == "_" or before.isdigit() or after.isdigit())
        ):
            return k  # literal: the whole run stays in the literal text
        return self._drop(i, k)

    def _ampersand(self, i: int, hi: int) -> int:
        m = _ENTITY.match(self._s, i, hi)
        if m is not None:
            decoded = html.unescape(m.group())
            if decoded != m.group() and not _SENTENCE_MARKS.intersection(decoded):
                text = " and " if decoded == "&" else decoded
                return self._say(text, i, m.end())
        return self._say(" and ", i, i + 1)

    def _url_or_email(self, i: int, hi: int) -> int:
        s = self._s
        m = _URL.match(s, i, hi)
        if m is not None:
            end = m.end()
            while end > i:
                ch = s[end - 1]
                if ch in _URL_TRAIL or (
                    ch in ")]" and s.count(ch, i, end) > s.count("(" if ch == ")" else "[", i, end)
                ):
                    end -= 1
                else:
                    break
            host = _host(s[i:end])
            if host:
                return self._say(host, i, end)
            return -1
        m = _EMAIL.match(s, i, hi)
        if m is not None:
            self._flush(i)
            self._email(i, m.end())
            self._lit = m.end()
            return m.end()
        return -1

    def _email(self, start: int, end: int) -> None:
        at = self._s.index("@", start, end)
        self.builder.copy(self._s, start, at)
        self.builder.replace(" at ", at, at + 1)
        self.builder.copy(self._s, at + 1, end)
