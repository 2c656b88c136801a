"""``WS /v1/ws`` speech turns (sinks/server/_ws.py): audio frames at playback speed, word marks,
barge-in with what was heard, the history as heard, the ``speech`` field's protocol errors.

Real loopback server and WebSocket client (as in test_websocket.py), real espeak-ng, real clock:
the texts are short, so each turn plays for a few seconds at most.
"""

from __future__ import annotations

import ctypes.util
import json
import sys
from typing import Any

import httpx
import pytest
import trio
from test_websocket import (
    Serve,
    assistant,
    read_turn,
    receive,
    scripted_factory,
    send,
    text_of,
    user,
)
from test_websocket import serve_ws as serve_ws
from trio_websocket import WebSocketConnection, open_websocket_url

from sinks.server import _ws
from sinks.speech import Speaker, _espeak

RATE = 22050
SPEECH = {"voice": "en", "rate": 175}
Frame = dict[str, Any] | bytes


@pytest.fixture
def speakers(monkeypatch: pytest.MonkeyPatch) -> list[Speaker]:
    """The speakers the server builds for its speech turns, in order."""
    built: list[Speaker] = []
    make = _ws._speaker

    def recording(*args: Any) -> Speaker:
        speaker = make(*args)
        built.append(speaker)
        return speaker

    monkeypatch.setattr(_ws, "_speaker", recording)
    return built


async def next_frame(ws: WebSocketConnection) -> Frame:
    with trio.fail_after(10):
        message = await ws.get_message()
    if isinstance(message, bytes):
        return message
    data = json.loads(message)
    assert isinstance(data, dict)
    return data


def is_end(frame: Frame) -> bool:
    if isinstance(frame, bytes):
        return False
    kind = frame["type"]
    return kind in ("done", "interrupted") or (kind == "error" and "turn" in frame)


async def read_speech_turn(ws: WebSocketConnection) -> list[Frame]:
    out: list[Frame] = []
    while not out or not is_end(out[-1]):
        out.append(await next_frame(ws))
    return out


async def assert_nothing_more(ws: WebSocketConnection) -> None:
    """The next frame the server sends is the answer to a ping: nothing of the turn is left."""
    await send(ws, {"type": "ping", "id": "last"})
    assert await next_frame(ws) == {"type": "pong", "id": "last"}


def json_frames(frames: list[Frame], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if isinstance(f, dict) and f["type"] == kind]


def audio_bytes(frames: list[Frame]) -> int:
    return sum(len(f) for f in frames if isinstance(f, bytes))


def check_audio_and_words(frames: list[Frame], turn: int) -> None:
    """One ``audio_format`` before the first audio; each ``word`` frame right after the audio
    that holds its first sample (or at the end of the audio)."""
    [fmt] = json_frames(frames, "audio_format")
    assert fmt == {
        "type": "audio_format",
        "turn": turn,
        "encoding": "pcm_s16le",
        "sample_rate": RATE,
        "channels": 1,
    }
    first_audio = next(i for i, f in enumerate(frames) if isinstance(f, bytes))
    assert frames.index(fmt) < first_audio
    received = 0
    last = -1
    for f in frames:
        if isinstance(f, bytes):
            assert len(f) % 2 == 0
            received += len(f) // 2
        elif f["type"] == "word":
            assert f["turn"] == turn
            assert last <= f["sample"] <= received
            assert f["sample"] < received or f["sample"] == audio_bytes(frames) // 2
            last = f["sample"]


