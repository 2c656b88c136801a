"""The providers' streaming wire formats: a :class:`Reply` as a list of SSE frames.

Shapes follow what the installed SDKs parse (openai 3.x ``ChatCompletionChunk`` and the
``ResponseStreamEvent`` union with its ``ResponseStreamState`` accumulator; anthropic 2.x
``RawMessageStreamEvent`` with ``accumulate_event``) and the providers' published stream
examples: compact JSON, raw UTF-8 (``ensure_ascii=False``), one SSE event per frame.

* OpenAI Chat Completions: ``data:`` lines only, a role chunk, one chunk per delta, a chunk
  with ``finish_reason``, a ``choices: []`` usage chunk when ``stream_options.include_usage``
  was asked for, then ``data: [DONE]``.
* OpenAI Responses: ``event:`` + ``data:`` with ``type`` and a ``sequence_number`` counting
  from 0; ends with ``response.completed`` (or ``response.incomplete``); no ``[DONE]``.
* Anthropic Messages: ``event:`` + ``data:``; ``message_start``, content blocks (a ``ping``
  after the first block's start),
  ``message_delta`` (stop reason, cumulative usage), ``message_stop``.
* OpenAI speech (``/v1/audio/speech``): no SSE, the raw PCM body (:func:`speech_pcm`).

Pure functions of their inputs: nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import array
import json
import math
import sys
from typing import Any, Final, Literal, TypeAlias

import attrs

from ._script import ErrorEventAfter, Reply, SpeechReply

__all__ = [
    "PROVIDER_BY_PATH",
    "Frame",
    "Provider",
    "WireFormat",
    "models_body",
    "speech_pcm",
    "sse",
    "status_body",
    "wire_format",
]

Provider: TypeAlias = Literal["openai-chat", "openai-responses", "anthropic", "openai-speech"]

PROVIDER_BY_PATH: Final[dict[str, Provider]] = {
    "/v1/chat/completions": "openai-chat",
    "/v1/responses": "openai-responses",
    "/v1/messages": "anthropic",
    "/v1/audio/speech": "openai-speech",
}

_CREATED: Final = 1_735_689_600  # 2025-01-01T00:00:00Z: fixed, so recordings are reproducible
_ANTHROPIC_STOP: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@attrs.frozen
class Frame:
    """One SSE event, encoded. ``delta`` marks frames that carry a token or argument piece:
    they are the ones paced by ``tokens_per_second`` and counted by ``*_after(n)`` faults."""

    data: bytes
    delta: bool = False


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(data: object, event: str | None = None) -> bytes:
    """Encode one SSE event (``data`` as compact JSON unless it is already a string)."""
    payload = data if isinstance(data, str) else _json(data)
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {payload}\n\n".encode()


@attrs.frozen
class WireFormat:
    """A reply rendered for one provider; ``index`` is the request's number in the emulator."""

    provider: Provider
    reply: Reply
    model: str
    index: int
    include_usage: bool = False

    def frames(self) -> list[Frame]:
        """Every frame of the normal (fault-free) stream, in order."""
        if self.provider == "openai-chat":
            return self._chat_frames()
        if self.provider == "openai-responses":
            return self._responses_frames()
        return self._anthropic_frames()

    def error_event(self, fault: ErrorEventAfter, sequence_number: int) -> bytes:
        """The mid-stream error event; ``sequence_number`` is the number of frames already sent."""
        if self.provider == "openai-chat":
            error = {
                "message": fault.message,
                "type": fault.error_type or "server_error",
                "param": None,
                "code": None,
            }
            return sse({"error": error})
        if self.provider == "openai-responses":
            response = self._response_object("failed", output=[], usage=None)
            response["error"] = {
                "code": fault.error_type or "server_error",
                "message": fault.message,
            }
            event = {
                "type": "response.failed",
                "sequence_number": sequence_number,
                "response": response,
            }
            return sse(event, "response.failed")
        error = {"type": fault.error_type or "overloaded_error", "message": fault.message}
        return sse({"type": "error", "error": error}, "error")

    def malformed(self) -> bytes:
        """An event whose ``data:`` is cut off mid-JSON."""
        if self.provider == "openai-chat":
            return b'data: {"id":"chatcmpl-emu","choices":[{"index":0,"delta":{"content":\n\n'
        if self.provider == "openai-responses":
            return b'event: response.output_text.delta\ndata: {"type":"response.output_text.de\n\n'
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"del\n\n'

    # -- OpenAI Chat Completions ---------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-emu{self.index}",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": self.model,
            "system_fingerprint": "fp_emulator",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _chat_frames(self) -> list[Frame]:
        reply = self.reply
        content: str | None = "" if reply.tokens or not reply.tool_calls else None
        frames = [
            Frame(sse(self._chunk({"role": "assistant", "content": content, "refusal": None})))
        ]
        frames += [
            Frame(sse(self._chunk({"content": token})), delta=True) for token in reply.tokens
        ]
        for i, call in enumerate(reply.tool_calls):
            start = {
                "index": i,
                "id": call.id or f"call_emu{self.index}_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            frames.append(Frame(sse(self._chunk({"tool_calls": [start]}))))
            for piece in call.arguments:
                delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                frames.append(Frame(sse(self._chunk(delta)), delta=True))
        frames.append(Frame(sse(self._chunk({}, reply.finish_reason))))
        if self.include_usage:
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.input_tokens + reply.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            frames.append(Frame(sse(usage_chunk)))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames

    # -- OpenAI Responses ----------------------------------------------------------------------

    def _response_object(
        self, status: str, *, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": f"resp_emu{self.index}",
            "object": "response",
            "created_at": _CREATED,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": None,
            "max_output_tokens": None,
            "metadata": {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": False,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
        }

    def _responses_frames(self) -> list[Frame]:
        reply = self.reply
        events: list[tuple[dict[str, Any], bool]] = []

        def add(event: dict[str, Any], *, delta: bool = False) -> None:
            events.append((event, delta))

        add(
            {
                "type": "response.created",
                "response": self._response_object("in_progress", output=[], usage=None),
            }
        )
        add(
            {
                "type": "response.in_progress",
                "response": self._response_object("in_progress", output=[], usage=None),
            }
        )
        incomplete = reply.finish_reason == "length"
        final_items: list[dict[str, Any]] = []
        output_index = 0
        if reply.tokens or not reply.tool_calls:
            item_id = f"msg_emu{self.index}"
            where = {"item_id": item_id, "output_index": output_index, "content_index": 0}
            item: dict[str, Any] = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "content": [],
                "role": "assistant",
            }
            add({"type": "response.output_item.added", "output_index": output_index, "item": item})
            empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            add({"type": "response.content_part.added", **where, "part": empty_part})
            for token in reply.tokens:
                add(
                    {"type": "response.output_text.delta", **where, "delta": token, "logprobs": []},
                    delta=True,
                )
            part = {**empty_part, "text": reply.text}
            add({"type": "response.output_text.done", **where, "text": reply.text, "logprobs": []})
            add({"type": "response.content_part.done", **where, "part": part})
            done_item = {
                **item,
                "status": "incomplete" if incomplete else "completed",
                "content": [part],
            }
            add(
                {
                    "type": "response.output_item.done",
                    "output_index": output_index,
                    "item": done_item,
                }
            )
            final_items.append(done_item)
            output_index += 1
        for i, call in enumerate(reply.tool_calls):
            item_id = f"fc_emu{self.index}_{i}"
            fc_item: dict[str, Any] = {
                "id": item_id,
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call.id or f"call_emu{self.index}_{i}",
                "name": call.name,
            }
            add(
                {
                    "type": "response.output_item.added",
                    "output_index": output_index,
                    "item": fc_item,
                }
            )
            for piece in call.arguments:
                add(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item_id,
                        "output_index": output_index,
                        "delta": piece,
                    },
                    delta=True,
                )
            add(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item_id,
                    "output_index": output_index,
                    "name": call.name,
                    "arguments": call.arguments_json,
                }
            )
            done_fc = {**fc_item, "status": "completed", "arguments": call.arguments_json}
            add(
                {"type": "response.output_item.done", "output_index": output_index, "item": done_fc}
            )
            final_items.append(done_fc)
            output_index += 1
        usage = {
            "input_tokens": reply.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": reply.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": reply.input_tokens + reply.completion_tokens,
        }
        kind = "response.incomplete" if incomplete else "response.completed"
        status = "incomplete" if incomplete else "completed"
        add(
            {
                "type": kind,
                "response": self._response_object(status, output=final_items, usage=usage),
            }
        )
        return [
            Frame(sse({**event, "sequence_number": seq}, event["type"]), delta=delta)
            for seq, (event, delta) in enumerate(events)
        ]

    # -- Anthropic Messages --------------------------------------------------------------------

    def _anthropic_frames(self) -> list[Frame]:
        reply = self.reply
        message: dict[str, Any] = {
            "id": f"msg_emu{self.index}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": reply.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
                "service_tier": "standard",
            },
        }
        frames = [Frame(sse({"type": "message_start", "message": message}, "message_start"))]
        block = 0
        if reply.tokens or not reply.tool_calls:
            start = {
                "type": "content_block_start",
                "index": block,
                "content_block": {"type": "text", "text": ""},
            }
            frames.append(Frame(sse(start, "content_block_start")))
            for token in reply.tokens:
                delta = {
                    "type": "content_block_delta",
                    "index": block,
                    "delta": {"type": "text_delta", "text": token},
                }
                frames.append(Frame(sse(delta, "content_block_delta"), delta=True))
            stop = {"type": "content_block_stop", "index": block}
            frames.append(Frame(sse(stop, "content_block_stop")))
            block += 1
        for i, call in enumerate(reply.tool_calls):
            tool_use = {
                "type": "tool_use",
                "id": call.id or f"toolu_emu{self.index}_{i}",
                "name": call.name,
                "input": {},
            }
            start = {"type": "content_block_start", "index": block, "content_block": tool_use}
            frames.append(Frame(sse(start, "content_block_start")))
            for piece in call.arguments:
                delta = {
                    "type": "content_block_delta",
                    "index": block,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
                frames.append(Frame(sse(delta, "content_block_delta"), delta=True))
            frames.append(
                Frame(sse({"type": "content_block_stop", "index": block}, "content_block_stop"))
            )
            block += 1
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": _ANTHROPIC_STOP[reply.finish_reason], "stop_sequence": None},
            "usage": {"output_tokens": reply.completion_tokens},
        }
        frames.insert(2, Frame(sse({"type": "ping"}, "ping")))  # after the first block start
        frames.append(Frame(sse(message_delta, "message_delta")))
        frames.append(Frame(sse({"type": "message_stop"}, "message_stop")))
        return frames


