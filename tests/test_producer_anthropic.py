"""AnthropicProducer against the provider emulator, checked against the anthropic SDK's own
stream helper, under every fault the emulator can inject."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2
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
    PipelineStatistics,
    ProducerError,
    ProducerStatusError,
    ProducerTimeout,
    Route,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    event_to_json,
)
from pipeline.producers._anthropic import AnthropicParser, AnthropicProducer, anthropic_client
from pipeline.producers._base import CostGuard, CostLimitError, RetryPolicy
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
SECRET = "sk-ant-api03-TOPSECRET0123456789abcdef"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
FAST_RETRY = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.1, jitter=False))


@asynccontextmanager
async def open_client(
    emu: Emulator, clock: trio.testing.MockClock | None = None
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """A client for ``emu``. With an autojumping ``clock``, warm the client up first with the
    clock held: a client's first request resolves its platform headers in a worker thread, and
    an autojumping clock would leap over that real wait to the producer's next deadline (a
    flaky first-token timeout). The warm-up goes to another emulator, so ``emu.requests`` holds
    only the test's own requests."""
    client = anthropic_client(base_url=emu.anthropic_base_url, api_key=SECRET)
    async with client:
        if clock is not None:
            threshold, clock.autojump_threshold = clock.autojump_threshold, math.inf
            async with open_emulator() as warm:
                await client.get(warm.anthropic_base_url + "/v1/models", cast_to=object)
            clock.autojump_threshold = threshold
        yield client


def make_producer(client: anthropic.AsyncAnthropic, **kwargs: Any) -> AnthropicProducer:
    kwargs.setdefault("model", "claude-emu")
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("max_tokens", 64)
    kwargs.setdefault("retry", FAST_RETRY)
    return AnthropicProducer(client, **kwargs)


async def run_ours(
    emu: Emulator, clock: trio.testing.MockClock | None = None, **kwargs: Any
) -> tuple[PipelineStatistics, RecordingSink, AnthropicProducer]:
    sink = RecordingSink()
    async with open_client(emu, clock) as client:
        producer = make_producer(client, **kwargs)
        stats = await Pipeline(producer, sinks=[sink]).run()
    assert_no_secret(sink.events)
    return stats, sink, producer


async def run_sdk(emu: Emulator) -> Any:
    """The SDK's own helper, for reference: its accumulated final message."""
    async with (
        open_client(emu) as client,
        client.messages.stream(model="claude-emu", max_tokens=64, messages=MESSAGES) as s,
    ):
        return await s.get_final_message()


def of(events: list[Event], cls: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def assert_no_secret(events: list[Event], *errors: BaseException) -> None:
    for event in events:
        assert SECRET not in event_to_json(event)
    for exc in errors:
        assert SECRET not in str(exc)
        assert SECRET not in repr(exc)


# -------------------------------------------------------------------------------------------
# Normal streams, compared with the SDK's accumulator


async def test_text_and_usage_match_the_sdk(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("Hello there, wonderful world.", input_tokens=17))
    stats, sink, producer = await run_ours(emu)
    final = await run_sdk(emu)

    assert stats.reason == "done"
    assert sink.text == "".join(b.text for b in final.content if b.type == "text")
    (usage,) = of(sink.events, Usage)
    assert (usage.input_tokens, usage.output_tokens) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    (meta,) = of(sink.events, Metadata)
    assert (meta.provider, meta.model, meta.response_id) == ("anthropic", final.model, "msg_emu0")
    assert isinstance(sink.events[0], Metadata)
    assert sink.events[-1] == Done(final.stop_reason, seq=sink.events[-1].seq)
    assert final.stop_reason == "end_turn"
    assert producer.attempts == 1
    assert all(d.text for d in of(sink.events, TextDelta))
    body = emu.requests[0].body
    assert body["stream"] is True
    assert (body["model"], body["max_tokens"], body["messages"]) == ("claude-emu", 64, MESSAGES)


async def test_tool_calls_match_the_sdk(emulator: EmulatorFactory) -> None:
    weather = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="toolu_w")
    clock = ToolCall("get_time", {"tz": "Europe/Paris", "format": "24h"}, id="toolu_t")
    emu = await emulator(Reply("Let me check both.", tool_calls=[weather, clock]))
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    stats, sink, _ = await run_ours(emu, tools=tools)
    final = await run_sdk(emu)

    assert stats.reason == "done"
    assert emu.requests[0].body["tools"] == tools
    assert sink.text == "".join(b.text for b in final.content if b.type == "text")
    sdk_tools = [b for b in final.content if b.type == "tool_use"]
    starts, ends = of(sink.events, ToolCallStart), of(sink.events, ToolCallEnd)
    assert [(s.id, s.name) for s in starts] == [(b.id, b.name) for b in sdk_tools]
    assert [(e.index, e.id, e.name) for e in ends] == [(s.index, s.id, s.name) for s in starts]
    assert [json.loads(e.arguments) for e in ends] == [b.input for b in sdk_tools]
    for end in ends:  # the deltas add up to what the end event carries
        pieces = [d.arguments_delta for d in of(sink.events, ToolCallDelta) if d.index == end.index]
        assert "".join(pieces) == end.arguments
    (usage,) = of(sink.events, Usage)
    assert usage.output_tokens == final.usage.output_tokens
    assert final.stop_reason == "tool_use"
    assert isinstance(sink.events[-1], Done)
    assert sink.events[-1].stop_reason == "tool_use"


