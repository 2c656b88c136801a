"""The provider emulator, driven by the real openai and anthropic SDKs over loopback HTTP."""

from __future__ import annotations

import array
import itertools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import anthropic
import httpx
import httpx2
import openai
import pytest
import trio
import trio.lowlevel
import trio.testing

import pipeline.testing.emulator as emulator_pkg
from pipeline.testing.emulator import (
    Emulator,
    Reply,
    RequestRecord,
    Script,
    SpeechReply,
    ToolCall,
    error_event_after,
    malformed_after,
    open_emulator,
    parse_fault,
    reset_after,
    split_tokens,
    split_utf8,
    stall_after,
    status,
)

EmulatorFactory = Callable[..., Awaitable[Emulator]]  # the `emulator` fixture (conftest.py)
SDK = Literal["chat", "responses", "anthropic"]
SDKS: tuple[SDK, ...] = ("chat", "responses", "anthropic")
MESSAGES: Any = [{"role": "user", "content": "hi"}]
WEATHER_INPUT = {"city": "Paris", "unit": "celsius"}
WEATHER = ToolCall("get_weather", WEATHER_INPUT, id="call_w1")


@asynccontextmanager
async def openai_client(emu: Emulator, **kwargs: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    kwargs.setdefault("max_retries", 0)
    # openai 3.x is typed for its httpx2 fork but accepts a plain httpx.AsyncClient at runtime.
    http_client: Any = httpx.AsyncClient()
    client = openai.AsyncOpenAI(
        base_url=emu.openai_base_url, api_key="sk-secret", http_client=http_client, **kwargs
    )
    async with client:
        yield client


@asynccontextmanager
async def anthropic_client(emu: Emulator, **kwargs: Any) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # anthropic 2.x rejects a plain httpx.AsyncClient: it wants its fork, httpx2.
    kwargs.setdefault("max_retries", 0)
    client = anthropic.AsyncAnthropic(
        base_url=emu.anthropic_base_url,
        api_key="sk-ant-secret",
        http_client=httpx2.AsyncClient(),
        **kwargs,
    )
    async with client:
        yield client


async def run_sdk(sdk: SDK, emu: Emulator, seen: list[str] | None = None, **kwargs: Any) -> Any:
    """Stream one answer with the SDK's own helper; collect text deltas into ``seen`` as they
    arrive; return the helper's final accumulated object."""
    seen = [] if seen is None else seen
    if sdk == "anthropic":
        async with (
            anthropic_client(emu, **kwargs) as ant,
            ant.messages.stream(model="claude-emu", max_tokens=64, messages=MESSAGES) as stream,
        ):
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    seen.append(event.delta.text)
            return await stream.get_final_message()
    async with openai_client(emu, **kwargs) as client:
        if sdk == "chat":
            async with client.chat.completions.stream(
                model="gpt-emu", messages=MESSAGES, stream_options={"include_usage": True}
            ) as chat:
                async for chunk_event in chat:
                    if chunk_event.type == "content.delta" and chunk_event.delta:
                        seen.append(chunk_event.delta)
                return await chat.get_final_completion()
        async with client.responses.stream(model="gpt-emu", input="hi") as responses:
            async for response_event in responses:
                if response_event.type == "response.output_text.delta":
                    seen.append(response_event.delta)
            return await responses.get_final_response()


def final_text(sdk: SDK, final: Any) -> str:
    if sdk == "chat":
        return str(final.choices[0].message.content)
    if sdk == "responses":
        return str(final.output_text)
    return "".join(block.text for block in final.content if block.type == "text")


# -------------------------------------------------------------------------------------------
# Scripting data


def test_public_names_are_exported() -> None:
    public = {name for name in dir(emulator_pkg) if not name.startswith("_")}
    assert set(emulator_pkg.__all__) == public


def test_split_tokens_round_trips() -> None:
    for text in ["", "a", "Hello big world", "  lead", "trail  ", "x\n\ny", "日本語 テキスト"]:
        assert "".join(split_tokens(text)) == text
    assert split_tokens("Hello big world") == ("Hello", " big", " world")


def test_reply_defaults() -> None:
    reply = Reply("Hi there", tool_calls=[WEATHER])
    assert reply.tokens == ("Hi", " there")
    assert WEATHER.arguments_json == '{"city": "Paris", "unit": "celsius"}'
    assert len(WEATHER.arguments) > 1  # streamed in pieces
    assert reply.finish_reason == "tool_calls"
    assert reply.completion_tokens == 2 + len(WEATHER.arguments)
    assert Reply("x").finish_reason == "stop"
    script = Script([Reply("a"), Reply("b")])
    assert [script.reply_for(i).text for i in range(3)] == ["a", "b", "b"]
    assert Script([Reply("a"), Reply("b")], cycle=True).reply_for(2).text == "a"
    with pytest.raises(ValueError, match="at least one"):
        Script([])
    with pytest.raises(ValueError, match="after"):
        error_event_after(-1)


def test_parse_fault() -> None:
    assert parse_fault("none") is None
    assert parse_fault("reset_after:3") == reset_after(3)
    assert parse_fault("stall_after:2:1.5") == stall_after(2, 1.5)
    assert parse_fault("stall_after:2") == stall_after(2, math.inf)
    assert parse_fault("status:429:0.5:2") == status(429, retry_after=0.5, times=2)
    assert parse_fault("status:500") == status(500)
    assert parse_fault("error_event_after:1") == error_event_after(1)
    assert parse_fault("malformed_after:0") == malformed_after(0)
    assert parse_fault("split_utf8") == split_utf8()
    with pytest.raises(ValueError, match="bad fault spec"):
        parse_fault("explode:1")
    with pytest.raises(ValueError, match="bad fault spec"):
        parse_fault("reset_after:x")


# -------------------------------------------------------------------------------------------
# Happy paths: the SDKs' own accumulated results match the script


REPLY = Reply(
    ["Hello", " wörld", ",", " how", " are", " you?"],
    tool_calls=[WEATHER],
    input_tokens=12,
    output_tokens=30,
)


async def test_openai_chat_completion_matches_script(emulator: EmulatorFactory) -> None:
    emu = await emulator(REPLY)
    completion = await run_sdk("chat", emu)
    choice = completion.choices[0]
    assert choice.message.content == "Hello wörld, how are you?"
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name) == ("call_w1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 30)
    assert completion.usage.total_tokens == 42
    assert completion.model == "gpt-emu"

    record = await emu.wait_ended(0)
    assert len(emu.requests) == 1
    assert (record.method, record.path, record.provider) == (
        "POST",
        "/v1/chat/completions",
        "openai-chat",
    )
    assert record.body["stream"] is True
    assert record.body["stream_options"] == {"include_usage": True}
    assert record.header("authorization") == "<redacted>"
    assert "sk-secret" not in repr(record)
    assert record.deltas_sent == REPLY.delta_count
    assert record.outcome == "completed"
    assert record.status == 200


async def test_openai_chat_without_include_usage(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("Just text."))
    async with (
        openai_client(emu) as client,
        client.chat.completions.stream(model="gpt-emu", messages=MESSAGES) as stream,
    ):
        completion = await stream.get_final_completion()
    assert completion.choices[0].message.content == "Just text."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None
    assert completion.usage is None


async def test_openai_responses_final_response_matches_script(emulator: EmulatorFactory) -> None:
    emu = await emulator(REPLY)
    sequence: list[int] = []
    types: list[str] = []
    async with (
        openai_client(emu) as client,
        client.responses.stream(model="gpt-emu", input="hi") as stream,
    ):
        async for event in stream:
            sequence.append(event.sequence_number)
            types.append(event.type)
        response = await stream.get_final_response()
    assert response.output_text == "Hello wörld, how are you?"
    assert response.status == "completed"
    [call] = [item for item in response.output if item.type == "function_call"]
    assert (call.name, call.call_id) == ("get_weather", "call_w1")
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 30)
    assert sequence == list(range(len(sequence)))
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    for expected in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]:
        assert expected in types


