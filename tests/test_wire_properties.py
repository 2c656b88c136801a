"""Property tests for the wire formats existing clients read: the OpenAI Chat Completions stream
and object, and the Vercel AI SDK's UI message stream.

Any sequence of events a producer can emit (text of any Unicode, tool calls with arguments that
are JSON or not, usage, an end or an error) is encoded, cut into chunks of any size and decoded
with the same SSE decoder clients use; the OpenAI side is then read by the ``openai`` SDK's own
stream accumulator and validated by its types. The text, the tool calls and the usage must come
back exactly, and the frames must follow each format's order. (The SSE codec has its own round
trip in test_sse_codec.py; request bodies and WebSocket messages theirs with the server.)
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from pipeline import Done, Error, Event, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart, Usage
from pipeline.wire import (
    ChatCompletionBuilder,
    ChatCompletionChunks,
    SSEDecoder,
    UIMessageStream,
)

# UTF-8 text: what a provider can send (lone surrogates have no encoding).
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
JSON_ARGS = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)


@st.composite
def tool_call(draw: st.DrawFn, index: int) -> list[Event]:
    """A tool call as producers emit it: start, argument pieces, end with the whole."""
    arguments = draw(JSON_ARGS.map(json.dumps) | st.just("") | TEXT)
    cuts = sorted(draw(st.lists(st.integers(0, len(arguments)), max_size=3)))
    pieces = [arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)], strict=True)]
    call_id, name = f"call_{index}", draw(st.sampled_from(["get_weather", "search", "f"]))
    return [
        ToolCallStart(index, call_id, name),
        *(ToolCallDelta(index, p) for p in pieces),
        ToolCallEnd(index, call_id, name, arguments),
    ]


@st.composite
def answers(draw: st.DrawFn) -> list[Event]:
    """Text deltas and tool calls in any order, maybe usage, then Done or Error."""
    events: list[Event] = []
    tools = 0
    for kind in draw(st.lists(st.sampled_from(["text", "text", "tool"]), max_size=8)):
        if kind == "text":
            events.append(TextDelta(draw(TEXT)))
        else:
            events.extend(draw(tool_call(tools)))
            tools += 1
    if draw(st.booleans()):
        events.append(Usage(draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))))
    if draw(st.integers(0, 4)) == 0:
        events.append(Error("upstream", draw(TEXT), partial_chars=0))
    else:
        events.append(Done(draw(st.sampled_from([None, "stop", "length", "tool_calls"]))))
    return events


def decode(stream: bytes, sizes: list[int]) -> list[str]:
    """The data of every SSE event in ``stream`` fed in chunks of ``sizes`` (cycled)."""
    decoder, out, pos, k = SSEDecoder(), [], 0, 0
    while pos < len(stream):
        n = sizes[k % len(sizes)]
        out.extend(e.data for e in decoder.feed(stream[pos : pos + n]))
        pos, k = pos + n, k + 1
    out.extend(e.data for e in decoder.close())
    return out


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calls_of(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.id, e.name, e.arguments) for e in events if isinstance(e, ToolCallEnd)]


SIZES = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(answers(), SIZES, st.booleans())
def test_openai_stream_is_read_back_exactly_by_the_sdk(
    events: list[Event], sizes: list[int], include_usage: bool
) -> None:
    chunks = ChatCompletionChunks(
        completion_id="chatcmpl-1", model="m", created=1, include_usage=include_usage
    )
    data = decode(b"".join(chunks.encode(e) for e in events), sizes)
    end = events[-1]
    if isinstance(end, Error):
        # An error after the start: the API's error object, and no [DONE].
        *frames, last = data
        assert json.loads(last)["error"]["code"] == "upstream"
        assert json.loads(last)["error"]["message"] == end.message
    else:
        *frames, last = data
        assert last == "[DONE]"
    state = ChatCompletionStreamState()
    usage = None
    for frame in frames:
        chunk = ChatCompletionChunk.model_validate_json(frame)
        if not chunk.choices:  # the usage chunk, last, with stream_options.include_usage
            assert include_usage
            assert frame is frames[-1]
            usage = chunk.usage
            continue
        state.handle_chunk(chunk)
    if not frames:
        assert isinstance(end, Error)
        assert not text_of(events)
        assert not calls_of(events)
        return
    completion = state.current_completion_snapshot
    message = completion.choices[0].message
    assert (message.content or "") == text_of(events)
    got_calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert got_calls == calls_of(events)
    if isinstance(end, Done):
        reason = completion.choices[0].finish_reason
        assert reason == _finish(end.stop_reason, bool(calls_of(events)))
        reported = [e for e in events if isinstance(e, Usage)]
        if include_usage and reported:
            assert usage is not None
            assert (usage.prompt_tokens, usage.completion_tokens) == (
                reported[0].input_tokens,
                reported[0].output_tokens,
            )


def _finish(stop_reason: str | None, tool_calls: bool) -> str:
    """The provider's own reason when it gave one, else what the answer did."""
    if stop_reason is None:
        return "tool_calls" if tool_calls else "stop"
    return stop_reason


