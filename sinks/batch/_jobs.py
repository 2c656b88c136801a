"""Jobs: what one line of a jobs file asks for, and a jobs file read as a source of jobs.

Two line formats, one JSON object per line:

* the OpenAI Batch API's request (``custom_id``, ``method``, ``url``, ``body``), for
  ``/v1/chat/completions`` (``body.messages``, ``max_tokens`` or ``max_completion_tokens``)
  and ``/v1/responses`` (``body.input``, ``instructions``, ``max_output_tokens``);
* a short form: ``id``, then ``prompt`` (one user message) or ``messages``, and optionally
  ``system``, ``model``, ``max_tokens``, ``temperature`` and ``output`` (the document's file
  name).

Of a request body only the prompt, ``model``, the output limit and ``temperature`` are used;
other parameters are ignored (the provider is chosen for the whole batch).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

import attrs
import trio

from pipeline import ConfigError

__all__ = [
    "RESERVED_NAMES",
    "InvalidJob",
    "InvalidLine",
    "Job",
    "JobSource",
    "JobsFile",
    "count_lines",
    "job_from_json",
    "job_to_json",
    "output_name",
    "parse_job",
    "parse_jobs",
]

RESERVED_NAMES: Final = frozenset({"results.jsonl", "errors.jsonl", "provider_batch.json"})
"""File names in the output directory that no document may take."""

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
MAX_OUTPUT_NAME: Final = 200
READ_BATCH: Final = 512
"""Lines a :class:`JobsFile` reads per worker-thread call."""


class InvalidJob(ConfigError):
    """A jobs-file line that is not a job. The message says what is wrong with it."""

    kind = "invalid_job"


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    return tuple(value)


@attrs.frozen(hash=False)
class Job:
    """One request: its id, the chat to send, and the document it produces.

    ``output`` is the document's file name in the output directory; ``line`` the jobs-file
    line it came from (0 when it did not come from a file). ``None`` for ``model``,
    ``max_tokens`` or ``temperature`` keeps the batch's default.
    """

    custom_id: str
    messages: tuple[Mapping[str, Any], ...] = attrs.field(converter=_messages)
    output: str
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    line: int = 0

    def prompt_texts(self) -> list[str]:
        """The text of every message (text parts of structured content included), for
        :class:`pipeline.producers.CostGuard` and the token estimate."""
        texts = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.append(
                    " ".join(
                        str(part.get("text", ""))
                        for part in content
                        if isinstance(part, Mapping) and isinstance(part.get("text"), str)
                    )
                )
        return texts


@attrs.frozen
class InvalidLine:
    """A jobs-file line that was skipped, and why. ``line`` counts from 1."""

    line: int
    message: str


def output_name(custom_id: str) -> str:
    """The default document name for a job: its id made safe for a file name, ``.md`` added."""
    stem = _UNSAFE.sub("_", custom_id).strip("._") or "job"
    return stem[:MAX_OUTPUT_NAME] + ".md"


def _check_output(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidJob("output: a non-empty file name is required")
    if "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise InvalidJob(f"output: {name!r} must be a plain file name (no path, no leading dot)")
    if name in RESERVED_NAMES or len(name) > MAX_OUTPUT_NAME:
        raise InvalidJob(f"output: {name!r} is reserved or too long")
    return name


def _check_messages(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidJob(f"{where}: a non-empty list of messages is required")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidJob(f"{where}[{i}]: a message needs a string 'role'")
        if not isinstance(message.get("content"), str | list):
            raise InvalidJob(f"{where}[{i}]: a message needs 'content' (text or parts)")
    return value


def _optional_int(obj: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = obj.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidJob(f"{name}: a positive integer is required, got {value!r}")
        return value
    return None


def _optional(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        raise InvalidJob(f"{name}: wrong type {type(value).__name__}")
    return value


def _from_batch_request(obj: Mapping[str, Any], line: int) -> Job:
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidJob("custom_id: a non-empty string is required")
    if obj.get("method", "POST") != "POST":
        raise InvalidJob(f"method: only POST is supported, got {obj.get('method')!r}")
    url = obj.get("url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise InvalidJob("body: a JSON object is required")
    if url == "/v1/chat/completions":
        messages = _check_messages(body.get("messages"), "body.messages")
        max_tokens = _optional_int(body, "max_completion_tokens", "max_tokens")
    elif url == "/v1/responses":
        given = body.get("input")
        if isinstance(given, str) and given:
            messages = [{"role": "user", "content": given}]
        else:
            messages = list(_check_messages(given, "body.input"))
        instructions = _optional(body, "instructions", str)
        if instructions:
            messages.insert(0, {"role": "system", "content": instructions})
        max_tokens = _optional_int(body, "max_output_tokens")
    else:
        raise InvalidJob(f"url: {url!r} is not supported (/v1/chat/completions, /v1/responses)")
    return Job(
        custom_id,
        messages,
        output_name(custom_id),
        model=_optional(body, "model", str),
        max_tokens=max_tokens,
        temperature=_optional(body, "temperature", (int, float)),
        line=line,
    )


def _from_short_form(obj: Mapping[str, Any], line: int) -> Job:
    job_id = obj.get("id")
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if not isinstance(job_id, str) or not job_id:
        raise InvalidJob("id: a non-empty string (or an integer) is required")
    prompt, given = obj.get("prompt"), obj.get("messages")
    if (prompt is None) == (given is None):
        raise InvalidJob("give exactly one of 'prompt' and 'messages'")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidJob("prompt: a non-empty string is required")
        messages: list[Mapping[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        messages = list(_check_messages(given, "messages"))
    system = _optional(obj, "system", str)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    output = obj.get("output")
    return Job(
        job_id,
        messages,
        output_name(job_id) if output is None else _check_output(output),
        model=_optional(obj, "model", str),
        max_tokens=_optional_int(obj, "max_tokens"),
        temperature=_optional(obj, "temperature", (int, float)),
        line=line,
    )


def parse_job(text: str, line: int = 0) -> Job:
    """The job on one line (either format); :class:`InvalidJob` says what is wrong."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise InvalidJob("a JSON object is required")
    if "custom_id" in obj:
        return _from_batch_request(obj, line)
    return _from_short_form(obj, line)