async def test_anthropic_final_message_matches_script(emulator: EmulatorFactory) -> None:
    emu = await emulator(REPLY)
    message = await run_sdk("anthropic", emu)
    assert final_text("anthropic", message) == "Hello wörld, how are you?"
    [tool] = [block for block in message.content if block.type == "tool_use"]
    assert (tool.id, tool.name, tool.input) == ("call_w1", "get_weather", WEATHER_INPUT)
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 30)
    assert message.model == "claude-emu"
    record = await emu.wait_ended(0)
    assert len(emu.requests) == 1
    assert record.path == "/v1/messages"
    assert record.header("anthropic-version") is not None
    assert "sk-ant-secret" not in repr(record.headers)


@pytest.mark.parametrize("sdk", SDKS)
async def test_length_finish(emulator: EmulatorFactory, sdk: SDK) -> None:
    emu = await emulator(Reply("cut short", finish="length"))
    if sdk == "responses":
        # The Responses API ends with response.incomplete: the helper has no final response.
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            await run_sdk(sdk, emu)
        return
    if sdk == "chat":
        # openai's chat helper refuses to "parse" a length-truncated completion.
        with pytest.raises(openai.LengthFinishReasonError) as info:
            await run_sdk(sdk, emu)
        assert info.value.completion.choices[0].finish_reason == "length"
        assert info.value.completion.choices[0].message.content == "cut short"
        return
    final = await run_sdk(sdk, emu)
    assert final.stop_reason == "max_tokens"


