"""End to end: the web page (``sinks/server/static``) in headless Chromium against the real app.

The app runs in-process on hypercorn (trio, 127.0.0.1, a free port) with scripted producers;
``tests/browser/e2e*.mjs`` drive Debian's Chromium through playwright-core and print JSON. The
page's module is also unit-tested under Node (``tests/browser/llmpipe.test.mjs``).

The page is a chat over one WebSocket (``tests/browser/e2e_chat.mjs``): two turns whose second
answer exists only if the server kept the first in the conversation, each answer's time to first
token and tokens per second as shown, the ``/metrics`` panel read twice (its figures and
sparklines move), the ``#token=`` fragment sent with the WebSocket and ``/metrics``, and a
screenshot kept in ``tests/artifacts/page_chat.png`` (ignored by git; the path is printed).

Two dropped connections, both real, for ``streamChat`` (``llmpipe.js``'s resumable reader) run
in the page: :class:`_DropOnce` (test middleware, armed by the test through
``POST /__test/drop``) ends the next first-time events response in the middle of a frame, and
it must resume with ``Last-Event-ID`` = the last whole frame's id; then a TCP proxy in
``e2e.mjs`` (the page is loaded through it) resets every connection mid-stream, a network
error. The text must come out whole, each event once, from one generation.

The "Speak" switch (``tests/browser/e2e_speech.mjs``): speech turns over ``WS /v1/ws`` with real
espeak-ng, the audio played by the page with Web Audio and checked as data (the page's
``window.llmpipeAudio`` counters against the WebSocket frames Chromium received, and the output
level read from an AnalyserNode before the loudspeaker), and Stop as barge-in: the interrupt,
silence at once, no audio scheduled after it, the heard text shown.

Missing Chromium, Node or ``tests/browser/node_modules`` fail (CI installs them), never skip.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import Usage
from pipeline.producers import ScriptedProducer
from sinks.server import ServerConfig, StreamRequest, create_app, serve

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
STATIC_DIR = ROOT / "sinks" / "server" / "static"
CHROMIUM = "/usr/bin/chromium"

TEXT = (
    "## Streaming, *resumed*\n\n"
    "Here is **bold** text, some *italic*, and `inline <code>` too; é€ and 😀 survive.\n\n"
    "- first item with `x = 1`\n"
    "- second **item**\n"
    "- third item\n\n"
    "```python\n"
    "def greet(name):\n"
    '    return f"<b>hello {name}</b>"\n'
    "```\n\n"
    "1. one\n"
    "2. two\n\n"
    "That is the whole answer, ending here."
)
# The drop scenario reads a longer answer: it is still streaming when the proxy resets.
DROP_TEXT = TEXT + "\n\n" + " ".join(f"word{i}" for i in range(80)) + "."
STOP_TEXT = " ".join(f"token{i}" for i in range(400))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _require_tools() -> str:
    node = shutil.which("node")
    problems = []
    if node is None:
        problems.append("node is not installed (apt-get install -y nodejs)")
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        problems.append("playwright-core is not installed (npm ci --prefix tests/browser)")
    if problems:
        pytest.fail("browser tests cannot run: " + "; ".join(problems), pytrace=False)
    assert node is not None
    return node


@attrs.define
class _Producers:
    """The test's producer factory: one ScriptedProducer per request, by prompt."""

    made: dict[str, list[ScriptedProducer]] = attrs.Factory(dict)

    @asynccontextmanager
    async def __call__(self, request: StreamRequest) -> AsyncIterator[ScriptedProducer]:
        prompt = request.messages[-1]["content"]
        if prompt == "stop":
            producer = ScriptedProducer.from_text(STOP_TEXT, delay=0.02)
        elif prompt == "drop":
            producer = ScriptedProducer.from_text(DROP_TEXT, delay=0.02)
        else:
            producer = ScriptedProducer.from_text(TEXT, delay=0.02)
        self.made.setdefault(prompt, []).append(producer)
        yield producer


