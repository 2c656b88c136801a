"""The OpenAI producers against the provider emulator, checked against the SDK's own helpers."""

from __future__ import annotations

import gc
import gzip
import itertools
import json
import math
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio
import trio.testing

from pipeline import (
    Backoff,
    ConfigError,
    Done,
    Error,
    Event,
    EventReceiver,
    Metadata,
    Pipeline,
    ProducerError,
    ProducerProtocolError,
    ProducerStatusError,
    ProducerTimeout,
    Route,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from pipeline.producers._base import CostGuard, CostLimitError, RetryPolicy
from pipeline.producers._openai import (
    OpenAIChatProducer,
    OpenAIResponsesProducer,
    openai_client,
)
from pipeline.testing import RecordingSink
from pipeline.testing.emulator import (
    Emulator,
    Reply,
    RequestRecord,
    Script,
    ToolCall,
    error_event_after,
    malformed_after,
    open_emulator,
    reset_after,
    split_utf8,
    stall_after,
    status,
)

EmulatorFactory = Callable[..., Awaitable[Emulator]]  # the `emulator` fixture (conftest.py)
KEY = "sk-llmpipe-test-DISTINCTIVE-0123456789abcdef"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather?"}]
WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_w1")
CLOCK = ToolCall("get_time", {"tz": "Europe/Paris"}, id="call_t2")
TOOLS_REPLY = Reply(
    ["Let", " me", " check", " wörld", " 🌍."],
    tool_calls=[WEATHER, CLOCK],
    input_tokens=21,
    output_tokens=34,
)
FAST = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.1, jitter=False))


@asynccontextmanager
async def client_for(
    emu: Emulator, clock: trio.testing.MockClock | None = None
) -> AsyncIterator[openai.AsyncOpenAI]:
    """A client for ``emu``. With ``clock`` (pytest-trio's ``mock_clock``), warm the client up
    first, then make the clock autojump: the SDK's first request on a client probes the
    platform in a worker thread, and an autojumping clock would leap over that real wait
    straight to the next timeout (a flaky 60 s "no response"). The warm-up goes to a second
    emulator so ``emu.requests`` holds only the test's own requests."""
    async with openai_client(base_url=emu.openai_base_url, api_key=KEY) as client:
        if clock is not None:
            clock.autojump_threshold = math.inf
            async with open_emulator() as warm:
                await client.get(warm.openai_base_url + "/models", cast_to=object)
            clock.autojump_threshold = 0
        yield client


def chat(client: openai.AsyncOpenAI, **kwargs: Any) -> OpenAIChatProducer:
    kwargs.setdefault("retry", FAST)
    producer = OpenAIChatProducer(client, model="gpt-emu", messages=MESSAGES, **kwargs)
    producer.rng = random.Random(0)
    return producer


def responses(client: openai.AsyncOpenAI, **kwargs: Any) -> OpenAIResponsesProducer:
    kwargs.setdefault("retry", FAST)
    return OpenAIResponsesProducer(client, model="gpt-emu", input="What is the weather?", **kwargs)


async def run(producer: Any, **kwargs: Any) -> RecordingSink:
    sink = RecordingSink()
    await Pipeline(producer, sinks=[sink], **kwargs).run()
    return sink


