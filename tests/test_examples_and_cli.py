"""Every example runs, and the command line works (as subprocesses, like a user would)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(
    *args: str, cwd: Path = ROOT, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path) -> None:
    result = run(str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_cli_stream_scripted_to_terminal_file_and_event_log(tmp_path: Path) -> None:
    out, events = tmp_path / "a.txt", tmp_path / "e.jsonl"
    result = run(
        "-m", "sinks.cli", "stream", "--scripted", "Hello big world.", "--rate", "0",
        "--out", str(out), "--events", str(events),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello big world.\n"
    assert out.read_text() == "Hello big world."
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert "".join(e["text"] for e in lines if e["type"] == "text") == "Hello big world."
    assert lines[-1]["type"] == "done"


def test_cli_rejects_bad_options() -> None:
    result = run("-m", "sinks.cli", "stream", "--scripted", "x", "--rate", "-1")
    assert result.returncode != 0
    assert "--rate" in result.stderr
    result = run("-m", "sinks.cli", "stream", "hi", "--max-tokens", "0")
    assert result.returncode != 0
    assert "--max-tokens" in result.stderr
    result = run("-m", "sinks.cli", "stream", "hi", "--threads", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("llmpipe: --threads must be >= 1")


@pytest.mark.slow
def test_cli_streams_a_real_answer_from_the_embedded_local_model(tmp_path: Path) -> None:
    out, events = tmp_path / "a.txt", tmp_path / "e.jsonl"
    result = run(
        "-m", "sinks.cli", "stream", "What is the capital of France?", "--temperature", "0",
        "--max-tokens", "24", "--out", str(out), "--events", str(events), "--stats",
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = out.read_text()
    assert "Paris" in answer
    assert result.stdout.strip() == answer.strip()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    texts = [e for e in lines if e["type"] == "text"]
    assert len(texts) >= 3  # token by token, not one blob
    assert lines[0]["type"] == "metadata"
    assert lines[-1]["type"] == "done"
    assert "[done:" in result.stderr


@contextmanager
def emulator_process(*extra: str) -> Iterator[str]:
    """``llmpipe emulate`` in a subprocess for the block; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinks.cli", "emulate", "--port", "0", *extra],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        first = proc.stderr.readline()
        assert "listening on" in first, first
        yield first.split("listening on", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


@pytest.mark.parametrize(
    ("provider", "suffix"), [("openai", "/v1"), ("openai-responses", "/v1"), ("anthropic", "")]
)
def test_cli_streams_from_a_remote_provider(provider: str, suffix: str) -> None:
    env_key = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
    with emulator_process("--text", "Hello from the emulator.", "--tokens-per-second", "0") as base:
        result = run(
            "-m", "sinks.cli", "stream", "hi", "--provider", provider,
            "--base-url", base + suffix, "--model", "test-model",
            env={env_key: "sk-test-key-not-real"},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Hello from the emulator."


def test_cli_speak_plays_writes_the_wav_and_prints_what_was_heard(tmp_path: Path) -> None:
    # Real espeak-ng, played in real time (about 2 s of audio) into a raw PCM file.
    wav, pcm = tmp_path / "a.wav", tmp_path / "a.raw"
    text = "One two three. Four **five** six."
    result = run(
        "-m", "sinks.cli", "speak", "--scripted", text, "--rate", "0",
        "--wav", str(wav), "--pcm", str(pcm),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + "\n"  # the original text, markup included, as heard
    with wave.open(str(wav)) as w:
        frames, rate = w.getnframes(), w.getframerate()
    assert rate == 22050
    assert 1.0 < frames / rate < 6.0
    assert pcm.stat().st_size == 2 * frames  # what was played is what was written
    assert "0 underruns" in result.stderr


def test_cli_speak_with_the_openai_speech_api(tmp_path: Path) -> None:
    # The speech API of the emulator (real loopback HTTP, the real openai SDK): a tone.
    pcm = tmp_path / "a.raw"
    with emulator_process() as base:
        result = run(
            "-m", "sinks.cli", "speak", "--scripted", "Short and sweet.", "--rate", "0",
            "--engine", "openai", "--tts-base-url", base + "/v1", "--pcm", str(pcm),
            env={"OPENAI_API_KEY": "sk-test-key-not-real"},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Short and sweet.\n"
    assert pcm.stat().st_size > 2 * 24000 * 0.3  # audio at 24 kHz, played through


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("", "is a directory"),
        ("a-file/answer.txt", "a-file: is a file, not a directory"),
        ("a-file/deeper/answer.txt", "a-file: is a file, not a directory"),
    ],
    ids=["directory", "under-a-file", "deeper-under-a-file"],
)
@pytest.mark.parametrize("flag", ["--out", "--events"])
def test_cli_unwritable_files_fail_before_the_request(
    tmp_path: Path, target: str, says: str, flag: str
) -> None:
    """One line naming the flag, before anything is asked of the provider (which here would
    fail: its URL refuses connections)."""
    (tmp_path / "a-file").write_text("x")
    path = str(tmp_path / target) if target else str(tmp_path)
    result = run(
        "-m", "sinks.cli", "stream", "hi", "--base-url", "http://127.0.0.1:1/v1",
        "--model", "m", flag, path, env={"OPENAI_API_KEY": "sk-not-real"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"llmpipe: {flag} {path}: "), result.stderr
    assert says in result.stderr


def test_cli_out_without_permission() -> None:
    """/sys refuses new files, even to root (a test may run as root)."""
    result = run("-m", "sinks.cli", "stream", "--scripted", "x", "--out", "/sys/answer.txt")
    if result.returncode == 0:  # pragma: no cover (a machine where /sys is writable)
        pytest.skip("/sys is writable here")
    assert result.returncode == 2
    assert result.stderr == (
        "llmpipe: --out /sys/answer.txt: /sys: no permission to write in it — "
        "see 'llmpipe stream --help'\n"
    )


def test_cli_hints_name_the_base_url() -> None:
    env = {"OPENAI_API_KEY": "sk-not-real"}
    refused = run("-m", "sinks.cli", "stream", "hi", "--base-url", "http://127.0.0.1:1/v1",
                  "--model", "m", env=env)  # fmt: skip
    assert refused.returncode == 2
    assert "is http://127.0.0.1:1/v1 reachable?" in refused.stderr
    with emulator_process("--tokens-per-second", "0") as base:
        missing_v1 = run("-m", "sinks.cli", "stream", "hi", "--base-url", base, "--model", "m",
                         env=env)  # fmt: skip
    assert missing_v1.returncode == 2
    assert missing_v1.stderr.count("\n") == 1
    assert f"try --base-url {base}/v1" in missing_v1.stderr


def test_cli_serve_fails_at_start_with_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run("-m", "sinks.cli", "serve", "--scripted", "x", "--port", str(port))
    assert busy.returncode == 2
    assert busy.stderr == (
        f"llmpipe: --port {port}: 127.0.0.1:{port} is already in use (another server?); "
        "choose another --port, or 0 for any — see 'llmpipe serve --help'\n"
    )
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{free.getsockname()[1]}/0"  # nothing listens there
    unreachable = run("-m", "sinks.cli", "serve", "--scripted", "x", "--port", "0",
                      "--store", dead)  # fmt: skip
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith(f"llmpipe: --store {dead}: cannot reach it (")
    assert unreachable.stderr.count("\n") == 1


def test_cli_ctrl_c_keeps_the_partial_answer(tmp_path: Path) -> None:
    out = tmp_path / "answer.txt"
    text = " ".join(f"w{i}" for i in range(200))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinks.cli", "stream", "--scripted", text, "--rate", "20",
         "--chunk-ms", "0", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.read(10)  # it is streaming
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    partial = tmp_path / "answer.txt.partial"
    kept = partial.read_text()
    assert text.startswith(kept)
    assert len(kept) >= 10
    assert not out.exists()
    assert stderr.decode() == (
        f"llmpipe: the answer did not complete; its first {len(kept)} characters are in {partial}\n"
    )
