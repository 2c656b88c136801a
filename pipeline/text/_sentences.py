"""Incremental, chunk-invariant sentence segmentation for text-to-speech.

:class:`SentenceBuffer` receives LLM output in arbitrary chunks and hands back complete
sentences as soon as they can be decided, so that speech synthesis can start early.

Guarantees
==========

* **Lossless.** The concatenation of every piece returned by :meth:`SentenceBuffer.feed` and
  :meth:`SentenceBuffer.flush` equals the concatenation of everything fed, character for
  character. Whitespace after a sentence stays with that sentence, so a piece never starts with
  whitespace except at the very start of a segment. No piece is ever the empty string.
* **Chunk-invariant.** Within a segment (the text fed between two ``flush()``/``reset()`` calls)
  the sequence of pieces does not depend on how the text was split into chunks, down to one
  character per call.

Algorithm
=========

A scanner walks the held text once, left to right, keeping a position and a little state (start
of the current piece, whether it is inside a code fence, the list-marker style the piece began
with, whether any piece of the segment was released yet). At each interesting character it makes
a *boundary decision* that may look a bounded distance backwards (at most ~130 characters; a tail
of already-released text is kept for this) and a bounded distance forwards.

Forward reads all go through one accessor (or read the buffer directly where the character is
known to be there) which, when the character is not there yet, aborts the
decision (``_NeedMore``); the scanner then keeps its position and retries when more text arrives.
At :meth:`~SentenceBuffer.flush` the accessor reports the end of the text instead. Because a
decision can only ever see characters that are identical in the full text, and never "the end of
the current chunk", the result is a function of the text alone: that is what makes the output
chunk-invariant. The price is latency: a sentence is released only once the start of the next
one (its first letter, sometimes its first word) has arrived, or at ``flush()``.

Streaming fast path: when the scanner has caught up with the text in the middle of a plain piece,
a chunk with no terminal mark, newline or fence character (or only one terminal mark, at its
end) is taken without a scan: the scan would skip it whole (and stop at that mark to wait for the
next character). Most LLM tokens are such words.

Rules, in short:

* ``!``, ``?`` (and runs such as ``?!``) end a sentence when followed by whitespace and a
  character that is not a lower-case letter; closing quotes and brackets after the mark belong to
  the sentence (``He said "Hi." Then`` splits after the quote).
* A period ends a sentence when followed by whitespace and an upper-case letter or a digit, unless
  the word before it is an abbreviation. Abbreviations come in kinds: titles (``Mr.``, ``Dr.``,
  ``St.``) never end a sentence before a capitalised word; ``e.g.``, ``i.e.``, ``vs.`` never do;
  ``No.``, ``p.``, ``Fig.``, ``Dec.`` do not before a number; company/suffix abbreviations
  (``Inc.``, ``Co.``, ``Jr.``) and dotted acronyms (``U.S.``, ``E.U.``) do only when the next word
  is a common sentence opener (``The``, ``It``, ``How``...); ``a.m.``/``p.m.`` do unless the
  sentence so far is only an introductory time phrase (``At 5 a.m. Mr. Smith ...``); single
  capital letters are initials (``J. R. R. Tolkien``) unless they look like the pronoun ``I``
  after a lower-case word or are followed by a sentence opener. A period followed directly by a
  non-space character (``$29.95``, ``v1.2.3``, ``example.ai``, e-mail addresses, URLs) never
  ends a sentence, except ``word.Word`` glued sentences (``world.Today is``).
* Ellipses: ``...``/``…`` attached to a word end a sentence before a capital letter; a
  free-standing three-dot ellipsis (``is . . . I``) does not, a four-dot one does; ``[...]``
  never does; ``word. . . . The`` splits after the first period.
* A newline ends a sentence, unless the line ends in a space and the next one starts with a
  lower-case letter or ``(`` (a wrapped line). Blank lines therefore always end one.
* Numbered or lettered list items (``1. a 2. b``, ``1.) a 2.) b``, ``a. x b. y``, ``• 9. x
  • 10. y``) are split before the next consecutive marker.
* A Markdown code fence (a line starting with at least three backticks or tildes) is never split
  (``max_chars`` is the one exception, see the class); the whole block, up to and including
  its closing fence and the whitespace after it, is one piece, released once the fence has
  closed and the next visible character (or ``flush()``) arrives. ``flush()`` releases an
  unclosed fence whole.

Limits
======

Heuristic, English-centred rules: a period after a word that is both an abbreviation and a
sentence end (``in the U.S. Government`` versus ``in the U.S. How``) is decided by a short list
of sentence openers and will sometimes be wrong. Identifiers such as ``pathlib.Path`` written
without backticks look like glued sentences (``world.Today``) and are split. Lines broken
mid-sentence (hard-wrapped text) are split at each line. Closing quotes that are also
apostrophes are resolved by the following letter only. Pieces are never cleaned: markup and
whitespace are kept as they were.
"""