def of(events: list[Event], cls: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def check_tool_events(events: list[Event]) -> list[ToolCallEnd]:
    """Starts, deltas and ends agree; returns the ends."""
    starts = {e.index: e for e in of(events, ToolCallStart)}
    ends = of(events, ToolCallEnd)
    assert sorted(starts) == sorted(e.index for e in ends)
    for end in ends:
        pieces = [d.arguments_delta for d in of(events, ToolCallDelta) if d.index == end.index]
        assert "".join(pieces) == end.arguments
        assert (starts[end.index].id, starts[end.index].name) == (end.id, end.name)
    return ends


def assert_no_key(events: list[Event], *errors: BaseException) -> None:
    for event in events:
        assert KEY not in repr(event)
    for exc in errors:
        assert KEY not in str(exc)
        assert KEY not in repr(exc)


# ---------------------------------------------------------------------------------------------
# Chat Completions: our events equal the SDK's accumulated completion


async def test_chat_text_tools_usage_match_the_sdk(emulator: EmulatorFactory) -> None:
    emu = await emulator(TOOLS_REPLY)
    async with client_for(emu) as client:
        sink = await run(chat(client))
        async with client.chat.completions.stream(
            model="gpt-emu", messages=cast_messages(), stream_options={"include_usage": True}
        ) as stream:
            final = await stream.get_final_completion()
    events = sink.events
    message = final.choices[0].message
    assert sink.text == message.content == "Let me check wörld 🌍."
    ends = check_tool_events(events)
    assert message.tool_calls is not None
    assert [(e.id, e.name, e.arguments) for e in ends] == [
        (c.id, c.function.name, c.function.arguments) for c in message.tool_calls
    ]
    assert [json.loads(e.arguments) for e in ends] == [
        {"city": "Paris", "unit": "celsius"},
        {"tz": "Europe/Paris"},
    ]
    [usage] = of(events, Usage)
    assert final.usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (
        final.usage.prompt_tokens,
        final.usage.completion_tokens,
    )
    assert events[0] == Metadata("openai", final.model, "chatcmpl-emu0", seq=1)
    assert events[-1] == Done(final.choices[0].finish_reason, seq=len(events))
    assert isinstance(events[-2], Usage)
    # Text streams first; every tool call ends when finish_reason arrives, before Usage.
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("ToolCallEnd") > kinds.index("ToolCallDelta")
    body = emu.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_the_request_is_the_one_create_would_send(emulator: EmulatorFactory) -> None:
    """The producers send their request with the SDK's ``post`` rather than ``create`` (whose
    per-call parameter transform costs more than the rest of a short stream): method, URL,
    headers and JSON body are those of ``create`` with the same parameters, for both APIs,
    with every option set."""
    emu = await emulator(Reply("Hi"))
    sent: list[httpx.Request] = []

    async def hook(request: httpx.Request) -> None:
        await request.aread()
        sent.append(request)

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    options: dict[str, Any] = {"temperature": 0.5, "tools": tools, "stall_timeout": None}
    http = httpx.AsyncClient(event_hooks={"request": [hook]})
    async with openai_client(base_url=emu.openai_base_url, api_key=KEY, http_client=http) as c:
        await run(chat(c, max_tokens=50, extra={"top_k": 5}, **options))
        stream = await c.chat.completions.create(
            messages=cast_messages(),
            model="gpt-emu",
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.5,
            tools=tools,  # type: ignore[arg-type]
            extra_body={"top_k": 5},
        )
        async with stream:
            pass
        await run(responses(c, instructions="Be brief.", max_output_tokens=60, **options))
        answer = await c.responses.create(
            model="gpt-emu",
            input="What is the weather?",
            instructions="Be brief.",
            max_output_tokens=60,
            stream=True,
            temperature=0.5,
            tools=tools,  # type: ignore[arg-type]
        )
        async with answer:
            pass
    ours_chat, sdk_chat, ours_responses, sdk_responses = sent
    for ours, sdk in ((ours_chat, sdk_chat), (ours_responses, sdk_responses)):
        assert (ours.method, ours.url) == (sdk.method, sdk.url)
        assert json.loads(ours.content) == json.loads(sdk.content)
        assert dict(ours.headers) == dict(sdk.headers)
    assert json.loads(ours_chat.content)["top_k"] == 5


def cast_messages() -> Any:
    return MESSAGES


async def test_chat_request_parameters_and_keep_alive(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("Hi there"))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    async with client_for(emu) as client:
        first = await run(
            chat(client, max_tokens=50, temperature=0.0, tools=tools, extra={"top_k": 5})
        )
        second = await run(chat(client))
    assert first.text == second.text == "Hi there"
    body = emu.requests[0].body
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (50, 0.0, 5)
    assert body["tools"] == tools
    # The body is read to its end before Done: the connection goes back to the pool.
    assert len(emu.connections) == 1
    assert emu.requests[0].header("authorization") == "<redacted>"


class FakeResponse:
    """Stands in for the streamed httpx response: the given body, then (optionally) a body
    that stays open forever, as a misbehaving server's would."""

    def __init__(self, body: bytes, *, hang: bool) -> None:
        self.body = body
        self.hang = hang
        self.stream = self  # its byte stream: raw bytes, no content-encoding
        self.headers: dict[str, str] = {}

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        yield self.body
        if self.hang:
            await trio.sleep_forever()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.aiter_bytes()


def fake_body(producer: Any, body: bytes, *, hang: bool = False) -> Any:
    @asynccontextmanager
    async def request() -> AsyncIterator[FakeResponse]:
        yield FakeResponse(body, hang=hang)

    producer._send = request
    return producer


def sse_body(*frames: object) -> bytes:
    return b"".join(
        b"data: " + (f if isinstance(f, bytes) else json.dumps(f).encode()) + b"\n\n"
        for f in frames
    )


async def test_chat_tolerates_a_sparse_compatible_server() -> None:
    # llama.cpp-like: no id/model fields, arguments in the call's first chunk, usage with the
    # finish chunk, no [DONE].
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}
    body = sse_body(
        {"choices": [{"delta": {"role": "assistant"}}]},
        {"choices": [{"delta": {"content": "ok"}}]},
        {"choices": [{"delta": {"tool_calls": [call]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}]},
        {
            "choices": [{"delta": {}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        },
    )
    async with openai_client(base_url="http://127.0.0.1:9/v1", api_key=KEY) as client:
        sink = await run(fake_body(chat(client), body))
    assert [attrs.evolve(e, seq=0) for e in sink.events] == [
        Metadata("openai", "", ""),
        TextDelta("ok"),
        ToolCallStart(0, "c1", "f"),
        ToolCallDelta(0, "{"),
        ToolCallDelta(0, "}"),
        ToolCallEnd(0, "c1", "f", "{}"),
        Usage(3, 4),
        Done("tool_calls"),
    ]


async def test_compressed_body_is_decoded(nursery: trio.Nursery) -> None:
    """The body is read raw (cheaper) only when it is not compressed: a gzip SSE body from a
    real loopback server still gives the text."""
    chunk = {"choices": [{"delta": {"content": "zipped text"}}]}
    body = gzip.compress(sse_body(chunk, {"choices": [{"delta": {}, "finish_reason": "stop"}]}))

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        assert match is not None
        while len(rest) < int(match.group(1)):
            rest += await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with openai_client(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY) as client:
        sink = await run(chat(client))
    assert sink.text == "zipped text"
    assert isinstance(sink.events[-1], Done)


async def test_streams_one_after_another_reuse_one_connection(emulator: EmulatorFactory) -> None:
    # The body is read to its end after [DONE] before Done goes out, so the HTTP/1.1
    # connection goes back to the pool rather than being closed by the end of the stream.
    emu = await emulator(Script([Reply("one"), Reply("two"), Reply("three")]))
    async with client_for(emu) as client:
        texts = [(await run(chat(client))).text for _ in range(3)]
    assert texts == ["one", "two", "three"]
    assert len(emu.connections) == 1
    assert emu.connections[0].requests == [0, 1, 2]


async def test_body_left_open_after_done_is_not_a_stall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = sse_body(
        {"id": "x", "model": "m", "choices": [{"delta": {"content": "hi"}}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
        b"[DONE]",
    )
    async with openai_client(base_url="http://127.0.0.1:9/v1", api_key=KEY) as client:
        start = trio.current_time()
        sink = await run(fake_body(chat(client, stall_timeout=30), body, hang=True))
    assert sink.text == "hi"
    assert sink.events[-1] == Done("stop", seq=len(sink.events))
    assert trio.current_time() - start == pytest.approx(0.1)  # the bounded drain, not 30 s


async def test_stream_ending_early_is_a_protocol_error() -> None:
    body = sse_body({"id": "x", "model": "m", "choices": [{"delta": {"content": "hi"}}]})
    async with openai_client(base_url="http://127.0.0.1:9/v1", api_key=KEY) as client:
        sink = await run(fake_body(chat(client), body))
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.retryable, sink.text) == ("protocol", True, "hi")
    assert "ended before" in error.message


# ---------------------------------------------------------------------------------------------
# Faults


async def test_error_event_mid_stream(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(["Hel", "lo", " world"], fault=error_event_after(2)))
    async with client_for(emu) as client:
        sink = await run(chat(client))
    assert sink.text == "Hello"
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.retryable, error.partial_chars) == ("producer", True, 5)
    assert "server_error" in error.message
    assert "Overloaded" in error.message
    assert len(emu.requests) == 1  # after the first token: never restarted


async def test_error_event_before_content_is_retried(emulator: EmulatorFactory) -> None:
    script = [Reply("x", fault=error_event_after(0)), Reply("fine")]
    emu = await emulator(script)
    async with client_for(emu) as client:
        sink = await run(chat(client))
    assert sink.text == "fine"
    assert len(emu.requests) == 2
    assert len(of(sink.events, Metadata)) == 1  # the first attempt's Metadata was held back


async def test_non_retryable_error_event_before_content_is_raised(
    emulator: EmulatorFactory,
) -> None:
    emu = await emulator(
        Reply("x", fault=error_event_after(0, "bad input", error_type="invalid_request_error"))
    )
    async with client_for(emu) as client:
        with pytest.raises(ProducerError, match="invalid_request_error: bad input") as info:
            await run(chat(client))
    assert not info.value.retryable
    assert len(emu.requests) == 1


async def test_connection_reset_mid_stream(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(["Hel", "lo", " world"], fault=reset_after(2)))
    async with client_for(emu) as client:
        sink = await run(chat(client))
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.retryable, error.partial_chars) == ("connection", True, 5)
    assert sink.text == "Hello"


async def test_stall_after_first_token(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply(["Hel", "lo", " world"], fault=stall_after(2)))
    async with client_for(emu, mock_clock) as client:
        start = trio.current_time()
        sink = await run(chat(client, stall_timeout=3.0))
        gone = await emu.wait_disconnect(0)
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.partial_chars) == ("timeout", 5)
    assert "stalled" in error.message
    assert gone - start == pytest.approx(3.0, abs=0.05)


async def test_time_spent_in_emit_is_not_a_stall_and_the_next_read_is_timed_anew(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    # Our own consumer holds the first delta for 10 s (over the 3 s stall timeout): no stall.
    # The upstream then stalls after its second delta: the read that waits for the third
    # expires 3 s after it started, not 3 s after the previous read.
    emu = await emulator(Reply(["Hel", "lo", " world"], fault=stall_after(2)))
    texts: list[str] = []

    async def slow_emit(event: Event) -> None:
        if isinstance(event, TextDelta):
            if not texts:
                await trio.sleep(10)
            texts.append(event.text)

    async with client_for(emu, mock_clock) as client:
        start = trio.current_time()
        with pytest.raises(ProducerTimeout, match=r"stalled: no data for 3\.0 s"):
            await chat(client, stall_timeout=3.0).stream(slow_emit)
    assert texts == ["Hel", "lo"]
    assert trio.current_time() - start == pytest.approx(13.0, abs=0.05)


async def test_stall_before_first_token_is_retried_then_raised(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("never", fault=stall_after(0)))
    async with client_for(emu, mock_clock) as client:
        start = trio.current_time()
        with pytest.raises(ProducerTimeout, match="no first token within 2"):
            await run(chat(client, first_token_timeout=2.0))
    assert len(emu.requests) == 3
    # 3 waits of 2 s, backoff 0.1 and 0.2 s between them.
    assert trio.current_time() - start == pytest.approx(6.3, abs=0.05)


async def test_no_response_head_is_a_first_token_timeout(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    async def hold(record: RequestRecord) -> Reply:
        await trio.sleep_forever()
        raise AssertionError

    emu = await emulator(hold)
    async with client_for(emu, mock_clock) as client:
        with pytest.raises(ProducerTimeout, match="no response within 2"):
            await run(chat(client, first_token_timeout=2.0, retry=RetryPolicy(max_attempts=1)))
    assert len(emu.requests) == 1


async def test_429_retry_after_is_honoured(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("Hello big world", fault=status(429, retry_after=2, times=2)))
    async with client_for(emu, mock_clock) as client:
        sink = await run(chat(client, retry=RetryPolicy()))
    assert sink.text == "Hello big world"  # no duplicated text
    assert len(of(sink.events, TextDelta)) == 3
    times = [r.received_at for r in emu.requests]
    assert len(times) == 3
    assert [b - a for a, b in itertools.pairwise(times)] == [
        pytest.approx(2.0, abs=0.01),
        pytest.approx(2.0, abs=0.01),
    ]
    assert [r.status for r in emu.requests] == [429, 429, 200]


async def test_500_before_first_byte_is_retried(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("recovered", fault=status(500, times=1)))
    async with client_for(emu, mock_clock) as client:
        sink = await run(chat(client))
    assert sink.text == "recovered"
    assert [r.status for r in emu.requests] == [500, 200]


async def test_500_forever_raises_status_error(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("never", fault=status(500)))
    async with client_for(emu, mock_clock) as client:
        with pytest.raises(ProducerStatusError) as info:
            await run(chat(client))
    assert info.value.status_code == 500
    assert info.value.retryable
    assert len(emu.requests) == FAST.max_attempts


async def test_malformed_after_start_and_before(emulator: EmulatorFactory) -> None:
    emu = await emulator([Reply(["a", "b", "c"], fault=malformed_after(2)), Reply("x")])
    async with client_for(emu) as client:
        sink = await run(chat(client))
        error = sink.events[-1]
        assert isinstance(error, Error)
        assert (error.kind, error.retryable, error.partial_chars) == ("protocol", False, 2)
        assert "malformed" in error.message

    emu = await emulator(Reply(["a", "b"], fault=malformed_after(0)))
    async with client_for(emu) as client:
        with pytest.raises(ProducerProtocolError, match="malformed"):
            await run(chat(client))
    assert len(emu.requests) == 1  # a protocol error is not retried


async def test_split_utf8_gives_the_exact_text(emulator: EmulatorFactory) -> None:
    text = "Grüße, 日本語 and emoji 🎉🌍 done"
    emu = await emulator(Reply(text, fault=split_utf8(0)))
    async with client_for(emu) as client:
        sink = await run(chat(client))
    assert sink.text == text
    assert "\ufffd" not in sink.text


# ---------------------------------------------------------------------------------------------
# Cancellation closes the upstream request


async def test_cancel_mid_stream_closes_upstream(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(["tok "] * 2000, tokens_per_second=200))
    got_some = trio.Event()

    async def reader(events: EventReceiver) -> None:
        async for event in events:
            if isinstance(event, TextDelta):
                got_some.set()

    async with client_for(emu) as client:
        async with Pipeline(chat(client), sinks=[reader]).open() as running:
            with trio.fail_after(5):
                await got_some.wait()
            cancelled_at = trio.current_time()
            running.cancel()
        with trio.fail_after(1):
            gone = await emu.wait_disconnect(0)
    assert gone - cancelled_at < 0.05
    assert running.reason == "cancelled"


async def test_cancel_while_parked_in_emit_closes_upstream(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(["tok "] * 20000))
    started = trio.Event()

    async def never_reads(events: EventReceiver) -> None:
        started.set()
        await trio.sleep_forever()

    async with client_for(emu) as client:
        async with Pipeline(
            chat(client), sinks=[Route(never_reads, max_items=1)], source_buffer=1
        ).open() as running:
            await started.wait()
            # The producer fills the sink's channel, then parks in emit: wait until it is full
            # and nothing moved for 100 ms (under load the first check alone can be early).
            # (Without stages the producer sends to the sink's channel itself; there is no
            # source channel in between.)
            before = -1
            for _ in range(100):
                stats = running.statistics()
                full = stats.sinks[0].channel.items_queued == 1
                if full and stats.events_in == before:
                    break
                before = stats.events_in
                await trio.sleep(0.1)
            stats = running.statistics()
            # Parked: no progress, a few events in, the sink's channel full.
            assert stats.events_in == before <= 5
            assert stats.sinks[0].channel.items_queued == stats.sinks[0].channel.max_items == 1
            cancelled_at = trio.current_time()
            running.cancel()
        with trio.fail_after(1):
            gone = await emu.wait_disconnect(0)
    assert gone - cancelled_at < 0.05
    assert emu.requests[0].deltas_sent < 20000


@pytest.mark.parametrize("cancel", [False, True], ids=["completed", "cancelled"])
async def test_upstream_response_is_freed_without_the_cyclic_gc(
    emulator: EmulatorFactory, cancel: bool
) -> None:
    """httpx binds a streamed response and its stream to each other; the producer drops the
    stream once the response is closed, so the response and the connection behind it are
    freed by reference counting, not left for the next (stream-pausing) GC collection."""
    emu = await emulator(Reply(["tok "] * (2000 if cancel else 5), tokens_per_second=200))

    async def once(client: openai.AsyncOpenAI) -> None:
        got_some = trio.Event()

        async def reader(events: EventReceiver) -> None:
            async for event in events:
                if isinstance(event, TextDelta):
                    got_some.set()

        async with Pipeline(chat(client), sinks=[reader]).open() as running:
            if cancel:
                with trio.fail_after(5):
                    await got_some.wait()
                running.cancel()

    async with client_for(emu) as client:
        await once(client)  # warm-up: the first request's one-off objects
        gc.collect()
        gc.disable()
        try:
            await once(client)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cyclic = [o for o in gc.garbage if isinstance(o, httpx.Response)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert cyclic == []


# ---------------------------------------------------------------------------------------------
# Cost guard, secrets, configuration


async def test_cost_guard_refuses_before_any_request(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("never"))
    async with client_for(emu) as client:
        big = [{"role": "user", "content": "word " * 400}]
        producer = OpenAIChatProducer(
            client, model="gpt-emu", messages=big, cost_guard=CostGuard(max_input_tokens=100)
        )
        with pytest.raises(CostLimitError, match="max_input_tokens"):
            await run(producer)
        producer = chat(client, max_tokens=5000, cost_guard=CostGuard(max_output_tokens=1000))
        with pytest.raises(CostLimitError, match="max_output_tokens"):
            await run(producer)
        responses_producer = responses(
            client, max_output_tokens=5000, cost_guard=CostGuard(max_output_tokens=10)
        )
        with pytest.raises(CostLimitError, match="max_output_tokens"):
            await run(responses_producer)
    assert emu.requests == []


async def test_api_key_never_leaks(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    leaky = f"Incorrect API key provided: {KEY}."
    emu = await emulator(
        [Reply(["Hel", "lo"], fault=error_event_after(1, leaky)), Reply("x", fault=status(401))]
    )
    async with client_for(emu, mock_clock) as client:
        sink = await run(chat(client))
        assert isinstance(sink.events[-1], Error)
        assert "<redacted>" in sink.events[-1].message
        emu401 = await emulator(Reply("x", fault=status(401, message=leaky)))
        async with client_for(emu401, mock_clock) as client401:
            with pytest.raises(ProducerStatusError) as info:
                await run(chat(client401))
    assert info.value.status_code == 401
    assert not info.value.retryable
    assert "<redacted>" in str(info.value)
    assert_no_key(sink.events, info.value)


def test_openai_client_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        openai_client()
    local = openai_client(base_url="http://127.0.0.1:8080/v1")
    assert local.api_key == "sk-no-key-required"
    assert local.max_retries == 0
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://example.invalid/v1")
    from_env = openai_client()
    assert from_env.api_key == KEY
    assert str(from_env.base_url) == "http://example.invalid/v1/"
    with pytest.raises(ConfigError, match="messages"):
        OpenAIChatProducer(from_env, model="m", messages=[])
    with pytest.raises(ConfigError, match="first_token_timeout"):
        OpenAIChatProducer(from_env, model="m", messages=MESSAGES, first_token_timeout=0)


# ---------------------------------------------------------------------------------------------
# Responses API


async def test_responses_text_tools_usage_match_the_sdk(emulator: EmulatorFactory) -> None:
    emu = await emulator(TOOLS_REPLY)
    async with client_for(emu) as client:
        sink = await run(responses(client, instructions="Be brief.", max_output_tokens=100))
        async with client.responses.stream(model="gpt-emu", input="hi") as stream:
            final = await stream.get_final_response()
    events = sink.events
    assert sink.text == final.output_text == "Let me check wörld 🌍."
    ends = check_tool_events(events)
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(e.id, e.name, e.arguments) for e in ends] == [
        (c.call_id, c.name, c.arguments) for c in calls
    ]
    assert [e.index for e in ends] == [1, 2]  # output_index: the message is item 0
    [usage] = of(events, Usage)
    assert final.usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert events[0] == Metadata("openai", final.model, "resp_emu0", seq=1)
    assert final.id == "resp_emu1"  # the same reply, served to the next request
    assert events[-1] == Done("tool_calls", seq=len(events))
    body = emu.requests[0].body
    assert (body["instructions"], body["max_output_tokens"]) == ("Be brief.", 100)


async def test_responses_stop_reasons(emulator: EmulatorFactory) -> None:
    emu = await emulator([Reply("All done."), Reply("cut", finish="length")])
    async with client_for(emu) as client:
        plain = await run(responses(client))
        cut = await run(responses(client))
    assert (plain.text, plain.events[-1]) == ("All done.", Done("stop", seq=len(plain.events)))
    assert (cut.text, cut.events[-1]) == ("cut", Done("length", seq=len(cut.events)))


async def test_responses_failed_mid_stream(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(["Hel", "lo", " world"], fault=error_event_after(2)))
    async with client_for(emu) as client:
        sink = await run(responses(client))
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.retryable, error.partial_chars) == ("producer", True, 5)
    assert "response.failed: server_error: Overloaded" in error.message


async def test_responses_reset_and_malformed(emulator: EmulatorFactory) -> None:
    emu = await emulator(
        [Reply(["a", "b", "c"], fault=reset_after(1)), Reply(["a", "b"], fault=malformed_after(1))]
    )
    async with client_for(emu) as client:
        reset = await run(responses(client))
        malformed = await run(responses(client))
    assert isinstance(reset.events[-1], Error)
    assert (reset.events[-1].kind, reset.text) == ("connection", "a")
    assert isinstance(malformed.events[-1], Error)
    assert (malformed.events[-1].kind, malformed.text) == ("protocol", "a")


async def test_responses_429_then_success(
    emulator: EmulatorFactory, mock_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("Hello", fault=status(429, retry_after=1.5, times=1)))
    async with client_for(emu, mock_clock) as client:
        sink = await run(responses(client))
    assert sink.text == "Hello"
    times = [r.received_at for r in emu.requests]
    assert times[1] - times[0] == pytest.approx(1.5, abs=0.01)


async def test_openai_client_does_not_queue_streams_past_httpx_default_pool(
    emulator: EmulatorFactory,
) -> None:
    # One streaming response holds one connection for its whole life: with httpx's default
    # pool of 100 connections, stream 101 of a server would wait for stream 1 to end.
    emu = await emulator(Reply(["a ", "b"], tokens_per_second=2))
    client = openai_client(base_url=emu.openai_base_url, api_key="sk-test")
    n = 110
    async with client, trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(run, chat(client))
        with trio.fail_after(10):
            while len(emu.requests) < n:  # noqa: ASYNC110 - waiting on the server's record
                await trio.sleep(0.01)
        # All 110 are streaming at once (each lasts about a second).
        assert sum(r.ended_at is None for r in emu.requests) > 100


async def test_the_read_timeout_is_left_to_the_producers_deadlines(
    emulator: EmulatorFactory,
) -> None:
    """With the first-token and the stall timeout both set, the loop bounds every read itself,
    so the SDK's request goes without the client's read timeout (one deadline per read of the
    body less); connect, write and pool stay the client's. With either unset, the client's
    read timeout stays, as the backstop."""
    emu = await emulator(Reply("Hi"))
    seen: list[dict[str, float | None]] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.extensions["timeout"])

    http = httpx.AsyncClient(
        timeout=httpx.Timeout(600.0, connect=10.0), event_hooks={"request": [hook]}
    )
    async with openai_client(base_url=emu.openai_base_url, api_key=KEY, http_client=http) as c:
        for producer in (chat(c), chat(c, stall_timeout=None), chat(c, first_token_timeout=None)):
            assert (await run(producer)).text == "Hi"
    assert seen[0] == {"connect": 10.0, "read": None, "write": 600.0, "pool": 600.0}
    assert [t["read"] for t in seen[1:]] == [600.0, 600.0]