async def test_a_speech_turn_sends_audio_at_playback_speed_with_its_words(
    serve_ws: Serve,
    speakers: list[Speaker],
) -> None:
    answer = "Hello there, my friend. How are you today?"
    factory, seen = scripted_factory([answer, "Fine."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        started = trio.current_time()
        await send(ws, {"type": "request", "prompt": "Hi", "speech": SPEECH})
        frames = await read_speech_turn(ws)
        elapsed = trio.current_time() - started
        await assert_nothing_more(ws)

        assert frames[-1]["type"] == "done"  # type: ignore[index]
        assert all(f["turn"] == 1 for f in frames if isinstance(f, dict))
        # The text as today, all of it (the model is faster than the voice).
        texts = [f for f in frames if isinstance(f, dict) and f["type"] == "text"]
        assert "".join(t["text"] for t in texts) == answer
        check_audio_and_words(frames, 1)
        samples = audio_bytes(frames) // 2
        seconds = samples / RATE
        print(f"{seconds:.2f} s of audio in {elapsed:.2f} s")
        assert 1.5 < seconds < 6.0  # 8 words at 175 words per minute: about 3 s
        [speaker] = speakers
        stats = speaker.statistics()
        assert round(stats.played_seconds * RATE) == samples
        assert round(stats.audio_seconds * RATE) == samples
        assert not stats.interrupted
        assert elapsed >= seconds - 0.05  # sent as it plays, not as fast as synthesised
        words = [w["text"] for w in json_frames(frames, "word")]
        assert words == answer.split()

        # A turn without speech: no audio; the history holds the spoken answer, as heard.
        await send(ws, {"type": "request", "prompt": "And you?"})
        second = await read_turn(ws)
        assert text_of(second) == "Fine."
    assert list(seen[1].messages) == [user("Hi"), assistant(answer), user("And you?")]


async def test_interrupt_during_speech_keeps_what_was_heard(
    serve_ws: Serve,
    speakers: list[Speaker],
) -> None:
    answer = "One two three four five six seven eight nine ten. Eleven twelve thirteen."
    factory, seen = scripted_factory([answer, "Go."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "Count", "speech": SPEECH})
        frames: list[Frame] = []
        while audio_bytes(frames) < 0.5 * RATE * 2:
            frames.append(await next_frame(ws))
        # The model has said it all (``done`` is produced) but the turn runs while it is spoken.
        assert text_of([f for f in frames if isinstance(f, dict)]) == answer
        await send(ws, {"type": "request", "prompt": "too soon"})
        await send(ws, {"type": "interrupt"})
        frames += await read_speech_turn(ws)
        await assert_nothing_more(ws)  # no audio after ``interrupted``
        [busy] = [f for f in frames if isinstance(f, dict) and "turn" not in f]
        assert busy["type"] == "error"
        assert "in progress" in busy["error"]["message"]
        assert not json_frames(frames, "done")

        end = frames[-1]
        assert isinstance(end, dict)
        assert end == {
            "type": "interrupted",
            "turn": 1,
            "delivered_chars": len(text_of([f for f in frames if isinstance(f, dict)])),
            "heard": end["heard"],
            "heard_exact": True,
        }
        heard = end["heard"]
        assert heard
        assert answer.startswith(heard)
        rest = answer[len(heard.rstrip()) :]
        assert rest == "" or rest[0].isspace()  # whole words
        assert len(heard.split()) < len(answer.split())
        words = [w["text"] for w in json_frames(frames, "word")]
        assert words == answer.split()[: len(words)]
        assert len(words) >= len(heard.split())  # a word is sent before it is heard
        check_audio_and_words(frames, 1)
        samples = audio_bytes(frames) // 2
        [speaker] = speakers
        assert speaker.interrupted
        assert speaker.heard().text == heard
        played = round(speaker.statistics().played_seconds * RATE)
        assert played <= samples <= played + round(0.05 * RATE)  # a frame ahead at most
        assert samples / RATE < 2.0

        await send(ws, {"type": "request", "prompt": "Go on"})
        assert text_of(await read_turn(ws)) == "Go."
    assert list(seen[1].messages) == [user("Count"), assistant(heard), user("Go on")]


async def test_bad_speech_fields_are_protocol_errors(serve_ws: Serve) -> None:
    factory, seen = scripted_factory(["Still here."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        for speech, field in [
            ("en", "speech"),
            ({"voice": ""}, "speech.voice"),
            ({"voice": "../en"}, "speech.voice"),
            ({"voice": 3}, "speech.voice"),
            ({"rate": 1000}, "speech.rate"),
            ({"rate": 79}, "speech.rate"),
            ({"rate": True}, "speech.rate"),
            ({"rate": 175.0}, "speech.rate"),
            ({"pitch": 50}, "speech.pitch"),
        ]:
            await send(ws, {"type": "request", "prompt": "x", "speech": speech})
            msg = await receive(ws)
            assert msg["type"] == "error"
            assert "turn" not in msg
            assert msg["error"]["type"] == "invalid_request"
            assert msg["error"]["field"] == field, speech
        # The connection stays, and its first turn is turn 1.
        await send(ws, {"type": "request", "prompt": "x", "speech": None})
        turn = await read_turn(ws)
        assert [m["turn"] for m in turn] == [1] * len(turn)
        assert text_of(turn) == "Still here."
    assert len(seen) == 1


async def test_speech_without_the_extra_names_it(
    serve_ws: Serve,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if neither espeakng-loader nor Debian's libespeak-ng1 were installed.
    monkeypatch.setattr(_espeak, "_loaded", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    factory, seen = scripted_factory(["Text only."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "x", "speech": {}})
        msg = await receive(ws)
        assert msg["type"] == "error"
        assert "turn" not in msg
        assert msg["error"]["field"] == "speech"
        assert "pip install 'llmpipe[speech]'" in msg["error"]["message"]
        await send(ws, {"type": "request", "prompt": "x"})
        assert text_of(await read_turn(ws)) == "Text only."
    assert len(seen) == 1


async def test_an_unknown_voice_ends_the_turn_with_an_error(serve_ws: Serve) -> None:
    factory, seen = scripted_factory(["Never spoken.", "Spoken."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        speech = {"voice": "no-such-voice"}
        await send(ws, {"type": "request", "prompt": "x", "speech": speech})
        frames = await read_speech_turn(ws)
        end = frames[-1]
        assert isinstance(end, dict)
        assert (end["type"], end["turn"], end["kind"]) == ("error", 1, "config")
        assert "no-such-voice" in end["message"]
        assert audio_bytes(frames) == 0
        await send(ws, {"type": "request", "prompt": "y", "speech": SPEECH})
        frames = await read_speech_turn(ws)
        assert frames[-1]["type"] == "done"  # type: ignore[index]
        assert audio_bytes(frames) > 0
    # Nothing was heard of the failed turn: the history is unchanged.
    assert list(seen[1].messages) == [user("y")]


async def test_client_gone_mid_speech_stops_it(
    serve_ws: Serve,
    speakers: list[Speaker],
) -> None:
    answer = "A long answer that the listener will not wait for, spoken word by word."
    factory, _ = scripted_factory([answer, "Short."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "x", "speech": SPEECH})
        while not isinstance(await next_frame(ws), bytes):
            pass
    # The speech stops where it was (its audio would have lasted seconds more), and the engine
    # is free for the next connection.
    await trio.sleep(0.3)
    played = speakers[0].statistics().played_seconds
    await trio.sleep(0.3)
    assert speakers[0].statistics().played_seconds == played < 1.0
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "y", "speech": SPEECH})
        frames = await read_speech_turn(ws)
        assert frames[-1]["type"] == "done"  # type: ignore[index]
        assert audio_bytes(frames) > 0


async def test_speech_turns_are_measured_on_metrics(serve_ws: Serve) -> None:
    factory, _ = scripted_factory(["One short sentence to speak."])
    url = await serve_ws(factory)
    async with open_websocket_url(url) as ws:
        await send(ws, {"type": "request", "prompt": "Hi", "speech": SPEECH})
        frames = await read_speech_turn(ws)
    seconds = audio_bytes(frames) / 2 / RATE
    async with httpx.AsyncClient() as http:
        base = url.replace("ws://", "http://")[: -len("/v1/ws")]
        text = (await http.get(base + "/metrics")).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("llmpipe_speech")
    }
    assert values["llmpipe_speech_time_to_first_audio_seconds_count"] == 1
    assert 0 < values["llmpipe_speech_time_to_first_audio_seconds_sum"] < 5
    assert values["llmpipe_speech_realtime_factor_count"] == 1
    assert values["llmpipe_speech_underruns_total"] == 0
    assert values["llmpipe_speech_chars_total"] == len("One short sentence to speak.")
    assert values["llmpipe_speech_audio_seconds_total"] == pytest.approx(seconds, abs=0.001)
    assert values["llmpipe_speech_seconds_ahead"] == 0  # no turn is playing now