def speech_pcm(text: str, reply: SpeechReply) -> bytes:
    """The default speech audio: a sine of ``reply.tone_hz`` (amplitude 8000) lasting
    ``reply.seconds_per_char`` per character of ``text`` at ``reply.sample_rate``, s16le."""
    rate = reply.sample_rate
    n = round(len(text) * reply.seconds_per_char * rate)
    w = 2 * math.pi * reply.tone_hz / rate
    samples = array.array("h", (round(8000 * math.sin(w * i)) for i in range(n)))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def wire_format(
    provider: Provider, reply: Reply, *, model: str, index: int, include_usage: bool = False
) -> WireFormat:
    """Render ``reply`` for ``provider``; ``model`` is echoed in every event that names one."""
    return WireFormat(provider, reply, reply.model or model, index, include_usage)


_OPENAI_ERRORS: Final = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_ANTHROPIC_ERRORS: Final = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Permission denied."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed size."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded"),
}


def status_body(provider: Provider, code: int, message: str | None, *, request_id: str) -> bytes:
    """The JSON error body each provider sends with a non-2xx status."""
    if provider == "anthropic":
        kind, default = _ANTHROPIC_ERRORS.get(
            code, ("api_error" if code >= 500 else "invalid_request_error", f"HTTP {code}")
        )
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": kind, "message": message or default},
            "request_id": request_id,
        }
    else:
        kind, err_code, default = _OPENAI_ERRORS.get(
            code, ("server_error" if code >= 500 else "invalid_request_error", None, f"HTTP {code}")
        )
        body = {
            "error": {"message": message or default, "type": kind, "param": None, "code": err_code}
        }
    return _json(body).encode()


def models_body(provider: Literal["openai", "anthropic"], models: tuple[str, ...]) -> bytes:
    """``GET /v1/models`` in the provider's list format."""
    if provider == "anthropic":
        data: list[dict[str, Any]] = [
            {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for model in models
        ]
        body: dict[str, Any] = {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
    else:
        data = [
            {"id": model, "object": "model", "created": _CREATED, "owned_by": "llmpipe-emulator"}
            for model in models
        ]
        body = {"object": "list", "data": data}
    return _json(body).encode()