# Typographic punctuation (full-width stops, curly quotes, dashes) is intentional here.
# ruff: noqa: RUF001

from __future__ import annotations

import re
from typing import Final

from ._graphemes import last_safe_cut

__all__ = ["SentenceBuffer"]


class _NeedMore(Exception):
    """A boundary decision needs characters that have not been fed yet."""


# --- character classes (frozensets: ``"" in "abc"`` is True, ``"" in frozenset(...)`` is not)

_DOTS: Final = frozenset(".…")
_STRONG: Final = frozenset("!?‽⁇⁈⁉")
_CJK_TERM: Final = frozenset("。．！？｡")
_TERM: Final = _DOTS | _STRONG | _CJK_TERM
_CLOSERS: Final = frozenset("\"'”’)]}»›*_`」』）】〕")
_APOSTROPHES: Final = frozenset("'’")
_OPENERS: Final = frozenset("\"'“‘([{«‹*_`¿¡「『（【〔")
_OPENERS_STR: Final = "".join(sorted(_OPENERS))
_BULLETS: Final = frozenset("•⁃‣◦▪")
_FENCE_CHARS: Final = frozenset("`~")
_CLAUSE: Final = frozenset(",;:")
_DASHES: Final = frozenset("—–")
_HSPACE: Final = frozenset(" \t")
_HSPACE_CR: Final = frozenset(" \t\r")
_ASCII_DIGITS: Final = frozenset("0123456789")
_ASCII_LETTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_MARKER_START: Final = _BULLETS | _ASCII_DIGITS | _ASCII_LETTERS

# Characters the scanner may skip without a decision (outside fences, once a piece has content).
_BORING: Final = re.compile(r"[^.…!?‽⁇⁈⁉。．！？｡\n`~]+")
# The same when list-marker or clause checks are active (they look at spaces and punctuation).
_BORING_STRICT: Final = re.compile(r"[^.…!?‽⁇⁈⁉。．！？｡\n`~ \t,;:—–\-]+")
# Chunks the scan skips whole once it has caught up in a piece with content (see ``_settle``),
# possibly ending in one terminal mark (the scan stops there to wait for the next character).
_QUIET: Final = re.compile(r"[^.…!?‽⁇⁈⁉。．！？｡\n`~]*([.…!?‽⁇⁈⁉。．！？｡])?")
# The same while the first-fragment clause check is active (clause marks and dashes decide).
_QUIET_FIRST: Final = re.compile(r"[^.…!?‽⁇⁈⁉。．！？｡\n`~,;:—–\-]*([.…!?‽⁇⁈⁉。．！？｡])?")
# Inside a list item, where a space may precede the next marker: letters, or one space and at
# least two letters (no marker starts that way: a letter marker is one letter and a period).
_QUIET_LIST: Final = re.compile(r"(?: [^\W\d_]{2,}|[^\W\d_]*)([.…!?‽⁇⁈⁉。．！？｡])?")
_BORING_FENCE: Final = re.compile(r"[^`~]+")
_LAST_WS: Final = re.compile(r".*\s", re.DOTALL)
_NON_WS: Final = re.compile(r"\S")

# Token shapes.
_MULTI_PERIOD: Final = re.compile(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}")
_GLUED_LEFT: Final = re.compile(r"[\"'“‘(\[]*(?:[^\W\d_]{2,}|\d{1,3}(?:,\d{3})+|\d+)")
_INTRO_TIME: Final = re.compile(
    r"(?:at|by|before|after|until|till|from|around|about|since|circa)\s+\d{1,2}(?::\d{2})?\s*",
    re.IGNORECASE,
)

# --- abbreviations (lower case, without the final period) -----------------------------------

