"""Where a batch's outcomes go: one document per job, ``results.jsonl`` and ``errors.jsonl``.

The two JSON Lines files are in the OpenAI Batch API's output format (one object per request:
``id``, ``custom_id``, ``response: {status_code, request_id, body}``, ``error``), so tools
written for that API read them; ``results.jsonl`` is also the batch's manifest:

* a job is *done* when its line is in ``results.jsonl``. Its document is committed first
  (written beside its final name, synced, renamed: :func:`sinks.files.commit_atomic`), then
  the line is appended and synced. A crash between the two leaves a complete document whose
  job is not done: the next run does it again and replaces the document. A crash at any moment
  loses no line already synced and never leaves a partial document under its name.
* a torn last line (a crash in the middle of an append) is cut off when the directory is
  opened again; the job it named is not done.
* a document that was being written when a run was killed (a hidden temporary file) is
  removed when the directory is opened again (one process per directory at a time).
* a failed job is appended to ``errors.jsonl`` with its reason; a later run tries it again.
  When a run ends, ``errors.jsonl`` is rewritten (atomically) with only the last failure of
  each job that is still not done.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol

import attrs
import trio

from ..files import commit_atomic, open_atomic
from ._jobs import InvalidJob, Job, _check_output

__all__ = [
    "ERRORS_FILE",
    "PROVIDER_BATCH_FILE",
    "RESULTS_FILE",
    "BatchDirectory",
    "JobFailure",
    "JobOutcome",
    "Ledger",
    "error_record",
    "open_directory",
    "result_record",
]

RESULTS_FILE: Final = "results.jsonl"
ERRORS_FILE: Final = "errors.jsonl"
PROVIDER_BATCH_FILE: Final = "provider_batch.json"
"""With ``--via openai-batch``: the batch submitted to the provider and not yet recorded."""


@attrs.frozen
class JobOutcome:
    """What a job that succeeded produced."""

    text: str
    input_tokens: int
    output_tokens: int
    model: str = ""
    response_id: str = ""
    finish_reason: str | None = None
    attempts: int = 1

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@attrs.frozen
class JobFailure:
    """Why a job failed: ``kind`` (``status``, ``timeout``, ``cost_limit``, ``budget``, ...),
    a message, and the provider's HTTP status when it answered with one."""

    kind: str
    message: str
    status_code: int | None = None
    retryable: bool = False
    attempts: int = 0


def _record_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def result_record(job: Job, outcome: JobOutcome) -> dict[str, Any]:
    """The ``results.jsonl`` object for a job done (OpenAI Batch output format; the
    ``llmpipe`` key adds the document's name and the attempts it took)."""
    response_id = outcome.response_id or f"chatcmpl-{uuid.uuid4().hex}"
    return {
        "id": _record_id(),
        "custom_id": job.custom_id,
        "response": {
            "status_code": 200,
            "request_id": response_id,
            "body": {
                "id": response_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": outcome.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": outcome.text},
                        "finish_reason": outcome.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": outcome.input_tokens,
                    "completion_tokens": outcome.output_tokens,
                    "total_tokens": outcome.total_tokens,
                },
            },
        },
        "error": None,
        "llmpipe": {"document": job.output, "attempts": outcome.attempts},
    }


def error_record(job: Job, failure: JobFailure) -> dict[str, Any]:
    """The ``errors.jsonl`` object for a job that failed: ``error: {code, message}`` always,
    and ``response`` with the status and the provider-style error body when the provider
    answered with an HTTP status (else ``null``)."""
    error = {"code": failure.kind, "message": failure.message}
    response = None
    if failure.status_code is not None:
        response = {
            "status_code": failure.status_code,
            "request_id": "",
            "body": {"error": {**error, "type": failure.kind}},
        }
    return {
        "id": _record_id(),
        "custom_id": job.custom_id,
        "response": response,
        "error": error,
        "llmpipe": {"attempts": failure.attempts, "retryable": failure.retryable},
    }