async def test_tool_call_without_arguments_ends_with_empty_object(
    emulator: EmulatorFactory,
) -> None:
    emu = await emulator(Reply(tool_calls=[ToolCall("ping", "")]))
    _, sink, _ = await run_ours(emu)
    final = await run_sdk(emu)
    (end,) = of(sink.events, ToolCallEnd)
    assert (end.index, end.id, end.name, end.arguments) == (0, "toolu_emu0_0", "ping", "{}")
    assert json.loads(end.arguments) == final.content[0].input == {}
    assert of(sink.events, ToolCallDelta) == []


# -------------------------------------------------------------------------------------------
# Faults


async def test_error_event_mid_stream_keeps_the_partial_text(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(("Hel", "lo", " world"), fault=error_event_after(2)))
    stats, sink, producer = await run_ours(emu)
    assert stats.reason == "error"
    assert sink.text == "Hello"
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.retryable, error.partial_chars) == ("overloaded_error", True, 5)
    assert "Overloaded" in error.message
    assert len(emu.requests) == 1  # no silent restart after content
    assert producer.attempts == 1


async def test_error_event_before_content_is_retried(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Script([Reply("lost", fault=error_event_after(0)), Reply("Hi there")]))
    stats, sink, producer = await run_ours(emu, autojump_clock)
    assert stats.reason == "done"
    assert sink.text == "Hi there"
    assert len(of(sink.events, Metadata)) == 1  # the failed attempt's metadata was dropped
    assert of(sink.events, Metadata)[0].response_id == "msg_emu1"
    assert producer.attempts == len(emu.requests) == 2


async def test_non_retryable_error_event_before_content_is_raised(
    emulator: EmulatorFactory,
) -> None:
    fault = error_event_after(0, "bad input", error_type="invalid_request_error")
    emu = await emulator(Reply("x", fault=fault))
    with pytest.raises(ProducerError, match="bad input") as info:
        await run_ours(emu)
    assert (info.value.kind, info.value.retryable) == ("invalid_request_error", False)
    assert len(emu.requests) == 1


async def test_reset_mid_stream_is_a_connection_error(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(("Hel", "lo", " world"), fault=reset_after(2)))
    stats, sink, _ = await run_ours(emu)
    assert stats.reason == "error"
    assert sink.text == "Hello"
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.retryable, error.partial_chars) == ("connection", True, 5)
    assert len(emu.requests) == 1


async def test_stall_after_first_token_is_a_timeout(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply(("Hel", "lo", " world"), fault=stall_after(1)))
    start = trio.current_time()
    stats, sink, _ = await run_ours(emu, autojump_clock, stall_timeout=5.0)
    assert sink.text == "Hel"
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.partial_chars) == ("timeout", 3)
    assert "stalled" in error.message
    assert 5.0 <= trio.current_time() - start < 6.0
    assert stats.reason == "error"
    with trio.fail_after(1):
        await emu.wait_disconnect(0)  # we hung up on the stalled stream


async def test_stall_before_first_token_is_retried_then_raised(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("never", fault=stall_after(0)))
    start = trio.current_time()
    with pytest.raises(ProducerTimeout, match="first token") as info:
        await run_ours(emu, autojump_clock, first_token_timeout=2.0)
    assert len(emu.requests) == 3
    elapsed = trio.current_time() - start
    assert 3 * 2.0 + 0.1 + 0.2 <= elapsed < 3 * 2.0 + 0.3 + 1.0  # 3 timeouts + 2 backoffs
    assert_no_secret([], info.value)


async def test_no_response_head_counts_against_first_token_timeout(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock
) -> None:
    async def hold_the_first(record: RequestRecord) -> Reply:
        if record.index == 0:
            await trio.sleep_forever()  # accepted, never answered
        return Reply("Hi there")

    emu = await emulator(hold_the_first)
    start = trio.current_time()
    stats, sink, producer = await run_ours(emu, autojump_clock, first_token_timeout=2.0)
    assert stats.reason == "done"
    assert sink.text == "Hi there"
    assert producer.attempts == 2
    assert trio.current_time() - start < 2.0 + 0.1 + 0.5  # not the SDK's 10-minute timeout


