"""The OpenAI Files and Batch endpoints of the emulator: what ``--via openai-batch`` talks to.

``POST /v1/files`` (multipart: ``purpose``, ``file``) keeps the upload in memory;
``GET /v1/files/{id}/content`` returns it; ``POST /v1/batches`` (``input_file_id``,
``endpoint``, ``completion_window``) starts a batch; ``GET /v1/batches`` lists the batches,
newest first, a page of ``limit`` (default 20, 1-100) after the batch ``after`` (a cursor:
``data``, ``first_id``, ``last_id``, ``has_more``); ``GET /v1/batches/{id}`` reports it
``in_progress`` until ``batch_delay`` seconds (trio's clock) have passed since its creation,
then completes it on that request: each line of the input file is answered by the emulator's
reply source (in order, like streamed requests), a :class:`StatusFault` reply going to the
error file with its status, every other reply to the output file as a non-streaming
``chat.completion``. Rate limits do not apply (a provider's batch quota is separate).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs

from ._script import Reply, StatusFault

__all__ = ["BatchApiError", "BatchStore", "completion_body", "parse_multipart"]

TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchApiError(Exception):
    """A request the batch endpoints refuse: ``status`` and a message for the error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_multipart(content_type: str | None, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a ``multipart/form-data`` body: field name -> (file name, bytes)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not (content_type or "").startswith("multipart/form-data") or match is None:
        raise BatchApiError(400, "expected a multipart/form-data body")
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise BatchApiError(400, "a multipart part without headers")
        disposition = head.decode("latin-1")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name is None:
            raise BatchApiError(400, "a multipart part without a name")
        parts[name.group(1)] = (
            None if filename is None else filename.group(1),
            content.removesuffix(b"\r\n"),
        )
    return parts


def completion_body(reply: Reply, *, model: str, index: int) -> dict[str, Any]:
    """``reply`` as a non-streaming Chat Completions response body."""
    return {
        "id": f"chatcmpl-emubatch{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model or model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.input_tokens + reply.completion_tokens,
        },
    }


Answer = Callable[[str, dict[str, Any]], Awaitable[Reply]]
"""Gives the reply to one batch request (its ``url`` and ``body``)."""


@attrs.define(eq=False)
class BatchStore:
    """The files and batches of one emulator, in memory. ``now`` is ``trio.current_time()``
    of the caller; ``delay`` the seconds a batch stays ``in_progress``."""

    delay: float = 0.0
    files: dict[str, tuple[dict[str, Any], bytes]] = attrs.field(factory=dict)
    batches: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    _ready_at: dict[str, float] = attrs.field(factory=dict)

    def _add_file(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        file_id = f"file-emu{len(self.files)}"
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = (obj, data)
        return obj

    def upload(self, content_type: str | None, body: bytes) -> dict[str, Any]:
        parts = parse_multipart(content_type, body)
        if "file" not in parts:
            raise BatchApiError(400, "the multipart body has no 'file' part")
        purpose = parts.get("purpose", (None, b"batch"))[1].decode("utf-8", "replace")
        filename, data = parts["file"]
        return self._add_file(filename or "upload", purpose, data)

    def content(self, file_id: str) -> bytes:
        if file_id not in self.files:
            raise BatchApiError(404, f"no such file: {file_id}")
        return self.files[file_id][1]

    def create(self, body: Any, now: float) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
            raise BatchApiError(400, "input_file_id is required")
        if body["input_file_id"] not in self.files:
            raise BatchApiError(400, f"no such file: {body['input_file_id']}")
        batch_id = f"batch_emu{len(self.batches)}"
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "metadata": body.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        self.batches[batch_id] = batch
        self._ready_at[batch_id] = now + self.delay
        return batch

    def list_batches(self, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        """One page of the batches, newest first: at most ``limit`` of those after the batch
        ``after`` (``None``: from the newest), as the Batch API's ``GET /v1/batches``."""
        if not 1 <= limit <= 100:
            raise BatchApiError(400, "limit must be between 1 and 100")
        newest_first = list(reversed(self.batches.values()))
        start = 0
        if after is not None:
            ids = [b["id"] for b in newest_first]
            if after not in ids:
                raise BatchApiError(400, f"no such batch: {after}")
            start = ids.index(after) + 1
        page = newest_first[start : start + limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(newest_first),
        }

    async def retrieve(self, batch_id: str, now: float, answer: Answer) -> dict[str, Any]:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise BatchApiError(404, f"no such batch: {batch_id}")
        if batch["status"] not in TERMINAL and now >= self._ready_at[batch_id]:
            await self._complete(batch, answer)
        return batch

    async def _complete(self, batch: dict[str, Any], answer: Answer) -> None:
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        lines = self.files[batch["input_file_id"]][1].decode("utf-8", "replace").splitlines()
        for n, line in enumerate(x for x in lines if x.strip()):
            request_id = f"req_emubatch{n}"
            try:
                request = json.loads(line)
                custom_id, url, body = request["custom_id"], request["url"], request["body"]
            except (ValueError, KeyError, TypeError):
                errors.append(_line(n, None, None, {"code": "invalid_json_line", "message": line}))
                continue
            reply = await answer(url, body)
            if isinstance(reply.fault, StatusFault):
                code = reply.fault.code
                error = {"message": reply.fault.message or f"HTTP {code}", "type": "server_error"}
                response = {"status_code": code, "request_id": request_id, "body": {"error": error}}
                errors.append(_line(n, custom_id, response, None))
                continue
            model = body.get("model") if isinstance(body, dict) else None
            completion = completion_body(reply, model=str(model or "emulated-model"), index=n)
            response = {"status_code": 200, "request_id": request_id, "body": completion}
            output.append(_line(n, custom_id, response, None))
        for key, records in (("output_file_id", output), ("error_file_id", errors)):
            if records:
                data = "".join(json.dumps(r) + "\n" for r in records).encode()
                batch[key] = self._add_file(f"{batch['id']}_{key}.jsonl", "batch_output", data)[
                    "id"
                ]
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())
        batch["request_counts"] = {
            "total": len(output) + len(errors),
            "completed": len(output),
            "failed": len(errors),
        }


def _line(
    n: int, custom_id: str | None, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {"id": f"batch_req_emu{n}", "custom_id": custom_id, "response": response, "error": error}