class Ledger(Protocol):
    """Where a batch's outcomes are recorded, and what it resumes from. :class:`BatchDirectory`
    is one; a store shared by workers (acknowledging a queue's message once the document is
    written) may be another."""

    def is_done(self, custom_id: str) -> bool:
        """Whether the job was recorded done (by this run or an earlier one)."""
        ...

    @property
    def spent_tokens(self) -> int:
        """Tokens the jobs recorded done used (for a budget that spans runs)."""
        ...

    async def done(self, job: Job, outcome: JobOutcome) -> None:
        """Commit the job's document, then record it done. When this returns, both are
        durable; if it is interrupted, the job is not done (and its document may or may not be
        there, never partial)."""
        ...

    async def failed(self, job: Job, failure: JobFailure) -> None:
        """Record the job failed with its reason."""
        ...


def _complete_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file, after cutting off a torn last line (no newline)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    for raw in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(raw)
            if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                yield obj


def _usage_total(obj: dict[str, Any]) -> int:
    try:
        total = obj["response"]["body"]["usage"]["total_tokens"]
    except (KeyError, TypeError):
        return 0
    return total if isinstance(total, int) else 0


def _append(f: BinaryIO, obj: dict[str, Any]) -> None:
    f.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")
    f.flush()
    os.fsync(f.fileno())


