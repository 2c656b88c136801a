"""Score SentenceBuffer and pySBD on the English Golden Rules of the Pragmatic Segmenter.

Run from the repository root::

    .venv/bin/python benchmarks/golden_rules.py

Sentences are compared after ``str.strip()`` (as pySBD's own tests do). SentenceBuffer is fed
each text in one piece, one character at a time and in random chunks; the three results must be
identical (the score is reported once). pySBD (``clean=False``) segments whole texts.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

Segment = Callable[[str], list[str]]


def _root_on_path() -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def stream_segment(text: str, chunks: Sequence[str]) -> list[str]:
    """Feed *chunks* (which must concatenate to *text*) to a fresh SentenceBuffer."""
    _root_on_path()
    from pipeline.text import SentenceBuffer

    buf = SentenceBuffer()
    out: list[str] = []
    for chunk in chunks:
        out += buf.feed(chunk)
    out += buf.flush()
    if "".join(out) != text:
        raise AssertionError(f"lossy segmentation of {text!r}: {out!r}")
    return out


def random_chunks(text: str, rng: random.Random) -> list[str]:
    """Split *text* at a few random points."""
    if len(text) < 2:
        return [text]
    cuts = sorted(set(rng.randrange(1, len(text)) for _ in range(rng.randint(1, 8))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def score(
    cases: Sequence[tuple[str, list[str]]], segment: Segment
) -> tuple[int, list[tuple[int, str, list[str], list[str]]]]:
    """Return (number correct, failures as (case number, text, expected, got))."""
    ok = 0
    failures: list[tuple[int, str, list[str], list[str]]] = []
    for number, (text, expected) in enumerate(cases, 1):
        got = [s.strip() for s in segment(text)]
        if got == expected:
            ok += 1
        else:
            failures.append((number, text, expected, got))
    return ok, failures


def ours_chunk_invariant(text: str, seed: int = 0) -> list[str]:
    """Segment *text* three ways; raise if the results differ; return the result."""
    whole = stream_segment(text, [text])
    per_char = stream_segment(text, list(text))
    chunked = stream_segment(text, random_chunks(text, random.Random(f"{seed}:{text}")))
    if not whole == per_char == chunked:
        raise AssertionError(
            f"chunking changed the result for {text!r}:\n{whole!r}\n{per_char!r}\n{chunked!r}"
        )
    return whole


def pysbd_segmenter() -> Segment:
    """pySBD 0.3.4, English, ``clean=False`` (its import warns about invalid escapes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pysbd

    seg = pysbd.Segmenter(language="en", clean=False)

    def segment(text: str) -> list[str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [str(s) for s in seg.segment(text)]

    return segment


def format_failures(failures: list[tuple[int, str, list[str], list[str]]]) -> str:
    lines: list[str] = []
    for number, text, expected, got in failures:
        lines.append(f"  #{number}: {text!r}")
        lines.append(f"      expected: {expected!r}")
        lines.append(f"      got:      {got!r}")
    return "\n".join(lines)


def load_cases() -> list[tuple[str, list[str]]]:
    """The 52 cases, from ``tests/data/golden_rules_en.py`` (loaded by path)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden_rules_en.py"
    spec = importlib.util.spec_from_file_location("_golden_rules_en", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cases: list[tuple[str, list[str]]] = module.GOLDEN_EN_RULES
    return cases


def main() -> int:
    GOLDEN_EN_RULES = load_cases()
    total = len(GOLDEN_EN_RULES)
    ours, our_failures = score(GOLDEN_EN_RULES, ours_chunk_invariant)
    theirs, their_failures = score(GOLDEN_EN_RULES, pysbd_segmenter())
    print(
        f"SentenceBuffer (streaming; whole / per-character / random chunks identical): "
        f"{ours}/{total}"
    )
    print(format_failures(our_failures))
    print(f"pySBD 0.3.4 (clean=False, whole texts): {theirs}/{total}")
    print(format_failures(their_failures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