@settings(max_examples=100, deadline=None)
@given(answers())
def test_openai_completion_object_is_valid_and_exact(events: list[Event]) -> None:
    builder = ChatCompletionBuilder(completion_id="chatcmpl-1", model="m", created=1)
    for e in events:
        builder.add(e)
    completion = ChatCompletion.model_validate(builder.build())
    message = completion.choices[0].message
    text = text_of(events)
    assert message.content == (text if text or not calls_of(events) else None)
    got_calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert got_calls == calls_of(events)


@settings(max_examples=150, deadline=None)
@given(answers(), SIZES)
def test_ui_message_stream_parts_are_in_order_and_exact(
    events: list[Event], sizes: list[int]
) -> None:
    stream = UIMessageStream("msg-1")
    data = decode(stream.start() + b"".join(stream.encode(e) for e in events), sizes)
    assert data[-1] == "[DONE]"
    parts: list[dict[str, Any]] = [json.loads(d) for d in data[:-1]]
    kinds = [p["type"] for p in parts]
    assert kinds[:2] == ["start", "start-step"]
    assert parts[0]["messageId"] == "msg-1"
    end = events[-1]
    assert kinds[-1] == "finish"
    if isinstance(end, Error):
        assert kinds[-2] == "error"
        assert parts[-1]["finishReason"] == "error"
    # Text blocks: text-start, its deltas, text-end; never interleaved, each id once.
    open_id: str | None = None
    seen: set[str] = set()
    text: list[str] = []
    inputs: dict[str, str] = {}
    for p in parts:
        kind = p["type"]
        if kind == "text-start":
            assert open_id is None
            assert p["id"] not in seen
            open_id = p["id"]
            seen.add(open_id)
        elif kind == "text-delta":
            assert p["id"] == open_id
            text.append(p["delta"])
        elif kind == "text-end":
            assert p["id"] == open_id
            open_id = None
        elif kind.startswith("tool-input"):
            assert open_id is None  # a text block is closed before a tool part
            if kind == "tool-input-start":
                inputs[p["toolCallId"]] = ""
            elif kind == "tool-input-delta":
                inputs[p["toolCallId"]] += p["inputTextDelta"]
            elif kind == "tool-input-available":
                sent = inputs[p["toolCallId"]]
                # Compared as JSON text: arguments such as "NaN" parse to a value unequal to
                # itself.
                assert json.dumps(p["input"]) == json.dumps(
                    json.loads(sent) if sent.strip() else {}
                )
            else:
                assert kind == "tool-input-error"
                assert p["input"] == inputs[p["toolCallId"]]
    assert "".join(text) == text_of(events)
    assert [(i, a) for i, a in inputs.items()] == [(c[0], c[2]) for c in calls_of(events)]
    if isinstance(end, Done):
        assert open_id is None
        reported = [e for e in events if isinstance(e, Usage)]
        finish = parts[-1]
        if reported:
            usage = finish["messageMetadata"]["usage"]
            assert usage["inputTokens"] == reported[0].input_tokens
            assert usage["outputTokens"] == reported[0].output_tokens
    else:
        assert parts[-2]["errorText"] == (end.message or end.kind)
