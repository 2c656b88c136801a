"""One conversation in the OpenAI Chat Completions form, as the other APIs take it.

A :class:`~._backend.Backend` receives messages and tools the way the Chat Completions API
takes them (the HTTP server's requests, the OpenAI-compatible route included, are in that form):
``{"role": "system"|"user"|"assistant", "content": str}``, an assistant turn's ``tool_calls``
(``[{"id", "type": "function", "function": {"name", "arguments"}}]``), ``{"role": "tool",
"tool_call_id", "content"}`` for a tool's result, and tools as ``{"type": "function",
"function": {"name", "description", "parameters"}}``. These functions give the Anthropic
Messages and the OpenAI Responses equivalents. Pure; the input is not modified.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["anthropic_messages", "anthropic_tools", "responses_input", "responses_tools"]


def _text(content: object) -> str:
    return content if isinstance(content, str) else ""


def _system(messages: Sequence[Mapping[str, Any]]) -> str | None:
    parts = [_text(m.get("content")) for m in messages if m.get("role") == "system"]
    return "\n\n".join(parts) or None


def _arguments(raw: object) -> Any:
    try:
        return json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except ValueError:
        return {}


def _calls(message: Mapping[str, Any]) -> list[tuple[Any, Any, Any]]:
    """An assistant message's tool calls as ``(id, name, arguments text)``."""
    if message.get("role") != "assistant":
        return []
    out = []
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {})
        out.append((call.get("id"), fn.get("name"), fn.get("arguments") or ""))
    return out


def anthropic_messages(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str | None, list[dict[str, Any]]]:
    """The ``system`` prompt (system messages joined) and the Messages API's ``messages``:
    an assistant turn's tool calls become ``tool_use`` blocks (arguments parsed), and
    consecutive tool results one user turn of ``tool_result`` blocks."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        if role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": str(m.get("tool_call_id", "")),
                "content": _text(m.get("content")),
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        calls = _calls(m)
        if calls:
            blocks: list[dict[str, Any]] = []
            if _text(m.get("content")):
                blocks.append({"type": "text", "text": m["content"]})
            blocks.extend(
                {"type": "tool_use", "id": i, "name": name, "input": _arguments(args)}
                for i, name, args in calls
            )
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": role, "content": _text(m.get("content"))})
    return _system(messages), out


def anthropic_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat Completions function tools as Messages API tools (``input_schema``)."""
    out = []
    for tool in tools:
        fn = tool.get("function", {})
        spec: dict[str, Any] = {
            "name": fn.get("name"),
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            spec["description"] = fn["description"]
        out.append(spec)
    return out


def responses_input(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str | None, list[dict[str, Any]]]:
    """The ``instructions`` (system messages joined) and the Responses API's ``input`` items:
    tool calls become ``function_call`` items, tool results ``function_call_output``."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        if role == "tool":
            out.append(
                {
                    "type": "function_call_output",
                    "call_id": str(m.get("tool_call_id", "")),
                    "output": _text(m.get("content")),
                }
            )
            continue
        if _text(m.get("content")) or not m.get("tool_calls"):
            out.append({"role": role, "content": _text(m.get("content"))})
        out.extend(
            {"type": "function_call", "call_id": i, "name": name, "arguments": args}
            for i, name, args in _calls(m)
        )
    return _system(messages), out


def responses_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat Completions function tools as Responses API tools (flat ``name``/``parameters``)."""
    out = []
    for tool in tools:
        fn = tool.get("function", {})
        spec: dict[str, Any] = {"type": "function", "name": fn.get("name")}
        if fn.get("description"):
            spec["description"] = fn["description"]
        if fn.get("parameters"):
            spec["parameters"] = fn["parameters"]
        out.append(spec)
    return out
