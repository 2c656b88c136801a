"""Where text may be cut without splitting a user-perceived character.

:func:`can_break` answers "may a chunk end between these two characters?" following the
extended grapheme cluster rules of Unicode UAX #29 that matter for streamed text: CR LF, combining
and spacing marks, ZWJ emoji sequences, variation selectors, emoji modifiers and tag sequences,
regional-indicator pairs (flags), Hangul jamo sequences and virama conjuncts. Prepend characters
(GB9b, a handful of rare Indic marks) are not handled.

A streaming cutter needs the character *after* the cut to decide, so callers hold back the last
character until more text arrives or the stream ends. This is written by hand because the
question is incremental ("may the next character extend this one?"); regex's ``\\X`` needs the
whole text and answers a different question.
"""

from __future__ import annotations

import unicodedata

__all__ = ["can_break", "last_safe_cut"]

_ZWJ = "\u200d"


def _is_extend(ch: str) -> bool:
    o = ord(ch)
    if ch == _ZWJ or 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF:
        return True
    if 0x1F3FB <= o <= 0x1F3FF or 0xE0020 <= o <= 0xE007F:
        return True
    if o < 0x300:
        return False
    return unicodedata.category(ch) in ("Mn", "Me", "Mc")


def _is_ri(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _hangul(ch: str) -> str:
    o = ord(ch)
    if 0x1100 <= o <= 0x115F or 0xA960 <= o <= 0xA97F:
        return "L"
    if 0x1160 <= o <= 0x11A7 or 0xD7B0 <= o <= 0xD7C6:
        return "V"
    if 0x11A8 <= o <= 0x11FF or 0xD7CB <= o <= 0xD7FB:
        return "T"
    if 0xAC00 <= o <= 0xD7A3:
        return "LV" if (o - 0xAC00) % 28 == 0 else "LVT"
    return ""


def can_break(text: str, i: int) -> bool:
    """May ``text`` be cut before index ``i`` (0 < i < len(text))?"""
    a, b = text[i - 1], text[i]
    if a.isascii() and b.isascii():
        return not (a == "\r" and b == "\n")
    if a in "\r\n" or b in "\r\n":
        return not (a == "\r" and b == "\n")
    if _is_extend(b):
        return False
    if a == _ZWJ:
        return False
    if unicodedata.combining(a) == 9 and b.isalpha():  # virama + consonant (GB9c)
        return False
    if _is_ri(a) and _is_ri(b):
        n = 0
        j = i - 1
        while j >= 0 and _is_ri(text[j]):
            n += 1
            j -= 1
        return n % 2 == 0
    ha, hb = _hangul(a), _hangul(b)
    if ha and hb:
        if ha == "L" and hb in ("L", "V", "LV", "LVT"):
            return False
        if ha in ("LV", "V") and hb in ("V", "T"):
            return False
        if ha in ("LVT", "T") and hb == "T":
            return False
    return True


def last_safe_cut(text: str, end: int) -> int:
    """The largest ``i`` with ``0 < i <= end < len(text)`` where ``text`` may be cut, or 0."""
    i = min(end, len(text) - 1)
    while i > 0:
        if can_break(text, i):
            return i
        i -= 1
    return 0