# Titles and place prefixes: they precede a name, so a capitalised word follows them.
_PREPOSITIVE_WORDS: Final = (
    "mr mrs ms mx dr prof rev fr hon sen rep gov gen col capt cpt cmdr lt sgt maj adm pres "
    "supt messrs mme mlle st mt ft pt sra srta"
)
_PREPOSITIVE: Final = frozenset(_PREPOSITIVE_WORDS.split())
# Never the last word of a sentence.
_NEVER_FINAL_WORDS: Final = "e.g i.e eg ie cf viz vs approx incl esp resp ca"
_NEVER_FINAL: Final = frozenset(_NEVER_FINAL_WORDS.split())
# Precede a number: ``No. 5``, ``p. 55``, ``Fig. 3``, ``Dec. 31``.
_NUMERIC_WORDS: Final = (
    "no nos nr n° nº p pp vol vols fig figs ch chap sec secs art arts para eq eqs ref refs tel "
    "ext op ed ver pg jan feb mar apr jun jul aug sep sept oct nov dec"
)
_NUMERIC: Final = frozenset(_NUMERIC_WORDS.split())
# Follow a name; may well end a sentence.
_GENERAL_WORDS: Final = (
    "inc co corp ltd llc plc jr sr bros dept univ assn est al ave blvd rd hwy mfg intl govt assoc"
)
_GENERAL: Final = frozenset(_GENERAL_WORDS.split())
# Words that commonly open an English sentence; used where a period after an abbreviation is
# followed by a capitalised word (``U.S. How`` versus ``U.S. Government``).
_STARTER_WORDS: Final = """
    A An The This That These Those It Its It's I I'm I've I'd I'll He She We They You Your My
    Our Their His Her Hers There Here Then Now So But And Or Nor Yet However Also Still Thus Hence
    Therefore Moreover Furthermore In On At For If When While After Before Since As Because
    Although Though Unless Until What Who Whom Whose Why How Where Which Is Are Was Were Be Do
    Does Did Don't Doesn't Didn't Can Can't Could Will Won't Would Should Shall May Might Must
    Have Has Had Let Let's Please Yes No Not Some Many Much Most All Each Every Any One Both
    Either Neither Just Even Only First Second Next Last Finally Meanwhile Instead Otherwise
    Today Yesterday Tomorrow Maybe Perhaps Well Oh Hi Hello Thanks Thank Note See To From With
    Without By Of Over Under Another Other Such Once"""
_STARTERS: Final = frozenset(_STARTER_WORDS.split())

_CTX: Final = 256  # released text kept for look-behind (decisions look back < 130 chars)
_MAX_LOOK: Final = 64  # bound on most forward and backward scans


