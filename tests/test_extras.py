"""Dependencies by use: the core needs no extra, and a feature whose extra is missing says so
in one line that names the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs the CLI with some packages made unimportable (as if not installed).
BLOCKED_CLI = (
    "import sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None\n"
    "from sinks.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def run_without(blocked: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, blocked, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("starlette", ["serve", "--scripted", "--port", "0"], "serve"),
        ("hypercorn", ["serve", "--scripted", "--port", "0"], "serve"),
        ("prometheus_client", ["serve", "--scripted", "--port", "0"], "serve"),
        (
            "coredis",
            ["serve", "--scripted", "--port", "0", "--store", "redis://127.0.0.1:1/0"],
            "redis",
        ),
        ("xllamacpp", ["stream", "hi"], "local"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(blocked: str, argv: list[str], extra: str) -> None:
    result = run_without(blocked, *argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"pip install 'llmpipe[{extra}]'" in lines[0]
    assert "Traceback" not in result.stderr


def test_the_core_and_the_sdk_producers_need_no_extra() -> None:
    blocked = "starlette,hypercorn,prometheus_client,coredis,xllamacpp"
    result = run_without(blocked, "stream", "--scripted", "No extras here.", "--rate", "0")
    assert (result.returncode, result.stdout) == (0, "No extras here.\n"), result.stderr
    code = (
        "import sys\n"
        f"for name in {blocked!r}.split(','): sys.modules[name] = None\n"
        "import pipeline, pipeline.text, pipeline.wire, pipeline.producers, pipeline.stores\n"
        "import pipeline.client, pipeline.testing, sinks\n"
        "from pipeline.producers import OpenAIChatProducer, AnthropicProducer\n"
        "from pipeline.stores import MemoryStore\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_plain_install_has_the_core_and_names_the_serve_extra(tmp_path: Path) -> None:
    # A real `pip install llmpipe` (no extras) into a new virtual environment.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", str(ROOT)],
        cwd=tmp_path, env=environ, check=True, capture_output=True, timeout=280,
    )  # fmt: skip
    llmpipe = str(bin_dir / "llmpipe")
    streamed = subprocess.run(
        [llmpipe, "stream", "--scripted", "Plain install.", "--rate", "0"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (streamed.returncode, streamed.stdout) == (0, "Plain install.\n"), streamed.stderr
    served = subprocess.run(
        [llmpipe, "serve", "--scripted", "--port", "0"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert served.returncode == 2
    assert served.stderr.splitlines() == [
        "llmpipe: llmpipe's HTTP server needs the 'serve' extra (no module 'hypercorn'): "
        "pip install 'llmpipe[serve]'"
    ]