def parse_jobs(lines: Iterable[str], *, first_line: int = 1) -> Iterator[Job | InvalidLine]:
    """Each non-blank line's job, or an :class:`InvalidLine`. Does not look for duplicates
    (see :class:`JobsFile`)."""
    for number, text in enumerate(lines, first_line):
        if not text.strip():
            continue
        try:
            yield parse_job(text, number)
        except InvalidJob as exc:
            yield InvalidLine(number, str(exc))


def job_to_json(job: Job) -> str:
    """A job as one JSON object (every field, the messages as given), for a queue; read it
    back with :func:`job_from_json`."""
    return json.dumps(
        {
            "custom_id": job.custom_id,
            "messages": [dict(m) for m in job.messages],
            "output": job.output,
            "model": job.model,
            "max_tokens": job.max_tokens,
            "temperature": job.temperature,
            "line": job.line,
        },
        ensure_ascii=False,
    )


def job_from_json(text: str) -> Job:
    """The job :func:`job_to_json` wrote; :class:`InvalidJob` if ``text`` is not one."""
    try:
        obj = json.loads(text)
        return Job(
            obj["custom_id"],
            obj["messages"],
            obj["output"],
            model=obj.get("model"),
            max_tokens=obj.get("max_tokens"),
            temperature=obj.get("temperature"),
            line=obj.get("line", 0),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidJob(f"not a queued job: {exc}") from None


class JobSource(Protocol):
    """Where a batch's jobs come from: any async iterable of jobs (and of lines skipped, which
    the batch reports). A jobs file is one (:class:`JobsFile`); a queue shared by workers on
    several machines may be another."""

    def __aiter__(self) -> AsyncIterator[Job | InvalidLine]: ...


def count_lines(path: str | Path) -> int:
    """The non-blank lines of a jobs file: the number of jobs, invalid ones included.
    Blocking: call it in a worker thread."""
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.strip())


@attrs.define(eq=False)
class JobsFile:
    """A JSON Lines jobs file, read lazily (:data:`READ_BATCH` lines per worker-thread call,
    so memory stays bounded whatever the file's size).

    A line with an id or an ``output`` name already used by an earlier line is reported as
    invalid (the ids seen are kept: memory grows with the number of jobs, not their size).
    Iterate once per object.
    """

    path: Path = attrs.field(converter=Path)

    async def __aiter__(self) -> AsyncIterator[Job | InvalidLine]:
        ids: set[str] = set()
        outputs: set[str] = set()
        f = await trio.to_thread.run_sync(_open_text, self.path)
        try:
            number = 1
            while lines := await trio.to_thread.run_sync(_read_lines, f, READ_BATCH):
                for item in parse_jobs(lines, first_line=number):
                    if isinstance(item, Job):
                        if item.custom_id in ids:
                            item = InvalidLine(item.line, f"id {item.custom_id!r} is used twice")
                        elif item.output in outputs:
                            item = InvalidLine(item.line, f"output {item.output!r} is used twice")
                        else:
                            ids.add(item.custom_id)
                            outputs.add(item.output)
                    yield item
                number += len(lines)
        finally:
            f.close()


def _open_text(path: Path) -> TextIO:
    return open(path, encoding="utf-8", errors="replace")


def _read_lines(f: TextIO, n: int) -> Sequence[str]:
    lines = []
    for _ in range(n):
        line = f.readline()
        if not line:
            break
        lines.append(line)
    return lines