async def test_keep_alive_reuses_one_connection(emulator: EmulatorFactory) -> None:
    emu = await emulator(Script([Reply("one"), Reply("two"), Reply("three")]))
    texts = []
    async with openai_client(emu) as client:
        for _ in range(3):
            async with client.chat.completions.stream(model="m", messages=MESSAGES) as stream:
                texts.append((await stream.get_final_completion()).choices[0].message.content)
    assert texts == ["one", "two", "three"]
    assert len(emu.connections) == 1
    assert emu.connections[0].requests == [0, 1, 2]


async def test_reply_callable_sees_the_request(emulator: EmulatorFactory) -> None:
    async def echo(record: RequestRecord) -> Reply:
        await trio.lowlevel.checkpoint()
        prompt = record.body["messages"][-1]["content"]
        return Reply(f"You said: {prompt}")

    emu = await emulator(echo)
    async with (
        anthropic_client(emu) as client,
        client.messages.stream(
            model="m", max_tokens=9, messages=[{"role": "user", "content": "ping"}]
        ) as stream,
    ):
        assert await stream.get_final_text() == "You said: ping"


async def test_models_and_unsupported_requests(emulator: EmulatorFactory) -> None:
    emu = await emulator()
    async with openai_client(emu) as client:
        models = [model.id async for model in client.models.list()]
        assert models == list(emulator_pkg.DEFAULT_MODELS)
        with pytest.raises(openai.BadRequestError, match="only serves streaming"):
            await client.chat.completions.create(model="m", messages=MESSAGES)
    async with anthropic_client(emu) as ant:
        page = await ant.models.list()
        assert [model.id for model in page.data] == list(emulator_pkg.DEFAULT_MODELS)
    async with httpx.AsyncClient() as http:
        response = await http.post(emu.openai_base_url + "/nowhere", json={})
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_open_emulator_context_manager_unwraps_errors() -> None:
    async def fail_inside() -> None:
        async with open_emulator(Reply("x")) as emu:
            assert emu.base_url.startswith("http://127.0.0.1:")
            assert emu.openai_base_url == emu.base_url + "/v1"
            raise KeyError("mine")

    with pytest.raises(KeyError):  # not an ExceptionGroup
        await fail_inside()


# -------------------------------------------------------------------------------------------
# Pacing, stall and disconnect (MockClock: the SDKs' own timeouts run on it too)


@pytest.mark.parametrize("sdk", SDKS)
async def test_tokens_per_second_paces_the_stream(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, sdk: SDK
) -> None:
    emu = await emulator(Reply(["a"] * 10, tokens_per_second=5))
    start = trio.current_time()
    final = await run_sdk(sdk, emu)
    assert final_text(sdk, final) == "a" * 10
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("sdk", SDKS)
async def test_stall_then_continue(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, sdk: SDK
) -> None:
    emu = await emulator(Reply("Hello big wide world", fault=stall_after(2, 30)))
    start = trio.current_time()
    final = await run_sdk(sdk, emu, timeout=60.0)
    assert final_text(sdk, final) == "Hello big wide world"
    assert trio.current_time() - start == pytest.approx(30, abs=0.05)


