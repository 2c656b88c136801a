"""The speech benchmark runs (``--quick``, as a subprocess) and every variant speaks all the text.

Correctness only: no timing is asserted. The script raises when an engine was not given every
word of the answer in order; here each variant must also say that it was checked, or why it was
skipped (Pipecat and LiveKit are optional), and the two llmpipe-side variants always run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "benchmarks" / "data" / "speech_tokens.json"
VARIANTS = (
    "llmpipe speaker",
    "whole sentences",
    "Pipecat",
    "LiveKit (tokenizer)",
    "LiveKit (tokenizer + pacer)",
)
ALWAYS = VARIANTS[:2]


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


def test_speech_benchmark_quick_every_variant_speaks_all_the_text() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_speech.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(TRACE.read_text(encoding="utf-8"))
    words = len("".join(s for _, s in data["prompts"][0]["tokens"]).split())
    checked = dict(
        re.findall(r"^checked: (.+) / prompt 0: the engine was given all (\d+) words, in order$",
                   result.stderr, re.MULTILINE)
    )  # fmt: skip
    skipped = set(re.findall(r"^skipped: (.+?): ", result.stdout, re.MULTILINE))
    for variant in ALWAYS:
        assert checked.get(variant) == str(words), (variant, result.stderr)
    for variant in VARIANTS:
        assert (checked.get(variant) == str(words)) != (variant in skipped), (variant, result)
    assert "| llmpipe speaker |" in result.stdout
    assert "wrote" not in result.stdout  # --quick never writes SPEECH.md
