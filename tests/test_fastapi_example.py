"""The FastAPI example: llmpipe's app mounted under /llm, its lifespan entered by the parent's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastapi_mount.py"


def test_fastapi_example_self_test(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--self-test"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "GET /hello -> 200 {'message': 'hello from the parent app'}" in out
    assert "POST /llm/v1/stream -> 200" in out
    assert "streamed text: You said: mounting llmpipe. This answer streams word by word." in out
    # More than one text event (it streamed), then exactly one terminal "done".
    events = next(line for line in out.splitlines() if "events:" in line).split("events: ")[1]
    assert events.split().count("text") > 1
    assert events.split()[-1] == "done"
    # The child's lifespan ran under the parent's: the resumable route has its store.
    assert "POST /llm/v1/streams -> 201" in out
