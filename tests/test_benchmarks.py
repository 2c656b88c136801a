"""``python -m benchmarks --quick`` runs every benchmark briefly and each one checks itself.

Correctness only: no timing is asserted. Each benchmark raises when a variant lost or changed
the text it carried (or, for the speech benchmark, when an engine was not given every word in
order) and hands the harness a summary; here every benchmark must report ``ok``, and each
speech variant must say that it was checked or why it was skipped (Pipecat and LiveKit are
optional; the two llmpipe-side variants always run).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "benchmarks" / "data" / "speech_tokens.json"
SPEECH_VARIANTS = (
    "llmpipe speaker",
    "whole sentences",
    "Pipecat",
    "LiveKit (tokenizer)",
    "LiveKit (tokenizer + pacer)",
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_benchmark_runs_quick_and_checks_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    from benchmarks.__main__ import BENCHMARKS

    for bench in BENCHMARKS:
        assert re.search(rf"^\[{bench.name}\] ok in ", result.stderr, re.MULTILINE), bench.name
    # The speech benchmark: every variant spoke all the words of the first prompt, in order.
    out = result.stdout
    data = json.loads(TRACE.read_text(encoding="utf-8"))
    words = len("".join(s for _, s in data["prompts"][0]["tokens"]).split())
    checked = dict(
        re.findall(r"^checked: (.+) / prompt 0: the engine was given all (\d+) words, in order$",
                   out, re.MULTILINE)
    )  # fmt: skip
    skipped = set(re.findall(r"^skipped: (.+?): ", out, re.MULTILINE))
    for variant in SPEECH_VARIANTS[:2]:
        assert checked.get(variant) == str(words), (variant, out[-3000:])
    for variant in SPEECH_VARIANTS:
        assert (checked.get(variant) == str(words)) != (variant in skipped), variant
