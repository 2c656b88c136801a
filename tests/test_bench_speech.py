"""The speech benchmark's recorded trace is real timed text. (Its quick run, where every variant
must speak all the text, is checked with the other benchmarks in ``tests/test_benchmarks.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "benchmarks" / "data" / "speech_tokens.json"


def test_the_trace_is_real_timed_text() -> None:
    data = json.loads(TRACE.read_text(encoding="utf-8"))
    assert data["provider"] == "local"
    assert data["espeak"]["seconds_per_char"] > 0
    assert data["espeak"]["gap"] >= 0
    for prompt in data["prompts"]:
        offsets = [t for t, _ in prompt["tokens"]]
        assert len(offsets) >= 50
        assert offsets == sorted(offsets)
        assert offsets[0] > 0