class SentenceBuffer:
    """Accumulate streamed text and release it sentence by sentence.

    ``feed(text)`` returns the pieces completed so far; ``flush()`` returns the rest and starts a
    fresh segment; ``reset()`` drops what is held. See the module docstring for the rules and the
    guarantees (lossless, chunk-invariant).

    Not thread-safe: use one instance from one task at a time. The buffer has no clock; a stage
    around it releases a stalled sentence by calling :meth:`flush`.

    Memory is bounded: at most about ``max_chars + 400`` characters are held (the pending piece,
    a bounded look-ahead and a 256-character tail of released text used for look-behind). A
    piece that reaches ``max_chars`` characters without a boundary is released at its last
    whitespace (the last newline inside a code fence; a hard cut just before ``max_chars``, at
    a grapheme cluster boundary, if there is no whitespace). This also applies inside code
    fences, so a fence longer than ``max_chars`` is released in several pieces cut at line
    ends. Like every other decision it depends only on the text, so it is chunk-invariant too.

    ``first_fragment_min_chars`` enables a fast path for time to first audio: the *first* piece
    of each segment may end early at a clause boundary (``,``, ``;``, ``:`` or a dash, followed
    by a space) once it is at least that many characters long (leading whitespace not counted).
    Small values (10-20) start speech sooner but make the first utterance choppier; 30-60 keeps
    the first fragment a natural phrase. ``None`` (the default) disables it.

    ``first_fragment_max_chars`` bounds that first piece as ``max_chars`` bounds every piece: a
    first sentence with no clause boundary is cut at its last whitespace before that many
    characters (for speech: the first words go to the engine while the model is still writing
    the rest of a long sentence). ``None`` (the default): no such bound.
    """

    __slots__ = (
        "_absorbing",
        "_buf",
        "_content_start",
        "_emitted",
        "_fence",
        "_ffm",
        "_ffmax",
        "_final",
        "_first_fast",
        "_has_content",
        "_lim",
        "_list",
        "_max",
        "_off",
        "_pos",
        "_quiet",
        "_quiet_stop",
        "_start",
    )
    # Segment state, set by reset().
    _buf: str
    _off: int
    _start: int
    _pos: int
    _absorbing: bool
    _has_content: bool
    _content_start: int
    _list: tuple[str, str, str, int] | None
    _fence: tuple[str, int] | None
    _emitted: int
    _lim: int
    _first_fast: bool
    _quiet_stop: int
    _quiet: re.Pattern[str]

    def __init__(
        self,
        *,
        first_fragment_min_chars: int | None = None,
        max_chars: int = 2000,
        first_fragment_max_chars: int | None = None,
    ):
        if first_fragment_min_chars is not None and first_fragment_min_chars < 1:
            raise ValueError("first_fragment_min_chars must be None or a positive integer")
        if first_fragment_max_chars is not None and not 1 <= first_fragment_max_chars <= max_chars:
            raise ValueError("first_fragment_max_chars must be None or between 1 and max_chars")
        self._ffmax: int | None = first_fragment_max_chars
        if max_chars < 16:
            raise ValueError("max_chars must be at least 16")
        self._ffm: int | None = first_fragment_min_chars
        self._max: int = max_chars
        self._final = False
        self.reset()

    # --- public API -------------------------------------------------------------------------

    @property
    def first_fragment_min_chars(self) -> int | None:
        """The first-fragment fast-path threshold, or ``None`` when disabled."""
        return self._ffm

    @property
    def max_chars(self) -> int:
        """Longest piece released without a boundary (see the class docstring)."""
        return self._max

    @property
    def pending(self) -> str:
        """The text held and not yet returned (read-only)."""
        return self._buf[self._start - self._off :]

    def feed(self, text: str) -> list[str]:
        """Add *text*; return the pieces (sentences) that are now complete, in order."""
        if not isinstance(text, str):
            raise TypeError(f"feed() expects str, got {type(text).__name__}")
        if self._pos + len(text) < self._quiet_stop:
            m = self._quiet.fullmatch(text)
            if m is not None:
                # Nothing here needs a decision (but a final terminal mark, which waits for the
                # next character): exactly what the scan would do, without the scan.
                self._buf += text
                if m.start(1) < 0:
                    self._pos += len(text)
                else:
                    self._pos += len(text) - 1
                    self._quiet_stop = -1
                return []
        if not text:
            return []
        self._buf += text
        out: list[str] = []
        self._run(out)
        self._trim()
        self._settle()
        return out

    def flush(self) -> list[str]:
        """Return everything held, split into sentences, and start a fresh segment."""
        out: list[str] = []
        self._final = True
        try:
            self._run(out)
        finally:
            self._final = False
        rest = self._buf[self._start - self._off :]
        if rest:
            out.append(rest)
        self.reset()
        return out

    def reset(self) -> None:
        """Drop everything held and start a fresh segment."""
        self._buf = ""
        self._off = 0  # absolute position of self._buf[0]
        self._start = 0  # absolute start of the current piece
        self._pos = 0  # absolute scan position
        self._absorbing = False
        self._has_content = False
        self._content_start = 0
        self._list = None
        self._fence = None
        self._emitted = 0
        # While no piece was released: the first-fragment limit and clause fast path.
        self._lim = self._max if self._ffmax is None else self._ffmax
        self._first_fast = self._ffm is not None
        self._quiet_stop = -1
        self._quiet = _QUIET

    def __repr__(self) -> str:
        return (
            f"SentenceBuffer(first_fragment_min_chars={self._ffm!r}, max_chars={self._max!r}, "
            f"first_fragment_max_chars={self._ffmax!r}, "
            f"pending={len(self.pending)} chars)"
        )

    # --- text access ------------------------------------------------------------------------

    def _at(self, i: int) -> str:
        """Character at absolute position *i* (at or after the scan position).

        Raises ``_NeedMore`` if it has not arrived; returns ``""`` past the end during flush.
        """
        k = i - self._off
        if k < len(self._buf):
            return self._buf[k]
        if self._final:
            return ""
        raise _NeedMore

    def _before(self, i: int) -> str:
        """Character just before absolute position *i*, ``""`` at the segment start."""
        if i <= 0:
            return ""
        return self._buf[i - 1 - self._off]

    def _slice(self, a: int, b: int) -> str:
        return self._buf[a - self._off : b - self._off]

    # --- driver -----------------------------------------------------------------------------

    def _run(self, out: list[str]) -> None:
        try:
            while self._pos < self._off + len(self._buf):
                if self._absorbing:
                    self._step_absorb(out)
                elif self._fence is not None:
                    self._step_fence(out)
                else:
                    self._step_text(out)
        except _NeedMore:
            pass

    def _settle(self) -> None:
        """Enable feed()'s fast path if the scanner waits in a piece's text at the end of it.

        There, a chunk that ``_quiet`` matches is skipped whole by the scan (but a final
        terminal mark); ``_quiet_stop`` is where the current piece reaches its limit (``-1``: no
        fast path). Only the scan changes what this depends on, so feed() calls it after every
        scan, and the fast path turns itself off when it stops at a terminal mark.
        """
        quiet = (
            self._has_content
            and not self._absorbing
            and self._fence is None
            and self._pos == self._off + len(self._buf)
        )
        self._quiet_stop = self._start + self._lim if quiet else -1
        if self._list is not None:
            self._quiet = _QUIET_LIST
        elif self._first_fast:
            self._quiet = _QUIET_FIRST
        else:
            self._quiet = _QUIET

    def _trim(self) -> None:
        keep = self._start - _CTX
        if keep - self._off > _CTX:
            self._buf = self._buf[keep - self._off :]
            self._off = keep

    def _emit(self, out: list[str], end: int) -> None:
        piece = self._slice(self._start, end)
        if piece:
            out.append(piece)
            if not self._emitted:
                self._lim = self._max
                self._first_fast = False
            self._emitted += 1
        self._start = end
        self._absorbing = False
        self._has_content = False
        self._content_start = end
        self._list = None

    def _boundary(self, end: int) -> None:
        """The current piece ends at *end* plus the whitespace that follows it."""
        self._pos = end
        self._absorbing = True

    def _force_cut(self, out: list[str]) -> None:
        """The piece reached its limit without a boundary: cut it (text-determined)."""
        limit = self._lim
        window = self._slice(self._start, self._start + limit)
        cut = -1
        if self._fence is not None:
            i = window.rfind("\n")
            if i >= 0 and window[: i + 1].strip():
                cut = i + 1
        if cut < 0:
            m = _LAST_WS.match(window)
            if m is not None and window[: m.end()].strip():
                cut = m.end()
        if cut < 0:
            # No whitespace at all: cut at the last grapheme boundary inside the window (the
            # character after the cut is in the window, so the choice depends on text only).
            cut = last_safe_cut(window, limit - 1) or limit
        self._emit(out, self._start + cut)
        # The rest of the new piece was already scanned; recompute what the scanner knows.
        m2 = _NON_WS.search(self._buf, self._start - self._off, self._pos - self._off)
        if m2 is not None:
            self._has_content = True
            self._content_start = m2.start() + self._off

    # --- steps ------------------------------------------------------------------------------

    def _step_absorb(self, out: list[str]) -> None:
        buf, off = self._buf, self._off
        pos, stop = self._pos, min(self._start + self._lim, off + len(buf))
        while pos < stop and buf[pos - off].isspace():
            pos += 1
        self._pos = pos
        if pos < off + len(buf):  # else the next character decides (or flush() releases)
            self._emit(out, pos)

    def _step_fence(self, out: list[str]) -> None:
        assert self._fence is not None
        pos = self._pos
        if pos - self._start >= self._lim:
            self._force_cut(out)
            return
        c = self._at(pos)
        fch, flen = self._fence
        if c == fch and self._at_line_start(pos):
            run = self._run_length(pos, c)
            if run >= flen:
                k = pos + run
                n = 0
                while n < 16 and self._at(k) in _HSPACE:
                    k += 1
                    n += 1
                if self._at(k) in ("", "\n", "\r"):
                    self._fence = None
                    self._boundary(pos + run)
                    return
            self._pos = pos + run
            return
        self._skip(pos, _BORING_FENCE)

    def _step_text(self, out: list[str]) -> None:
        pos = self._pos
        if pos - self._start >= self._lim:
            self._force_cut(out)
            return
        c = self._buf[pos - self._off]  # the driver calls a step only before the end
        if not self._has_content:
            if c.isspace():
                self._pos = pos + 1
                return
            if c in _FENCE_CHARS and self._at_line_start(pos):
                run = self._run_length(pos, c)
                if run >= 3:
                    self._fence = (c, run)
                    self._has_content = True
                    self._content_start = pos
                    self._pos = pos + run
                    return
            marker = self._parse_marker(pos)
            self._has_content = True
            self._content_start = pos
            if marker is not None:
                self._list = marker[0]
                self._pos = marker[1]
                return
        elif c in _FENCE_CHARS and self._at_line_start(pos) and self._run_length(pos, c) >= 3:
            # A fence opens: end the current piece first (normally a newline already did).
            self._boundary(pos)
            return
        if c == "\n":
            self._newline(pos)
        elif c in _TERM:
            self._terminal(pos)
        elif c in _HSPACE and self._list is not None and not self._before(pos).isspace():
            self._list_check(pos)
        elif self._first_fast and (c in _CLAUSE or c in _DASHES or c == "-"):
            self._clause(pos, c)
        else:
            strict = self._list is not None or self._first_fast
            self._skip(pos, _BORING_STRICT if strict else _BORING)

    def _skip(self, pos: int, boring: re.Pattern[str]) -> None:
        """Advance over characters that need no decision (at least one)."""
        limit = min(len(self._buf), self._start + self._lim - self._off)
        m = boring.match(self._buf, pos - self._off, limit)
        self._pos = m.end() + self._off if m is not None and m.end() > pos - self._off else pos + 1

    # --- helpers ----------------------------------------------------------------------------

    def _at_line_start(self, pos: int) -> bool:
        k = pos
        for _ in range(8):
            b = self._before(k)
            if b in ("", "\n"):
                return True
            if b not in _HSPACE:
                return False
            k -= 1
        return False

    def _run_length(self, pos: int, ch: str) -> int:
        n = 0
        while n < _MAX_LOOK and self._at(pos + n) == ch:
            n += 1
        return n

    def _parse_marker(self, j: int) -> tuple[tuple[str, str, str, int], int] | None:
        """Parse a list marker (``1.``, ``2)``, ``3.)``, ``a.``, ``• 9.``) followed by a space."""
        at, buf, off = self._at, self._buf, self._off
        end = off + len(buf)
        ch = buf[j - off] if j < end else at(j)
        if ch not in _MARKER_START:
            return None  # the common case
        bullet = ""
        if ch in _BULLETS:
            bullet = ch
            j += 1
            n = 0
            while n < 3 and at(j) in _HSPACE:
                j += 1
                n += 1
            ch = at(j)
        if ch in _ASCII_DIGITS:
            k = j
            while k - j < 4 and at(k) in _ASCII_DIGITS:
                k += 1
            if k - j > 3:
                return None
            kind, value = "num", int(self._slice(j, k))
            j = k
        elif ch in _ASCII_LETTERS:
            kind, value = ("upper" if ch.isupper() else "lower"), ord(ch)
            j += 1
        else:
            return None
        p = buf[j - off] if j < end else at(j)
        if p == ".":
            if at(j + 1) == ")":
                punct, j = ".)", j + 2
            else:
                punct, j = ".", j + 1
        elif p == ")":
            punct, j = ")", j + 1
        else:
            return None
        if at(j) not in _HSPACE:
            return None
        return (bullet, kind, punct, value), j

    def _list_check(self, pos: int) -> None:
        """Inside a list item: split before the next consecutive marker."""
        assert self._list is not None
        at, buf, off = self._at, self._buf, self._off
        end = off + len(buf)
        j = pos
        while j - pos < 16 and (buf[j - off] if j < end else at(j)) in _HSPACE:
            j += 1
        if self._at(j) not in ("", "\n", "\r") and j - pos < 16:
            marker = self._parse_marker(j)
            if marker is not None:
                bullet, kind, punct, value = self._list
                if marker[0] == (bullet, kind, punct, value + 1):
                    self._boundary(pos)
                    return
        self._pos = pos + 1

    def _clause(self, pos: int, c: str) -> None:
        """First-fragment fast path: maybe end the first piece at a clause boundary."""
        assert self._ffm is not None
        nxt = self._at(pos + 1)
        ok = nxt in _HSPACE and (c != "-" or self._before(pos) in _HSPACE)
        if ok and pos + 1 - self._content_start >= self._ffm:
            self._boundary(pos + 1)
        else:
            self._pos = pos + 1

    def _newline(self, pos: int) -> None:
        prev = self._before(pos)
        if prev not in _HSPACE:
            self._boundary(pos)
            return
        j = pos + 1
        while j - pos <= _MAX_LOOK and self._at(j) in _HSPACE_CR:
            j += 1
        nxt = self._at(j)
        if j - pos <= _MAX_LOOK and (nxt.islower() or nxt == "("):
            self._pos = pos + 1  # a wrapped line: "It was a cold \nnight"
        else:
            self._boundary(pos)

    def _next_visible(self, k: int) -> tuple[int, bool]:
        """Skip whitespace from *k*: (position after it, whether it contained a newline).

        The position is ``-1`` if the whitespace run is longer than the look-ahead bound.
        """
        at, buf, off = self._at, self._buf, self._off
        end = off + len(buf)
        j = k
        newline = False
        while True:
            ch = buf[j - off] if j < end else at(j)
            if not ch.isspace():
                return j, newline
            if ch == "\n":
                newline = True
            j += 1
            if j - k > _MAX_LOOK:
                return -1, newline

    def _skip_openers(self, j: int) -> int:
        buf, off = self._buf, self._off
        end = off + len(buf)
        k = j
        while k - j < 4 and (buf[k - off] if k < end else self._at(k)) in _OPENERS:
            k += 1
        return k

    def _next_word(self, j: int) -> tuple[str, str]:
        """The word (letters and apostrophes) starting at *j*, and the character after it."""
        at, buf, off = self._at, self._buf, self._off
        end = off + len(buf)
        k = j
        while k - j < 16:
            ch = buf[k - off] if k < end else at(k)
            if not (ch.isalpha() or (ch in _APOSTROPHES and k > j)):
                break
            k += 1
        return buf[j - off : k - off], at(k)

    def _is_starter(self, j: int) -> bool:
        word, after = self._next_word(j)
        if not word or (after == "." and len(word) <= 3) or len(word) >= 16:
            return False
        word = word.replace("’", "'")
        return word in _STARTERS or word.startswith("I'")

    def _token_before(self, pos: int) -> tuple[str, int]:
        """The non-space run ending at *pos* (within the current piece) and its start.

        The run is ``""`` if it is longer than the look-behind bound.
        """
        buf, off, start = self._buf, self._off, self._start
        j = pos
        while pos - j < _MAX_LOOK:
            if j <= start or buf[j - 1 - off].isspace():  # start >= 0: covers the segment start
                return buf[j - off : pos - off], j
            j -= 1
        return "", j

    def _prev_word(self, tok_start: int) -> str:
        k = tok_start
        n = 0
        while n < 16 and self._before(k).isspace():
            k -= 1
            n += 1
        end = k
        n = 0
        while n < 32:
            b = self._before(k)
            if b == "" or b.isspace():
                break
            k -= 1
            n += 1
        return self._slice(k, end)

    # --- terminal punctuation ---------------------------------------------------------------

    def _terminal(self, pos: int) -> None:
        # Reads go straight to the buffer while the text is there (hot path), else to _at.
        at, buf, off = self._at, self._buf, self._off
        end = off + len(buf)
        # The run of terminal marks, including spaced dots (". . .").
        j = pos
        dots = 0
        strong = cjk = spaced = False
        while j - pos < _MAX_LOOK:
            ch = buf[j - off] if j < end else at(j)
            if ch == ".":
                dots += 1
            elif ch == "…":
                dots += 3
            elif ch in _STRONG:
                strong = True
            elif ch in _CJK_TERM:
                cjk = True
            elif (
                ch == " "
                and buf[j - 1 - off] == "."
                and (buf[j + 1 - off] if j + 1 < end else at(j + 1)) == "."
            ):
                spaced = True
            else:
                break
            j += 1
        run_end = j
        # Closing quotes and brackets; an apostrophe followed by a letter is not one.
        k = run_end
        apostrophe = False
        while k - run_end < 8:
            ch = buf[k - off] if k < end else at(k)
            if ch in _APOSTROPHES and at(k + 1).isalpha():
                apostrophe = True
                break
            if ch not in _CLOSERS:
                break
            k += 1
        cl_end = k
        t = buf[cl_end - off] if cl_end < end else at(cl_end)
        prev = buf[pos - 1 - off] if pos > 0 else ""
        attached = prev != "" and not prev.isspace()

        if cjk:
            self._boundary(cl_end)
            return
        if apostrophe or (t != "" and not t.isspace()):
            # Directly followed by text: "$29.95", "example.ai", "Jr.'s", "...see", "Y!J".
            if (
                not strong
                and dots == 1
                and not apostrophe
                and cl_end == run_end
                and self._glued(pos)
            ):
                self._boundary(pos + 1)
            else:
                self._pos = run_end
            return
        if t == "":
            self._boundary(cl_end)
            return
        # Whitespace follows.
        nxt, newline = self._next_visible(cl_end)
        if newline:
            self._pos = run_end  # the newline rule decides
            return
        if nxt < 0:
            self._boundary(cl_end)
            return
        w = self._skip_openers(nxt)
        w0 = buf[w - off] if w < end else at(w)
        if w0 == "":
            self._boundary(cl_end)
            return

        if strong:
            if attached and not w0.islower():
                self._boundary(cl_end)
            else:
                self._pos = run_end
            return

        if dots >= 2:  # an ellipsis
            if prev in ("[", "(") and at(run_end) in ("]", ")"):
                ok = False  # "[...]": an omission
            elif not attached:
                ok = dots >= 4 and w0.isupper()
            elif spaced and dots >= 4 and cl_end == run_end:
                if w0.isupper():
                    self._boundary(pos + 1)  # "word. . . . The": the period ends it
                    return
                ok = False
            else:
                ok = w0.isupper()
            if ok:
                self._boundary(cl_end)
            else:
                self._pos = run_end
            return

        if self._period_ends(pos, w, w0):
            self._boundary(cl_end)
        else:
            self._pos = run_end

    def _glued(self, pos: int) -> bool:
        """``world.Today is``: a sentence end without a space after the period."""
        nxt = self._at(pos + 1)
        if not nxt.isupper():
            return False
        token, _ = self._token_before(pos)
        if not token or _GLUED_LEFT.fullmatch(token) is None:
            return False
        core = token.lstrip(_OPENERS_STR).lower()
        if core in _PREPOSITIVE or core in _NEVER_FINAL or core in _NUMERIC or core in _GENERAL:
            return False
        word, after = self._next_word(pos + 1)
        if len(word) < 2 or len(word) >= 16 or not any(ch.islower() for ch in word[1:]):
            return False
        if any(ch.isupper() for ch in word[1:]):
            return False  # CamelCase: an identifier
        if after == "" or after.isspace() or after in _CLAUSE or after in _STRONG:
            return True
        if after == ".":
            a2 = self._at(pos + 1 + len(word) + 1)
            return a2 == "" or a2.isspace()
        return False

    def _period_ends(self, pos: int, w: int, w0: str) -> bool:
        """Does the single period at *pos* end a sentence? *w0* (at *w*) starts the next word."""
        if w0.islower():
            return False
        token, tok_start = self._token_before(pos)
        core = token.lstrip(_OPENERS_STR)
        low = core.lower()
        if len(core) == 1 and core.isalpha():
            kind = "initial"
        elif low in ("a.m", "p.m"):
            kind = "ampm"
        elif low in _NEVER_FINAL:
            kind = "never"
        elif low in _PREPOSITIVE:
            kind = "title"
        elif low in _NUMERIC:
            kind = "numeric"
        elif low in _GENERAL:
            kind = "general"
        elif _MULTI_PERIOD.fullmatch(core) is not None:
            kind = "acronym"
        else:
            kind = "plain"
        if w0.isdigit():
            return kind == "plain"
        if not w0.isupper():
            return kind in ("plain", "numeric")  # symbol, emoji, caseless script
        if kind in ("plain", "numeric"):
            return True
        if kind in ("title", "never"):
            return False
        if kind in ("general", "acronym"):
            return self._is_starter(w)
        if kind == "ampm":
            before = self._slice(self._content_start, tok_start)
            return _INTRO_TIME.fullmatch(before) is None
        # A single letter: an initial, unless it looks like a sentence end.
        if tok_start <= self._content_start:
            return False
        if self._is_starter(w):
            return True
        if core == "I":
            prev = self._prev_word(tok_start).lstrip(_OPENERS_STR)
            return not (prev[:1].isupper() or prev[:1].isdigit())
        return False