async def test_429_with_retry_after_is_retried_without_duplicates(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("Hello world", fault=status(429, retry_after=2.5, times=2)))
    stats, sink, producer = await run_ours(emu, autojump_clock)
    assert stats.reason == "done"
    assert sink.text == "Hello world"  # once
    assert len(of(sink.events, Metadata)) == 1
    assert producer.attempts == len(emu.requests) == 3
    arrivals = [r.received_at for r in emu.requests]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(2.5 <= gap < 2.6 for gap in gaps), gaps  # retry-after wins over 0.1 s / 0.2 s


async def test_529_overloaded_before_first_byte_is_retried(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock
) -> None:
    emu = await emulator(Reply("Back again", fault=status(529, times=1)))
    stats, sink, producer = await run_ours(emu, autojump_clock)
    assert stats.reason == "done"
    assert sink.text == "Back again"
    assert producer.attempts == 2
    assert [r.status for r in emu.requests] == [529, 200]


@pytest.mark.parametrize("code", [500, 529])
async def test_server_error_forever_raises_status_error(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, code: int
) -> None:
    emu = await emulator(Reply("never", fault=status(code)))
    with pytest.raises(ProducerStatusError) as info:
        await run_ours(emu, autojump_clock)
    assert (info.value.status_code, info.value.retryable, info.value.kind) == (code, True, "status")
    assert len(emu.requests) == FAST_RETRY.max_attempts


async def test_client_error_is_not_retried(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("never", fault=status(400)))
    with pytest.raises(ProducerStatusError) as info:
        await run_ours(emu)
    assert (info.value.status_code, info.value.retryable) == (400, False)
    assert len(emu.requests) == 1


async def test_malformed_event_after_start_is_a_protocol_error(
    emulator: EmulatorFactory,
) -> None:
    emu = await emulator(Reply(("Hel", "lo", " world"), fault=malformed_after(2)))
    stats, sink, _ = await run_ours(emu)
    assert stats.reason == "error"
    assert sink.text == "Hello"
    error = sink.events[-1]
    assert isinstance(error, Error)
    assert (error.kind, error.retryable, error.partial_chars) == ("protocol", False, 5)


async def test_split_utf8_gives_the_exact_text(emulator: EmulatorFactory) -> None:
    text = "Grüße aus Köln, 世界 🎉 naïve café — ok."
    emu = await emulator(Reply(text, fault=split_utf8(0.001)))
    stats, sink, _ = await run_ours(emu)
    assert stats.reason == "done"
    assert sink.text == text
    assert "\ufffd" not in sink.text


async def test_stream_cut_before_message_stop_is_a_protocol_error() -> None:
    parser = AnthropicParser()
    with pytest.raises(ProducerError, match="message_stop") as info:
        parser.finish()
    assert info.value.kind == "protocol"


# -------------------------------------------------------------------------------------------
# Cancellation closes the upstream request


async def _wait_until(predicate: Callable[[], bool]) -> None:
    # Polls: the state lives in the emulator's records and the sink, which have no events.
    with trio.fail_after(5):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.002)


async def test_cancel_mid_stream_closes_the_connection(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply(["tok "] * 100, tokens_per_second=200, fault=stall_after(50)))
    sink = RecordingSink()
    async with open_client(emu) as client:
        async with Pipeline(make_producer(client), sinks=[sink]).open() as running:
            await _wait_until(lambda: sink.text_chars >= 20)
            cancelled_at = trio.current_time()
            running.cancel()
            with trio.fail_after(0.05):
                gone = await emu.wait_disconnect(0)
        assert gone - cancelled_at < 0.05
        assert running.statistics().reason == "cancelled"


async def test_cancel_while_parked_in_emit_closes_the_connection(
    emulator: EmulatorFactory,
) -> None:
    emu = await emulator(Reply(["tok "] * 100, fault=stall_after(60)))
    sink_started = trio.Event()

    async def never_reads(events: EventReceiver) -> None:
        sink_started.set()
        await trio.sleep_forever()

    async with open_client(emu) as client:
        pipeline = Pipeline(
            make_producer(client), sinks=[Route(never_reads, max_items=1)], source_buffer=1
        )
        async with pipeline.open() as running:
            # The server has sent 60 deltas and stalls; we hold only a handful of events.
            await _wait_until(lambda: bool(emu.requests) and emu.requests[0].deltas_sent >= 60)
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert sink_started.is_set()
            assert running.statistics().events_in <= 5  # the producer is parked in emit
            cancelled_at = trio.current_time()
            running.cancel()
            with trio.fail_after(0.05):
                gone = await emu.wait_disconnect(0)
        assert gone - cancelled_at < 0.05