@attrs.define(eq=False)
class BatchDirectory:
    """The :class:`Ledger` of a directory: documents, ``results.jsonl`` and ``errors.jsonl``
    (see the module docstring). Made by :func:`open_directory`. Safe to call from many tasks
    of one trio run (appends are serialised); one process per directory at a time."""

    path: Path
    _done: set[str]
    _spent: int
    _results: BinaryIO
    _errors: BinaryIO
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    def is_done(self, custom_id: str) -> bool:
        return custom_id in self._done

    @property
    def spent_tokens(self) -> int:
        return self._spent

    @property
    def done_count(self) -> int:
        """Jobs recorded done, by this run and earlier ones."""
        return len(self._done)

    def document(self, job: Job) -> Path:
        """Where the job's document goes."""
        return self.path / job.output

    async def done(self, job: Job, outcome: JobOutcome) -> None:
        record = result_record(job, outcome)
        await trio.to_thread.run_sync(_write_document, self.document(job), outcome.text)
        async with self._lock:
            with trio.CancelScope(shield=True):  # the line is written whole, or not begun
                await trio.to_thread.run_sync(_append, self._results, record)
        self._done.add(job.custom_id)
        self._spent += outcome.total_tokens

    async def failed(self, job: Job, failure: JobFailure) -> None:
        record = error_record(job, failure)
        async with self._lock:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_append, self._errors, record)

    async def add_result(self, record: dict[str, Any]) -> bool:
        """Record a job done by someone else (a worker): ``record`` is its ``results.jsonl``
        object (:func:`result_record`), the document's name and text in it. Returns ``False``
        (and changes nothing) if the job is done here already. :class:`InvalidJob` if the
        record does not name a plain document."""
        custom_id = record["custom_id"]
        if custom_id in self._done:
            return False
        try:
            name = _check_output(record["llmpipe"]["document"])
            text = record["response"]["body"]["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise InvalidJob(f"result of {custom_id!r}: no document in it ({exc})") from None
        await trio.to_thread.run_sync(_write_document, self.path / name, str(text or ""))
        async with self._lock:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_append, self._results, record)
        self._done.add(custom_id)
        self._spent += _usage_total(record)
        return True

    async def add_error(self, record: dict[str, Any]) -> bool:
        """Record a failure found elsewhere (``errors.jsonl`` object), unless its job is done
        here; returns whether it was recorded."""
        if record.get("custom_id") in self._done:
            return False
        async with self._lock:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_append, self._errors, record)
        return True

    async def compact_errors(self) -> int:
        """Rewrite ``errors.jsonl`` atomically with the last failure of each job still not
        done; return how many are left."""
        async with self._lock:
            return await trio.to_thread.run_sync(self._compact)

    def _compact(self) -> int:
        path = self.path / ERRORS_FILE
        last: dict[str, dict[str, Any]] = {}
        for obj in _complete_lines(path):
            if obj["custom_id"] not in self._done:
                last.pop(obj["custom_id"], None)
                last[obj["custom_id"]] = obj
        self._errors.close()
        tmp, f = open_atomic(path)
        try:
            for obj in last.values():
                f.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")
            commit_atomic(f, tmp, path)
        finally:
            f.close()
            tmp.unlink(missing_ok=True)
            self._errors = open(path, "ab")  # noqa: SIM115 (closed by close())
        return len(last)

    async def provider_batch(self) -> dict[str, Any] | None:
        """The provider batch recorded by :meth:`record_provider_batch` (``None``: none)."""
        return await trio.to_thread.run_sync(self._read_provider_batch)

    def _read_provider_batch(self) -> dict[str, Any] | None:
        try:
            obj = json.loads((self.path / PROVIDER_BATCH_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:  # not ours, or damaged: as if none (a batch may be submitted again)
            return None
        return obj if isinstance(obj, dict) else None

    async def record_provider_batch(self, record: dict[str, Any] | None) -> None:
        """Record (atomically, durably) the provider batch submitted for this directory's jobs
        (``record``: its ids and the jobs in it), so a run that stops while it is in progress
        is resumed by the next instead of submitting another; ``None`` removes the record once
        the batch's outcomes are recorded."""
        path = self.path / PROVIDER_BATCH_FILE
        if record is None:
            await trio.to_thread.run_sync(partial(path.unlink, missing_ok=True))
        else:
            text = json.dumps(record, ensure_ascii=False)
            await trio.to_thread.run_sync(_write_document, path, text)

    def close(self) -> None:
        """Close the two files (what was recorded is already durable). Idempotent."""
        self._results.close()
        self._errors.close()


def _write_document(path: Path, text: str) -> None:
    tmp, f = open_atomic(path)
    try:
        f.write(text.encode("utf-8"))
        commit_atomic(f, tmp, path)
    finally:
        f.close()
        tmp.unlink(missing_ok=True)


_ORPHAN: Final = re.compile(r"\..+\.\d+\.[0-9a-f]+\.tmp")
"""The name :func:`sinks.files.open_atomic` gives a file being written."""


def _open(path: Path) -> BatchDirectory:
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.iterdir():  # a document being written when a run was killed
        if _ORPHAN.fullmatch(leftover.name):
            leftover.unlink(missing_ok=True)
    done: set[str] = set()
    spent = 0
    for obj in _complete_lines(path / RESULTS_FILE):
        if obj["custom_id"] not in done:
            done.add(obj["custom_id"])
            spent += _usage_total(obj)
    list(_complete_lines(path / ERRORS_FILE))  # cut a torn last line before appending
    # Both stay open for the directory's life (closed by BatchDirectory.close).
    results = open(path / RESULTS_FILE, "ab")  # noqa: SIM115
    try:
        errors = open(path / ERRORS_FILE, "ab")  # noqa: SIM115
    except BaseException:
        results.close()
        raise
    return BatchDirectory(path, done, spent, results, errors)


@contextlib.asynccontextmanager
async def open_directory(path: str | os.PathLike[str]) -> AsyncIterator[BatchDirectory]:
    """The batch directory ``path`` (created if needed), resuming from what it holds. On a
    normal exit ``errors.jsonl`` is compacted (see the module docstring); the files are closed
    however the block ends."""
    directory = await trio.to_thread.run_sync(_open, Path(path))
    try:
        yield directory
        await directory.compact_errors()
    finally:
        directory.close()