@attrs.define
class _DropState:
    armed_after: int | None = None  # cut the next first-time events response after N frames
    sent: bytes = b""  # what the cut response delivered
    # The Last-Event-ID of each events request, by stream id.
    resumes: dict[str, list[str | None]] = attrs.Factory(dict)


_EVENTS_PATH = re.compile(r"^/v1/streams/[^/]+/events$")


class _DropOnce:
    """Test middleware: ``POST /__test/drop?after=N`` arms it; the next events request without a
    ``Last-Event-ID`` is cut in the middle of frame N+1 (the response ends there, the reader
    inside the app is cancelled). Every events request's ``Last-Event-ID`` is recorded."""

    def __init__(self, app: ASGIApp, state: _DropState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/__test/drop":
            response: Response = JSONResponse({"armed": True})
            if scope["method"] != "POST":
                response = Response(status_code=405)
            else:
                self.state.armed_after = int(Request(scope).query_params.get("after", "10"))
            await response(scope, receive, send)
            return
        if not _EVENTS_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        stream_id = scope["path"].split("/")[3]
        last_id = dict(scope["headers"]).get(b"last-event-id")
        resumes = self.state.resumes.setdefault(stream_id, [])
        resumes.append(None if last_id is None else last_id.decode())
        after = self.state.armed_after
        if after is None or last_id is not None:
            await self.app(scope, receive, send)
            return
        self.state.armed_after = None
        sent = bytearray()

        with trio.CancelScope() as cut:

            async def cutting_send(message: Message) -> None:
                if message["type"] != "http.response.body":
                    await send(message)
                    return
                body = message.get("body", b"")
                frames = sent.count(b"\n\n") + body.count(b"\n\n")
                if frames <= after:
                    sent.extend(body)
                    await send(message)
                    return
                # Keep the frames before number after+1, then half of that frame.
                keep = bytearray(sent + body)
                pos = 0
                for _ in range(after):
                    pos = keep.index(b"\n\n", pos) + 2
                end = keep.index(b"\n\n", pos)
                cut_at = pos + (end - pos) // 2
                partial = bytes(keep[len(sent) : cut_at])
                sent.extend(partial)
                self.state.sent = bytes(sent)
                await send({"type": "http.response.body", "body": partial, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                cut.cancel()
                await trio.lowlevel.checkpoint()

            await self.app(scope, receive, cutting_send)


def _last_whole_frame_id(sent: bytes) -> str:
    whole = sent[: sent.rindex(b"\n\n")].decode()
    ids: list[str] = re.findall(r"^id: ?(.*)$", whole, flags=re.MULTILINE)
    return ids[-1]


async def _run_node(node: str, script: str, *args: str) -> str:
    result = await trio.run_process(
        [node, script, *args],
        cwd=BROWSER_DIR,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = result.stdout.decode()
    err = result.stderr.decode()
    assert result.returncode == 0, f"node {script} failed ({result.returncode}):\n{out}\n{err}"
    return out


async def test_llmpipe_js_unit_tests_under_node() -> None:
    node = _require_tools()
    with trio.fail_after(60):
        out = await _run_node(node, "--test", "llmpipe.test.mjs")
    assert "# fail 0" in out, out


async def test_page_streams_resumes_and_stops_in_chromium(nursery: trio.Nursery) -> None:
    node = _require_tools()
    producers = _Producers()
    drop = _DropState()
    app = create_app(producers)
    app.add_middleware(_DropOnce, state=drop)

    port: int = await nursery.start(serve, app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}/"
    if not await _serves_page(port):
        # The app does not serve the page itself: mount the static directory for the test.
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
        assert await _serves_page(port), "GET / does not serve the page"

    with trio.fail_after(90):
        out = await _run_node(node, "e2e.mjs", base)
    results = json.loads(out.strip().splitlines()[-1])
    for name, res in results.items():
        assert "failed" not in res, f"scenario {name} failed in the browser:\n{res['failed']}"
        assert res["problems"] == [], f"{name}: page errors {res['problems']}"

    # (1) The whole answer arrives, exactly, and renders as markdown.
    full = results["full"]
    assert full["state"] == "done", full
    assert full["text"] == TEXT
    assert full["rendered"] == TEXT
    assert full["seqs"] == sorted(set(full["seqs"]))
    assert full["partialLength"] < len(TEXT), "the answer only appeared at the end"
    assert full["frames"] <= full["events"], "more renders than events"
    dom = full["dom"]
    assert dom["h"] == ["Streaming, resumed"]
    assert dom["li"][:3] == ["first item with x = 1", "second item", "third item"]
    assert dom["li"][3:] == ["one", "two"]
    assert dom["code"] == ['def greet(name):\n    return f"<b>hello {name}</b>"']
    assert dom["strong"] == ["bold", "item"]
    assert "<b>" not in dom["html"]
    assert "<img" not in full["xss"]
    assert "<script" not in full["xss"]
    assert "&lt;img" in full["xss"]

    # (2) streamChat in the page: the cut connection and the reset one resume with no lost or
    # repeated text.
    dropped = results["drop"]
    assert dropped["state"] == "done", dropped
    assert dropped["text"] == DROP_TEXT
    assert dropped["seqs"] == sorted(set(dropped["seqs"])), "an event was delivered twice"
    assert dropped["seqs"] == list(range(dropped["seqs"][0], dropped["seqs"][-1] + 1))
    assert drop.sent, "the events connection was never cut"
    cut_id = _last_whole_frame_id(drop.sent)
    assert dropped["resumedFrom"][0] == cut_id
    resumes = drop.resumes[dropped["streamId"]]
    assert resumes[:2] == [None, cut_id], resumes
    assert dropped["afterServerDrop"]["reconnects"] == 1
    # The proxy reset the connections while the answer was still arriving: a second resume.
    assert dropped["resetSockets"] > 0
    assert dropped["beforeReset"]["state"] != "done", "the answer ended before the reset"
    assert dropped["reconnects"] >= 2, "a reset connection did not make streamChat reconnect"
    assert resumes[2] is not None
    assert int(resumes[2]) >= dropped["beforeReset"]["seqs"][-1]
    assert len(producers.made["drop"]) == 1, "a reconnection started a new generation"

    # (3) Stop interrupts the page's turn (on its WebSocket) and cancels the generation upstream.
    stopped = results["stop"]
    assert stopped["state"] == "stopped", stopped
    assert stopped["text"] == stopped["textAtStop"], "text arrived after Stop"
    assert STOP_TEXT.startswith(stopped["text"])
    assert len(stopped["text"]) < len(STOP_TEXT)
    end = stopped["turns"][-1]["end"]
    assert end["type"] == "interrupted", end
    assert end["delivered_chars"] == len(stopped["text"]), "the server and the page disagree"
    # The page had the server's `interrupted` answer and waited 500 ms more.
    (producer,) = producers.made["stop"]
    assert producer.closed
    assert producer.cancelled, "Stop did not cancel the generation upstream"
    assert producer.emitted < len(producer.steps) - 1


async def _serves_page(port: int) -> bool:
    import httpx

    async with httpx.AsyncClient() as client:
        res = await client.get(f"http://127.0.0.1:{port}/")
    return res.status_code == 200 and 'id="prompt"' in res.text


# ---- the "Speak" switch: speech turns over WS /v1/ws, played with Web Audio ------------------

SPEAK_TEXT = "Hello from the browser. This answer is spoken, word by word."
BARGEIN_TEXT = (
    "One two three four five six seven eight nine ten. Eleven twelve thirteen fourteen fifteen. "
    "Sixteen seventeen eighteen nineteen twenty."
)
RATE = 22050


@attrs.define
class _SpeechProducers:
    """The speech test's producer factory: one ScriptedProducer per request, by prompt."""

    made: dict[str, list[ScriptedProducer]] = attrs.Factory(dict)

    @asynccontextmanager
    async def __call__(self, request: StreamRequest) -> AsyncIterator[ScriptedProducer]:
        prompt = request.messages[-1]["content"]
        text = BARGEIN_TEXT if prompt == "bargein" else SPEAK_TEXT
        producer = ScriptedProducer.from_text(text, delay=0.01)
        self.made.setdefault(prompt, []).append(producer)
        yield producer


def _check_audio(run: dict[str, Any]) -> list[int]:
    """The audio as the page counted it matches the WebSocket's frames as Chromium received them,
    and all of it was scheduled at 22050 Hz (up to Stop). Returns the binary frames' sizes."""
    audio = run["audio"]
    received = run["ws"]["received"]
    sizes = [f for f in received if isinstance(f, int)]
    assert audio["format"] == {
        "type": "audio_format",
        "turn": 1,
        "encoding": "pcm_s16le",
        "sample_rate": RATE,
        "channels": 1,
    }
    assert sizes, "no audio frame"
    assert received.index("audio_format") < received.index(sizes[0])
    assert all(size % 2 == 0 for size in sizes)
    assert audio["framesReceived"] == len(sizes)
    assert audio["samplesReceived"] == sum(sizes) // 2 > 0
    assert audio["samplesScheduled"] + audio["samplesDropped"] == audio["samplesReceived"]
    assert audio["contextRate"] == RATE
    assert audio["bufferRates"] == [RATE]
    assert audio["contextState"] == "running", "the AudioContext never played"
    return sizes


async def test_page_speaks_and_stop_is_barge_in_in_chromium(nursery: trio.Nursery) -> None:
    node = _require_tools()
    producers = _SpeechProducers()
    app = create_app(producers)
    port: int = await nursery.start(serve, app, "127.0.0.1", 0)
    assert await _serves_page(port), "GET / does not serve the page"

    with trio.fail_after(90):
        out = await _run_node(node, "e2e_speech.mjs", f"http://127.0.0.1:{port}/")
    results = json.loads(out.strip().splitlines()[-1])
    for name, res in results.items():
        assert "failed" not in res, f"scenario {name} failed in the browser:\n{res['failed']}"
        assert res["problems"] == [], f"{name}: page errors {res['problems']}"

    # (1) Speak on: the prompt goes over the WebSocket as a speech turn, the text renders, and
    # every sample received is scheduled for playback; the turn ends once it has played.
    spoken = results["speak"]
    assert spoken["ws"]["urls"] == [f"ws://127.0.0.1:{port}/v1/ws"]
    [request] = spoken["ws"]["sent"]
    assert request == {"type": "request", "prompt": "speak", "speech": {}}
    assert spoken["state"] == "done", spoken
    assert spoken["text"] == SPEAK_TEXT
    assert spoken["rendered"] == SPEAK_TEXT
    assert spoken["heardLine"] is None
    sizes = _check_audio(spoken)
    audio = spoken["audio"]
    assert audio["samplesScheduled"] == audio["samplesReceived"]
    assert audio["samplesDropped"] == 0
    assert audio["sourcesStarted"] == len(sizes)
    assert audio["sourcesStopped"] == 0
    assert not audio["stopped"]
    assert [w["text"] for w in audio["words"]] == SPEAK_TEXT.split()
    seconds = audio["samplesReceived"] / RATE
    # The voice came out of the page's audio graph (an AnalyserNode before the loudspeaker).
    assert max(spoken["playing"]) > 0.05, spoken["playing"]
    assert 1.5 < seconds < 10, seconds
    # The text runs ahead of the voice: it is on the page when the first audio is scheduled.
    first = spoken["firstAudio"]
    assert first["rendered"]
    assert SPEAK_TEXT.startswith(first["rendered"])
    assert first["audio"]["samplesScheduled"] < audio["samplesReceived"]
    # Played at playback speed, and the page waits for the end of its playback.
    assert spoken["ms"] >= seconds * 1000, (spoken["ms"], seconds)
    assert spoken["ws"]["received"][-1] == "done"

    # (2) Stop after ~0.5 s of audio: barge-in. The page sends an interrupt, its scheduled audio
    # stops, nothing is scheduled after, and it shows the heard text the server answered.
    barged = results["bargein"]
    assert barged["state"] == "stopped", barged
    audio = barged["audio"]
    assert audio["stopped"]
    at_stop = audio["scheduledAtStop"]
    assert at_stop >= 0.5 * RATE
    assert audio["samplesScheduled"] == at_stop, "audio was scheduled after Stop"
    assert barged["atEnd"]["audio"]["samplesScheduled"] == at_stop
    assert audio["sourcesStopped"] >= 1, "no source was still scheduled at Stop"
    # The output, as data: the voice played until Stop, then silence at once.
    assert max(barged["before"]) > 0.05, barged["before"]
    assert barged["after"]
    assert max(barged["after"]) == 0, f"audio played on after Stop: {barged['after']}"
    assert audio["samplesReceived"] / RATE < 3, "Stop came late: the test proves nothing"
    _check_audio(barged)
    sent = barged["ws"]["sent"]
    assert sent == [{"type": "request", "prompt": "bargein", "speech": {}}, {"type": "interrupt"}]
    received = barged["ws"]["received"]
    assert received[-1] == "interrupted"
    assert "done" not in received
    end = audio["interrupted"]
    assert end["type"] == "interrupted"
    assert end["heard_exact"] is True
    heard = end["heard"]
    assert heard.strip(), "nothing heard after 0.5 s of audio"
    assert BARGEIN_TEXT.startswith(heard)
    rest = BARGEIN_TEXT[len(heard.rstrip()) :]
    assert rest, "all was heard: Stop came too late"
    assert rest[0].isspace(), f"not a whole-word prefix: {heard!r}"
    assert barged["heardLine"] == f"heard: {heard}"
    # What was heard had been received (and scheduled) here before Stop.
    words = audio["words"]
    assert [w["text"] for w in words] == BARGEIN_TEXT.split()[: len(words)]
    heard_words = heard.split()
    assert all(w["sample"] < audio["samplesReceived"] for w in words[: len(heard_words)])
    (producer,) = producers.made["bargein"]
    assert producer.closed


# ---- the chat: turns on one WebSocket, answer figures, the /metrics panel ---------------------

CHAT_TOKEN = "chat-secret"
ARTIFACTS = ROOT / "tests" / "artifacts"
FIRST_DELAY = 0.2  # seconds before each answer's first token: a floor for the page's TTFT


def _chat_answer(messages: list[dict[str, str]]) -> str:
    """The scripted model: remembers a word only if the conversation it is given holds it."""
    last = messages[-1]["content"]
    if last.startswith("Remember the word "):
        return f"I will remember **{last.removeprefix('Remember the word ').rstrip('.')}**."
    for m in messages[:-1]:
        found = re.search(r"I will remember \*\*(\w+)\*\*", m["content"])
        if m["role"] == "assistant" and found:
            return f"You asked me to remember {found[1]}."
    return "You never asked me to remember anything."


@attrs.define
class _ChatProducers:
    """One ScriptedProducer per turn, answering from the messages it is given, with a usage event
    (so the page's token count is the provider's, whatever coalescing merged)."""

    requests: list[list[dict[str, str]]] = attrs.Factory(list)

    @asynccontextmanager
    async def __call__(self, request: StreamRequest) -> AsyncIterator[ScriptedProducer]:
        messages = [dict(m) for m in request.messages]
        self.requests.append(messages)
        text = _chat_answer(messages)
        script = ScriptedProducer.from_text(text, delay=0.02, first_delay=FIRST_DELAY)
        *deltas, done = script.steps
        yield ScriptedProducer([*deltas, Usage(7, len(deltas)), done])


async def test_page_is_a_chat_with_figures_and_a_metrics_panel_in_chromium(
    nursery: trio.Nursery,
) -> None:
    node = _require_tools()
    producers = _ChatProducers()
    app = create_app(producers, ServerConfig(auth_token=CHAT_TOKEN))
    port: int = await nursery.start(serve, app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}/"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "page_chat.png"
    screenshot.unlink(missing_ok=True)

    with trio.fail_after(90):
        out = await _run_node(node, "e2e_chat.mjs", base, CHAT_TOKEN, str(screenshot))
    results = json.loads(out.strip().splitlines()[-1])
    for name, res in results.items():
        assert "failed" not in res, f"scenario {name} failed in the browser:\n{res['failed']}"
        assert res["problems"] == [], f"{name}: page errors {res['problems']}"
    run = results["chat"]

    # The token came from the address's fragment, left the address bar, and went with every
    # request: the WebSocket's handshake passed the server's auth (turns were answered), and
    # each GET /metrics carried it.
    assert run["address"] == base
    assert run["metricsAuth"] == [f"Bearer {CHAT_TOKEN}"]

    # Two turns on one WebSocket; the server kept the history, so the second answer depends on
    # the first, and each request carried only its new message.
    first_answer = "I will remember **ostrich**."
    second_answer = "You asked me to remember ostrich."
    assert run["ws"]["urls"] == [f"ws://127.0.0.1:{port}/v1/ws"]
    assert run["ws"]["sent"] == [
        {"type": "request", "prompt": "Remember the word ostrich."},
        {"type": "request", "prompt": "Which word did I ask you to remember?"},
    ]
    assert producers.requests == [
        [{"role": "user", "content": "Remember the word ostrich."}],
        [
            {"role": "user", "content": "Remember the word ostrich."},
            {"role": "assistant", "content": first_answer},
            {"role": "user", "content": "Which word did I ask you to remember?"},
        ],
    ]
    assert [t["text"] for t in run["turns"]] == [first_answer, second_answer]
    assert [t["end"]["type"] for t in run["turns"]] == ["done", "done"]
    assert run["history"][-1] == {"role": "assistant", "content": second_answer}
    dom = run["dom"]
    assert [d["user"] for d in dom] == [t["prompt"] for t in run["turns"]]
    assert [d["answer"] for d in dom] == ["I will remember ostrich.", second_answer]

    # Per answer: time to first token (from the request frame; the model waited FIRST_DELAY
    # before its first token, so no smaller figure is right) and tokens per second, shown.
    for turn, shown in zip(run["turns"], dom, strict=True):
        tokens = len(turn["text"].split())
        assert turn["tokens"] == tokens, turn  # the usage event's output_tokens
        assert turn["ttftMs"] >= FIRST_DELAY * 1000, turn
        assert turn["tokensPerSecond"] > 0, turn
        # As shown: rounded by JS (Math.round, toFixed), which breaks ties unlike Python's round.
        ttft = re.fullmatch(r"first token (\d+) ms", shown["ttft"])
        assert ttft, shown
        assert abs(int(ttft[1]) - turn["ttftMs"]) <= 0.5
        tps = re.fullmatch(rf"(\d+\.\d) tok/s \({tokens} tokens\)", shown["tps"])
        assert tps, shown
        assert abs(float(tps[1]) - turn["tokensPerSecond"]) <= 0.05 + 1e-9

    # The metrics panel polled /metrics and its figures changed between the two reads.
    before, after = run["first"], run["second"]
    assert before["error"] is None
    assert after["error"] is None
    assert before["last"]["streamsServed"] == 0
    assert before["streams"] == "0 now · 0 served"
    assert after["last"]["streamsServed"] == 2
    assert after["streams"] == "0 now · 2 served"
    assert after["polls"] > before["polls"]
    # Each sparkline gained a point per poll.
    grown = zip(before["points"], after["points"], strict=True)
    assert all(p_after > p_before for p_before, p_after in grown), (before, after)
    # No stream is live after the turns: nothing queued (the figures as the panel shows them).
    assert after["buffer"] == "0 B · 0 events · fullest 0%"
    assert re.fullmatch(r"\d+ ms/s · \d+\.\d\d s total", after["blocked"]), after["blocked"]

    # A /metrics that refuses the page (no token given) stops the polling, and says why.
    refused = results["refused"]
    assert refused["requests"] == 1, refused
    assert refused["polling"] is False
    assert refused["state"] == "error"
    assert refused["status"] == "/metrics: HTTP 401: open the page as /#token=<token>"

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot of the chat page: {screenshot}")