# -------------------------------------------------------------------------------------------
# Cost guard, secrets, configuration


async def test_cost_guard_over_the_limit_sends_nothing(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("never"))
    with pytest.raises(CostLimitError, match="max_output_tokens"):
        await run_ours(emu, max_tokens=1024, cost_guard=CostGuard(max_output_tokens=100))
    long_messages = [
        {"role": "user", "content": [{"type": "text", "text": "word " * 400}]},
        {"role": "assistant", "content": "ok"},
    ]
    with pytest.raises(CostLimitError, match="max_input_tokens"):
        await run_ours(
            emu, messages=long_messages, cost_guard=CostGuard(max_input_tokens=300), system="Be."
        )
    assert emu.requests == []


async def test_prompt_texts_cover_system_and_content_blocks(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("x"))
    messages = [
        {"role": "user", "content": "plain"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "text", "text": "r"}],
                },
                {"type": "text", "text": "block"},
            ],
        },
    ]
    async with open_client(emu) as client:
        producer = make_producer(client, messages=messages, system="sys")
    assert list(producer._prompt_texts()) == ["sys", "plain", "{}", "r", "block"]
    assert producer._max_tokens() == 64


async def test_api_key_never_leaks(emulator: EmulatorFactory) -> None:
    # The provider echoes the key back, in an error body and in a mid-stream error event.
    emu = await emulator(
        Script(
            [
                Reply("x", fault=status(401, message=f"invalid x-api-key {SECRET}")),
                Reply(("a", "b"), fault=error_event_after(1, f"key {SECRET} overloaded")),
            ]
        )
    )
    with pytest.raises(ProducerStatusError) as info:
        await run_ours(emu)
    assert "<redacted>" in str(info.value)
    assert_no_secret([], info.value)
    stats, sink, _ = await run_ours(emu)  # run_ours checks every event
    assert stats.error is not None
    assert SECRET not in stats.error
    assert "<redacted>" in sink.events[-1].message  # type: ignore[union-attr]
    assert emu.requests[0].header("x-api-key") in (None, "<redacted>")


def test_anthropic_client_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        anthropic_client()
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    client = anthropic_client()
    assert client.api_key == SECRET
    assert str(client.base_url).startswith("http://127.0.0.1:9")
    assert client.max_retries == 0


async def test_producer_turns_off_sdk_retries_and_checks_arguments(
    emulator: EmulatorFactory,
) -> None:
    emu = await emulator(Reply("x"))
    async with open_client(emu) as client:
        sdk_client = client.with_options(max_retries=5)
        producer = make_producer(sdk_client)
        assert producer.client.max_retries == 0
        assert sdk_client.max_retries == 5  # the caller's client is untouched
        assert make_producer(sdk_client).client is producer.client  # one copy per client
        assert make_producer(client).client is client  # already without SDK retries
        with pytest.raises(ConfigError, match="max_tokens"):
            make_producer(client, max_tokens=0)
        with pytest.raises(ConfigError, match="stream"):
            make_producer(client, extra={"stream": False})
        stats = await Pipeline(
            make_producer(client, extra={"top_k": 5}, temperature=0.0), sinks=[RecordingSink()]
        ).run()
    assert stats.reason == "done"
    body = emu.requests[0].body
    assert (body["top_k"], body["temperature"]) == (5, 0.0)


async def test_the_read_timeout_is_left_to_the_producers_deadlines(
    emulator: EmulatorFactory,
) -> None:
    """As with the OpenAI producers: both deadlines set, the request goes without the client's
    read timeout (an ``httpx2.Timeout``, the SDK's default); one of them unset, it stays."""
    emu = await emulator(Reply("Hi"))
    seen: list[dict[str, float | None]] = []

    async def hook(request: httpx2.Request) -> None:
        seen.append(request.extensions["timeout"])

    http = httpx2.AsyncClient(event_hooks={"request": [hook]})
    async with anthropic.AsyncAnthropic(
        api_key=SECRET, base_url=emu.anthropic_base_url, http_client=http, max_retries=0
    ) as client:
        for kwargs in ({}, {"stall_timeout": None}):
            sink = RecordingSink()
            await Pipeline(make_producer(client, **kwargs), sinks=[sink]).run()
            assert sink.text == "Hi"
    assert seen[0]["read"] is None
    assert seen[0]["connect"] == seen[1]["connect"] is not None
    assert seen[1]["read"] == 600