@pytest.mark.parametrize(
    ("sdk", "raised"),
    [
        ("chat", openai.APITimeoutError),
        ("responses", openai.APITimeoutError),
        # anthropic before 2.17 raised httpx2's error unwrapped while iterating a stream;
        # 2.17 wraps it (cause: httpx2.ReadTimeout)
        ("anthropic", (anthropic.APITimeoutError, httpx2.ReadTimeout)),
    ],
)
async def test_stall_forever_hits_the_sdk_read_timeout(
    emulator: EmulatorFactory,
    autojump_clock: trio.testing.MockClock,
    sdk: SDK,
    raised: type[Exception] | tuple[type[Exception], ...],
) -> None:
    emu = await emulator(Reply("Hello big wide world", fault=stall_after(2)))
    seen: list[str] = []
    start = trio.current_time()
    with pytest.raises(raised):
        await run_sdk(sdk, emu, seen, timeout=5.0)
    assert trio.current_time() - start == pytest.approx(5.0, abs=0.05)
    assert "".join(seen) == "Hello big"
    # The SDK closed the connection when it gave up; the stalled server saw that at once.
    with trio.fail_after(1):
        gone = await emu.wait_disconnect(0)
    assert gone - start == pytest.approx(5.0, abs=0.05)


class _Tap(list[str]):
    """A list that sets ``reached`` once it holds ``n`` items."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.reached = trio.Event()

    def append(self, item: str) -> None:
        super().append(item)
        if len(self) >= self.n:
            self.reached.set()


@pytest.mark.parametrize("sdk", SDKS)
async def test_client_leaving_early_is_recorded(emulator: EmulatorFactory, sdk: SDK) -> None:
    """Real clock: a consumer stops after 3 tokens; the server must see it within 100 ms."""
    emu = await emulator(Reply(["tok "] * 400, tokens_per_second=200))
    seen = _Tap(3)
    with trio.move_on_after(5) as scope:  # the test's own safety net, never hit

        async def consume() -> None:
            await run_sdk(sdk, emu, seen)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await seen.reached.wait()
            nursery.cancel_scope.cancel()  # cancel the consumer mid-stream
            left_at = trio.current_time()
    assert not scope.cancelled_caught
    with trio.fail_after(1):
        gone = await emu.wait_disconnect(0)
    record = await emu.wait_ended(0)
    assert record.outcome == "disconnected"
    assert record.completed_at is None
    assert gone - left_at < 0.1
    assert 3 <= record.deltas_sent < 400
    assert record.ended_at is not None


# -------------------------------------------------------------------------------------------
# Faults: what each real SDK raises or sees


@pytest.mark.parametrize("sdk", SDKS)
async def test_error_event_mid_stream(emulator: EmulatorFactory, sdk: SDK) -> None:
    emu = await emulator(Reply("Hello big wide world", fault=error_event_after(2, "Overloaded")))
    seen: list[str] = []
    if sdk == "chat":
        with pytest.raises(openai.APIError, match="Overloaded") as chat_info:
            await run_sdk(sdk, emu, seen)
        assert chat_info.value.body == {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    elif sdk == "responses":
        # openai yields response.failed as an ordinary event; the final-response helper fails.
        with pytest.raises(RuntimeError, match=r"Didn't receive a `response\.completed` event"):
            await run_sdk(sdk, emu, seen)
    else:
        with pytest.raises(anthropic.APIStatusError) as ant_info:
            await run_sdk(sdk, emu, seen)
        assert ant_info.value.body == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
        }
    assert "".join(seen) == "Hello big"
    record = await emu.wait_ended(0)
    assert record.deltas_sent == 2
    assert record.outcome == "completed"  # the body ended cleanly after the error event


async def test_responses_error_event_is_response_failed(emulator: EmulatorFactory) -> None:
    emu = await emulator(Reply("Hello big", fault=error_event_after(1, "boom")))
    async with (
        openai_client(emu) as client,
        client.responses.stream(model="m", input="hi") as stream,
    ):
        failed = [event async for event in stream if event.type == "response.failed"]
    [event] = failed
    assert event.response.status == "failed"
    assert event.response.error is not None
    assert (event.response.error.code, event.response.error.message) == ("server_error", "boom")


@pytest.mark.parametrize(
    ("sdk", "raised"),
    [
        ("chat", openai.APIConnectionError),
        ("responses", openai.APIConnectionError),
        # unwrapped before anthropic 2.17, as for timeouts
        ("anthropic", (anthropic.APIConnectionError, httpx2.ReadError)),
    ],
)
async def test_reset_mid_stream(
    emulator: EmulatorFactory, sdk: SDK, raised: type[Exception] | tuple[type[Exception], ...]
) -> None:
    emu = await emulator(Reply("Hello big wide world", fault=reset_after(2)))
    seen: list[str] = []
    with pytest.raises(raised) as info:
        await run_sdk(sdk, emu, seen)
    if sdk != "anthropic":
        assert isinstance(info.value.__cause__, httpx.ReadError)
    else:
        assert "Connection reset" in str(info.value)
        if isinstance(info.value, anthropic.APIConnectionError):
            assert isinstance(info.value.__cause__, httpx2.ReadError)
    assert "".join(seen) in ("", "Hello", "Hello big")  # an RST may discard unread bytes
    record = await emu.wait_ended(0)
    assert record.outcome == "reset"
    assert record.deltas_sent == 2
    assert emu.connections[0].closed_at is not None


@pytest.mark.parametrize("sdk", SDKS)
async def test_malformed_json_mid_stream(emulator: EmulatorFactory, sdk: SDK) -> None:
    emu = await emulator(Reply("Hello big wide world", fault=malformed_after(2)))
    seen: list[str] = []
    with pytest.raises(json.JSONDecodeError):
        await run_sdk(sdk, emu, seen)
    assert "".join(seen) == "Hello big"


@pytest.mark.parametrize("sdk", SDKS)
async def test_split_utf8_arrives_whole(emulator: EmulatorFactory, sdk: SDK) -> None:
    text = "naïve café — 日本語 🎉 done"
    emu = await emulator(Reply(text, fault=split_utf8()))
    seen: list[str] = []
    final = await run_sdk(sdk, emu, seen)
    assert final_text(sdk, final) == text
    assert "".join(seen) == text
    record = await emu.wait_ended(0)
    # More socket writes than events: the multi-byte characters went out in halves.
    multibyte = sum(1 for ch in text if len(ch.encode()) > 1)
    assert record.writes >= 1 + record.events_sent + multibyte


@pytest.mark.parametrize(
    ("sdk", "code", "raised"),
    [
        ("chat", 429, openai.RateLimitError),
        ("responses", 500, openai.InternalServerError),
        ("anthropic", 429, anthropic.RateLimitError),
        ("anthropic", 500, anthropic.InternalServerError),
        ("anthropic", 529, anthropic.OverloadedError),
    ],
)
async def test_status_without_retries(
    emulator: EmulatorFactory, sdk: SDK, code: int, raised: type[Exception]
) -> None:
    emu = await emulator(Reply("never sent", fault=status(code, retry_after=1)))
    with pytest.raises(raised) as info:
        await run_sdk(sdk, emu)
    assert getattr(info.value, "status_code", None) == code
    body = getattr(info.value, "body", None)
    assert isinstance(body, dict)
    if sdk == "anthropic":
        assert body["type"] == "error"
        assert body["error"]["type"] in ("rate_limit_error", "api_error", "overloaded_error")
    else:
        assert "message" in body  # openai hands over the inner "error" object
    record = await emu.wait_ended(0)
    assert len(emu.requests) == 1
    assert record.status == code
    assert record.deltas_sent == 0


@pytest.mark.parametrize(("sdk", "code"), [("chat", 429), ("responses", 500), ("anthropic", 529)])
async def test_status_first_attempts_then_the_sdk_retry_succeeds(
    emulator: EmulatorFactory, autojump_clock: trio.testing.MockClock, sdk: SDK, code: int
) -> None:
    emu = await emulator(Reply("third time lucky", fault=status(code, retry_after=7, times=2)))
    start = trio.current_time()
    final = await run_sdk(sdk, emu, max_retries=2)
    assert final_text(sdk, final) == "third time lucky"
    statuses = [record.status for record in emu.requests]
    assert statuses == [code, code, 200]
    # The SDK honoured Retry-After (7 s, on the mock clock) before each retry.
    arrivals = [record.received_at - start for record in emu.requests]
    assert arrivals == pytest.approx([0, 7, 14], abs=0.05)
    assert [record.header("x-stainless-retry-count") for record in emu.requests] == ["0", "1", "2"]
    assert [record.fault is not None for record in emu.requests] == [True, True, False]


# -------------------------------------------------------------------------------------------
# Speech: POST /v1/audio/speech, streamed PCM


@asynccontextmanager
async def speech_emulator(
    speech: SpeechReply, **kwargs: Any
) -> AsyncIterator[tuple[Emulator, openai.AsyncOpenAI]]:
    async with open_emulator(speech=speech) as emu, openai_client(emu, **kwargs) as client:
        yield emu, client


async def speak(client: openai.AsyncOpenAI, text: str, response_format: Any = "pcm") -> bytes:
    create = client.audio.speech.with_streaming_response.create
    async with create(
        model="tts-emu", voice="alloy", input=text, response_format=response_format
    ) as response:
        assert response.http_response.headers["content-type"] == "audio/pcm"
        return b"".join([data async for data in response.iter_bytes()])


async def test_speech_default_is_a_440_hz_tone_as_long_as_the_text() -> None:
    text = "A tone for each character of this text."
    async with speech_emulator(SpeechReply()) as (emu, client):
        audio = await speak(client, text)
        record = await emu.wait_ended(0)
    samples = array.array("h", audio)
    assert len(samples) == round(len(text) * 0.06 * 24000)
    second = samples[:24000]
    crossings = sum(1 for a, b in itertools.pairwise(second) if (a < 0) != (b < 0))
    assert crossings == pytest.approx(880, abs=2)  # two per period
    assert max(samples) == 8000
    assert (record.path, record.provider, record.status) == (
        "/v1/audio/speech",
        "openai-speech",
        200,
    )
    assert record.body["response_format"] == "pcm"
    assert record.header("authorization") == "<redacted>"
    assert record.deltas_sent == record.events_sent == -(-len(audio) // 4800)
    assert record.audio_bytes_sent == len(audio)
    assert record.outcome == "completed"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_speech_audio_callable_is_sent_in_writes_of_write_bytes(kind: str) -> None:
    given: list[str] = []

    def make(text: str) -> bytes:
        given.append(text)
        return bytes(range(256)) * 10 + b"\x01"  # 2561 bytes: the last sample is cut short

    async def make_async(text: str) -> bytes:
        await trio.lowlevel.checkpoint()
        return make(text)

    reply = SpeechReply(make if kind == "sync" else make_async, write_bytes=1001)
    async with speech_emulator(reply) as (emu, client):
        audio = await speak(client, "Hi")
        record = await emu.wait_ended(0)
    assert given == ["Hi"]
    assert audio == bytes(range(256)) * 10 + b"\x01"
    assert record.deltas_sent == 3  # 1001 + 1001 + 559
    assert record.writes == 1 + 3 + 1  # head, audio, end of body


async def test_speech_pacing_and_stall_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = "x" * 50  # 3 s of audio at 0.06 s per character
    async with speech_emulator(SpeechReply(realtime_factor=0.5)) as (emu, client):
        await speak(client, text)
        paced = await emu.wait_ended(0)
    assert paced.completed_at is not None
    assert paced.completed_at - paced.received_at == pytest.approx(1.5)
    async with speech_emulator(SpeechReply(fault=stall_after(2, 7.0))) as (emu, client):
        assert len(await speak(client, text)) == 3 * 24000 * 2
        stalled = await emu.wait_ended(0)
    assert stalled.completed_at is not None
    assert stalled.completed_at - stalled.received_at == pytest.approx(7.0)
    assert stalled.fault == stall_after(2, 7.0)


async def test_speech_status_then_the_sdk_retry_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reply = SpeechReply(fault=status(429, retry_after=3, times=1))
    async with speech_emulator(reply, max_retries=1) as (emu, client):
        start = trio.current_time()
        audio = await speak(client, "Hello")
    assert len(audio) == round(5 * 0.06 * 24000) * 2
    assert [record.status for record in emu.requests] == [429, 200]
    arrivals = [record.received_at - start for record in emu.requests]
    assert arrivals == pytest.approx([0, 3], abs=0.05)


async def test_speech_reset_after_writes() -> None:
    reply = SpeechReply(write_bytes=1000, fault=reset_after(2))
    async with speech_emulator(reply) as (emu, client):
        with pytest.raises(httpx.ReadError):
            await speak(client, "Hello there, a longer text.")
        record = await emu.wait_ended(0)
    assert record.outcome == "reset"
    assert record.audio_bytes_sent == 2000


async def test_speech_wants_pcm() -> None:
    async with speech_emulator(SpeechReply()) as (emu, client):
        with pytest.raises(openai.BadRequestError, match="pcm"):
            await speak(client, "Hello", response_format="mp3")
        record = await emu.wait_ended(0)
    assert (record.status, record.audio_bytes_sent) == (400, 0)


def test_speech_reply_refuses_the_sse_faults() -> None:
    for fault in (split_utf8(), error_event_after(0), malformed_after(0)):
        with pytest.raises(TypeError, match="not a speech fault"):
            SpeechReply(fault=fault)
    with pytest.raises(ValueError, match="write_bytes"):
        SpeechReply(write_bytes=0)
    assert SpeechReply(fault=reset_after(1)).fault == reset_after(1)
