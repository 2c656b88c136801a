"""``WS /v1/ws``: a conversation over one WebSocket, turn by turn, interruptible.

Protocol (JSON text frames, one object per frame; a speech turn's audio in binary frames)
-----------------------------------------------------------------------------------------

Client -> server:

``{"type": "request", <StreamRequest fields>, "reset": false}``
    Starts a turn. The fields are those of ``POST /v1/stream`` (``messages`` or ``prompt``,
    ``model``, ``max_tokens``, ``temperature``, ``provider``, ``buffering``), validated by
    :meth:`StreamRequest.from_json`. ``messages`` holds only the **new** messages of this turn:
    the server keeps the conversation (see *History*) and sends the producer the kept history
    followed by them. ``"reset": true`` forgets the history first (a new conversation on the
    same connection). ``"speech": {"voice": "en", "rate": 175}`` (both optional; ``{}`` takes
    these defaults) makes it a *speech turn* (see below): ``voice`` is an espeak-ng voice
    (``"en"``, ``"fr"``, ``"en-us"``, ``"en+f3"``), ``rate`` words per minute, 80 to 450;
    validated by :meth:`SpeechRequest.from_json` (errors name ``speech``, ``speech.voice``,
    ``speech.rate``). Without the ``speech`` extra installed the request gets a protocol error
    (``field: "speech"``, status 501) whose message names the extra to install.
``{"type": "interrupt"}``
    Cancels the turn in progress: the pipeline and the upstream request are closed at once and
    the server answers ``interrupted``. An interrupt with no turn in progress, or one that
    arrives after the turn's terminal event was produced, is ignored (the turn's own end,
    ``done``/``error``, is what the client sees). A speech turn is in progress until its audio
    has all been sent: an interrupt stops the speech at once (barge-in).
``{"type": "ping", "id": <optional>}``
    Answered by ``{"type": "pong", "id": <same>}`` (``id`` only when given).

Anything else (invalid JSON, a binary frame, a frame over ``config.max_body_bytes``, an unknown
``type``, an invalid request, a request while a turn runs) is answered by
``{"type": "error", "error": {"type": "invalid_request", "field": ..., "message": ...}}``
(:meth:`RequestError.to_json`) and the connection stays open. Such protocol errors have no
``"turn"`` key; that is how a client tells them from a turn's terminal ``error`` event.

Server -> client, for turn ``N`` (1, 2, ... per connection):

* every pipeline event as :func:`pipeline.event_to_dict` plus ``"turn": N`` (``text``,
  ``metadata``, ``usage``, tool-call events, ``heartbeat``); the turn ends with exactly one of
* its terminal event, ``{"type": "done", ...}`` or ``{"type": "error", "kind": ..., ...}``
  (a producer that fails before its first event, or a producer factory that fails, gives an
  ``error`` event with ``seq`` 0), or
* ``{"type": "interrupted", "turn": N, "delivered_chars": K}`` after an interrupt, where ``K``
  counts the characters (code points) of text sent to this client in turn ``N``; a speech turn
  adds ``"heard": <text>, "heard_exact": true``, the answer's text (as the model wrote it) of
  the whole words whose audio had played when the interrupt arrived (see
  :meth:`sinks.speech.Speaker.interrupt`; ``heard_exact`` is false only for an engine without
  word marks, never for espeak-ng).

Speech turns. The text events go to the client as in any turn (as the model produces them,
usually well ahead of the voice), and the answer is also spoken by
:class:`sinks.speech.Speaker` with :class:`sinks.speech.EspeakEngine` (markdown cleaned for
speech as ``llmpipe speak`` does), played by a :class:`sinks.speech.Player` on trio's clock
whose output is this connection. So the audio goes out **at playback speed** (a client may play
it as it arrives; the server holds at most the speaker's ``ahead_seconds`` of audio, 15 s):

* ``{"type": "audio_format", "turn": N, "encoding": "pcm_s16le", "sample_rate": 22050,
  "channels": 1}`` once, just before the turn's first audio;
* binary frames: raw 16-bit little-endian mono PCM, one per player frame (20 ms, 882 bytes);
* ``{"type": "word", "turn": N, "text": <word as spoken>, "sample": S}`` right after the binary
  frame that holds the word's first sample, in the order of the words; ``S`` counts the samples
  of the turn's audio before the word (binary bytes received / 2). Words marked at the very end
  of the audio (silent punctuation) follow the last binary frame.

The terminal event (``done``, or a mid-stream ``error``: the text received is still spoken) is
sent once the audio has all been sent and played on the server's clock. After ``interrupted``
no binary frame of the turn follows. An espeak-ng that rejects the voice ends the turn with an
``error`` event (``kind: "config"``) before any audio.

A new ``request`` is accepted while the previous turn is ending (after its terminal event was
produced, or after an ``interrupt``): it waits for that turn to finish, so its events always
follow the previous turn's last message and its history includes the previous answer. A
request while a turn is still running gets an error (``field: "type"``, "a turn is in
progress"); interrupt first.

History
-------

After each turn the server appends the turn's messages and, as an ``assistant`` message, the
answer's text **as delivered to this client**: all of it after ``done``, only the part that was
actually sent after ``interrupted`` or a mid-stream ``error`` (the model may have produced more;
the listener never got it, so the model must not believe it said it). For a speech turn it is
the text **as heard** instead: the ``heard`` text after ``interrupted`` (the client may have
read more, but the listener heard that). A turn that failed before delivering (hearing) any
text leaves the history unchanged (resend the same message to retry); one interrupted before
any text keeps its messages, without an answer.
Tool-call events are not kept. The history is bounded: leading ``system`` messages are pinned;
of the rest, the oldest are dropped first until at most ``max_history_messages`` messages and
``max_history_chars`` characters of content remain (the newest message is always kept), and a
kept conversation never starts with an ``assistant`` message. See :func:`trim_history`.

Concurrency and cancellation
----------------------------

The endpoint owns one nursery per connection. Its body reads client frames (so pings,
interrupts and errors are answered while a turn streams); each turn runs in a task of that
nursery, reading the pipeline's events through a channel with the request's ``buffering``, as
``POST /v1/stream`` does (:meth:`AppRuntime.live_events`). With the default policy,
``coalesce``, when this client reads slower than the model writes, queued text deltas merge,
so memory stays bounded and nothing is lost. Sends from both tasks (and from a speech turn's
player, a task of the turn's pipeline) are serialised by a lock, and each send is shielded, so
a frame is either sent whole and counted as delivered or not sent at all (an audio frame and
its word frames go together). An interrupt cancels the turn's cancel scope, which covers the
producer's task: the upstream request is closed in the same scheduling round (a few ms;
measured < 50 ms with the OpenAI SDK), even while a send to a slow client is still in flight.
In a speech turn it first stops the player (:meth:`sinks.speech.Speaker.interrupt`), so what
was heard is decided at the instant the interrupt is read. A speech turn's speaker reads the
pipeline through its own ``coalesce`` channel; a client that reads audio slower than real time
slows the player (the sends wait), never the memory. When the client goes away,
the read loop sees the disconnect and cancels the whole nursery: the turn, its pipeline and the
upstream request are closed.

A client that stays connected but reads nothing has the send deadline of ``POST /v1/stream``
(``config.send_timeout``, :func:`wait_frozen`): once one send has waited that long the turn's
buffering policy decides (``fail``: the turn ends with an ``overflow`` error at once; the others
once nothing moves any more) and the session ends (see :meth:`_Session._watch_frozen`). The
sends themselves run in tasks of the app's lifespan nursery (hypercorn shields its socket
writes, so a stuck one cannot be cancelled): the turn stops waiting for it and frees its
resources; the stuck send holds one frame until the client leaves.

Frames are read by a task of their own into a bounded inbox (:data:`MAX_INBOX_FRAMES`), so a
disconnect is seen even while a send to the client is stuck; a client that sends that many
frames ahead of reading the answers (a ping flood) is disconnected (close code 1008).

Keepalive: the server never times out an idle connection (there is no receive deadline).
WebSocket protocol pings from the client are answered by the server (hypercorn/wsproto) without
reaching the app; server-initiated protocol pings are hypercorn's ``websocket_ping_interval``
(off by default). During a turn the pipeline sends ``heartbeat`` events after
``config.heartbeat_interval`` seconds of silence.

The app's runtime
-----------------

The endpoint is given the app's :class:`~sinks.server.AppRuntime`, as every other route is
(:func:`~sinks.server.create_app` mounts ``partial(websocket_endpoint, runtime)``). It uses:

* ``factory`` and ``config`` (``providers``, ``max_body_bytes`` as the frame limit,
  ``heartbeat_interval``);
* before the handshake is accepted: :func:`check_origin` (a WebSocket is not subject to CORS:
  only the page's own origin, ``config.cors_origins`` and clients that send no ``Origin``, i.e.
  not browsers, are let in; else 403), ``check_auth(headers)`` (401), the subprotocols (400, see
  below) and ``admit_websocket(client_host)`` (the connection limits, idle connections
  included: 429 past ``max_websockets_per_client``, 503 past ``max_streams_total``). A refusal
  is answered from the server's error table (``_errors.py``): its HTTP response as the denial
  response when the server supports that, else close code 1008 (HTTP 403). A browser cannot
  set ``Authorization`` on a WebSocket, so a bearer token may also come as a subprotocol:
  ``new WebSocket(url, ["llmpipe", "bearer." + token])``; it counts as ``Authorization: Bearer
  <token>`` when that header is absent. The server selects ``llmpipe`` when offered, never a
  ``bearer.`` one (the response would echo the token): offering that one without ``llmpipe`` is
  refused with a 400 naming ``Sec-WebSocket-Protocol``; other offers get no subprotocol;
* ``admit(client_host)``, held for each turn (the stream limits). When it refuses, the turn ends
  with an ``error`` event made from the same table: ``kind`` is the refusal's error type
  (``rate_limited``, ``overloaded``, ``shutting_down``), ``retryable`` as the HTTP answer says;
* ``live_events`` (the turn's channel, with the request's ``buffering``) and ``metrics`` (the
  stream's telemetry, as for ``POST /v1/stream``);
* ``shutting_down``: when set, a running turn ends with a retryable ``error`` event of kind
  ``"shutdown"``, new requests are refused and the connection is closed with code 1001.

The history is bounded by :data:`MAX_HISTORY_MESSAGES` and :data:`MAX_HISTORY_CHARS`.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import trio
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pipeline import (
    Error,
    Event,
    EventReceiver,
    MissingExtraError,
    Pipeline,
    Route,
    TextDelta,
    error_event,
    event_to_dict,
    is_terminal,
    json_text,
)
from pipeline.text import SpeakableStream

from ..speech import AudioChunk, EmitAudio, EspeakEngine, HeardText, Player, Speaker, SpeechEngine
from ._context import SpeechRequest, StreamRequest, decode_json
from ._errors import ErrorReply, Forbidden, Refused, RequestError
from ._metrics import StreamReason
from ._runtime import AppRuntime
from ._stream import Frozen, begin_stream, wait_frozen

__all__ = [
    "MAX_HISTORY_CHARS",
    "MAX_HISTORY_MESSAGES",
    "SUBPROTOCOL",
    "WebSocketApp",
    "check_origin",
    "trim_history",
    "websocket_endpoint",
]

SUBPROTOCOL: Final = "llmpipe"
"""The subprotocol the server selects when a client offers it."""
BEARER_SUBPROTOCOL_PREFIX: Final = "bearer."
"""A subprotocol ``bearer.<token>`` carries the bearer token (browsers cannot set headers)."""
MAX_HISTORY_MESSAGES: Final = 64
"""Default bound on the messages a connection keeps (pinned leading system messages included)."""

MAX_HISTORY_CHARS: Final = 200_000
"""Default bound on the characters of content a connection keeps (~800 KB at worst)."""

MAX_INBOX_FRAMES: Final = 32
"""Client frames read but not yet answered, per connection; a client further ahead (it sends
and does not read the answers) is disconnected. Each is at most ``max_body_bytes``."""

DRAIN_SECONDS: Final = 5.0
"""At most this long after a session, the endpoint reads and drops the client's frames (see
:class:`WebSocketApp`)."""
DRAIN_QUIET: Final = 0.05
"""The drain ends once the client has sent nothing for this long."""

Message = dict[str, str]
Frame = str | bytes
_Frame = str | int | bytes  # a text frame, the size of one too large, or a binary one


def trim_history(
    messages: Sequence[Mapping[str, str]],
    *,
    max_messages: int = MAX_HISTORY_MESSAGES,
    max_chars: int = MAX_HISTORY_CHARS,
) -> list[Message]:
    """Bound a conversation, dropping the oldest messages first.

    Leading ``system`` messages are pinned (kept ahead of everything else); of the rest, the
    oldest go until the total is within ``max_messages`` messages and ``max_chars`` characters
    of content, except that the newest message is always kept. Then ``assistant`` messages left
    at the front of the conversation are dropped too (a conversation starts with the user).
    """
    pinned: list[Message] = []
    i = 0
    while i < len(messages) and messages[i].get("role") == "system":
        pinned.append(dict(messages[i]))
        i += 1
    rest = [dict(m) for m in messages[i:]]
    count = len(pinned) + len(rest)
    chars = sum(len(m.get("content", "")) for m in (*pinned, *rest))
    start = 0
    while len(rest) - start > 1 and (count > max_messages or chars > max_chars):
        count -= 1
        chars -= len(rest[start].get("content", ""))
        start += 1
    while len(rest) - start > 1 and rest[start].get("role") == "assistant":
        start += 1
    return pinned + rest[start:]


@attrs.define(eq=False)
class _Turn:
    number: int
    request: StreamRequest
    reset: bool
    previous: _Turn | None
    engine: SpeechEngine | None = None  # a speech turn
    speaker: Speaker | None = None  # once its pipeline runs
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    delivered: list[str] = attrs.Factory(list)
    delivered_chars: int = 0
    interrupted: bool = False
    shutdown: bool = False
    ending: bool = False  # its outcome is decided (terminal event produced, or interrupted)
    events: EventReceiver | None = None  # its pipeline's channel, while it runs
    frozen: Frozen | None = None  # given up: the client read nothing for ``send_timeout``
    finished: trio.Event = attrs.Factory(trio.Event)


def _dumps(obj: Mapping[str, Any]) -> str:
    return json_text(obj)


def _protocol_error(field: str, message: str, *, status: int = 400) -> dict[str, Any]:
    return {"type": "error", **RequestError(field, message, status=status).to_json()}


_SHUTTING_DOWN: Final = _protocol_error("type", "the server is shutting down", status=503)


class _Session:
    """One connection: its history, its current turn, its send lock and its nursery."""

    def __init__(self, websocket: WebSocket, runtime: AppRuntime) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.client = websocket.client.host if websocket.client else "unknown"
        self.closing = False
        self.max_frame = runtime.config.max_body_bytes
        self.heartbeat: float | None = runtime.config.heartbeat_interval or None
        self.history: list[Message] = []
        self.turns = 0
        self.turn: _Turn | None = None  # the latest turn until it has finished
        self.send_lock = trio.Lock()
        self.sending: set[trio.CancelScope] = set()  # the shielded sends in flight
        self._waiting_since: float | None = None  # when the send in flight started
        self.frozen = False  # given up: the client read nothing for ``send_timeout``
        self.close_code = 1011  # how the server closes the connection if it ends it
        self.close_reason = ""
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        inbox_send, inbox = trio.open_memory_channel[_Frame](MAX_INBOX_FRAMES)
        async with trio.open_nursery() as nursery, inbox_send, inbox:
            self.nursery = nursery
            nursery.start_soon(self._unshield_when_cancelled)
            nursery.start_soon(self._close_on_shutdown, self.runtime.shutting_down)
            nursery.start_soon(self._receive_frames, inbox_send)
            nursery.start_soon(self._watch_frozen)
            await self._read_loop(inbox)

    @property
    def source(self) -> EventReceiver | None:
        """The running turn's channel (what a frozen client holds up), else ``None``."""
        turn = self.turn
        return None if turn is None else turn.events

    def waiting_for(self) -> float:
        """How long the send in flight has been waiting for the client to read (0.0 if none)."""
        since = self._waiting_since
        return 0.0 if since is None else trio.current_time() - since

    async def _watch_frozen(self) -> None:
        """The send deadline, as for ``POST /v1/stream`` (:func:`wait_frozen`): once one send
        has waited ``config.send_timeout`` the turn's buffering policy decides. ``fail`` ends
        the turn at once with an ``overflow`` error; the others give up once nothing moves
        (``coalesce`` goes on merging while the generation runs). Giving up ends the turn (its
        pipeline and upstream request are closed, its stream slot freed) and the session; the
        send that waits is left to hypercorn (it holds one frame), so no close frame can go
        out: the connection stays open, holding nothing of the stream, until the client
        leaves. Counted in ``llmpipe_frozen_clients``."""
        timeout = self.runtime.config.send_timeout
        kind = await wait_frozen(self, timeout)
        self.runtime.metrics.frozen_clients.inc()
        self.frozen = True
        turn = self.turn
        if turn is not None:
            turn.frozen = kind
            turn.ending = True
        self.runtime.metrics.expected_end(
            "client_frozen", "websocket", client=self.client, send_timeout=timeout, policy=kind
        )
        self.close_code, self.close_reason = 1008, f"read nothing for {timeout:g} s"
        self._abort()

    def _abort(self) -> None:
        """End the session now: cancel all its tasks, sends in flight included (their shields
        are lifted: the client is gone or must go, so delivery no longer counts)."""
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()
        self._unshield()

    def _unshield(self) -> None:
        for scope in self.sending:
            scope.shield = False

    async def _unshield_when_cancelled(self) -> None:
        """However the session ends (the client left, shutdown, or the server's grace ran out
        and cancelled the request from outside), no shielded send may keep it alive: a send to
        a client that stopped reading never returns, nor does one that waits for hypercorn to
        hand over a disconnect that nobody reads any more."""
        try:
            await trio.sleep_forever()
        finally:
            self._unshield()

    async def _receive_frames(self, inbox: trio.MemorySendChannel[_Frame]) -> None:
        """Read the client's frames into ``inbox``, never waiting on anything but the client:
        so its disconnect is seen even while a send to it is stuck (a client that floods
        frames and never reads the replies), and ends the session. A frame over
        ``max_body_bytes`` is replaced by its size (the reader answers 413). A client more than
        :data:`MAX_INBOX_FRAMES` frames ahead of the answers is disconnected."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self._abort()  # the client went away: end the turn and upstream
                return
            text = message.get("text")
            frame: _Frame = b"" if text is None else text  # a binary frame: only its kind counts
            if text is not None and len(text) > self.max_frame:  # chars <= bytes: a cheap check
                frame = len(text)
            try:
                inbox.send_nowait(frame)
            except trio.WouldBlock:
                self.runtime.metrics.expected_end(
                    "inbox_full", "websocket", client=self.client, frames=MAX_INBOX_FRAMES
                )
                self.close_code, self.close_reason = 1008, "too many messages not answered yet"
                self._abort()
                return

    async def _close_on_shutdown(self, shutting_down: trio.Event) -> None:
        """Server shutdown: end the turn with a retryable ``shutdown`` error, close with 1001."""
        await shutting_down.wait()
        self.closing = True
        turn = self.turn
        if turn is not None:
            if not turn.ending:
                turn.shutdown = True
                turn.ending = True
                turn.scope.cancel()
                await _stop_speech(turn)
            await turn.finished.wait()
        async with self.send_lock:
            with trio.CancelScope(shield=True) as scope, contextlib.suppress(Exception):
                self.sending.add(scope)
                await self.ws.close(code=1001, reason="server shutting down")
        self._abort()

    async def finish(self) -> None:
        """After :meth:`run`: if the server ended the session while the connection is open,
        close it with :attr:`close_code` (at most :data:`DRAIN_SECONDS`). Not a frozen client
        (its last send still waits: nothing more can go out)."""
        if self.ws.application_state == WebSocketState.CONNECTED and not self.frozen:
            with trio.move_on_after(DRAIN_SECONDS), contextlib.suppress(Exception):
                await self.ws.close(code=self.close_code, reason=self.close_reason)

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, obj: Mapping[str, Any], turn: _Turn | None = None) -> None:
        """Send one frame; text of ``turn`` counts as delivered once it is sent.

        Shielded, so a cancellation (interrupt) never leaves it unknown whether a frame went
        out. If the transport is gone, the session is cancelled.
        """
        await self._send_frames([_dumps(obj)])
        if turn is not None and obj.get("type") == "text":
            text = str(obj.get("text", ""))
            turn.delivered.append(text)
            turn.delivered_chars += len(text)

    async def _send_frames(self, frames: Sequence[Frame]) -> None:
        """Send ``frames`` (text or binary) one after the other, all of them or none (only a
        cancellation before the first one starts stops them). Shielded, as :meth:`_send`,
        except from the end of the session (see :meth:`_unshield_when_cancelled`)."""
        async with self.send_lock:
            push = _Push(self.ws, frames)
            with trio.CancelScope(shield=True) as scope:
                self.sending.add(scope)
                self._waiting_since = trio.current_time()
                try:
                    nursery = self.runtime.nursery
                    if nursery is None:
                        await push.run()
                    else:
                        # In the app's lifespan nursery: hypercorn shields its socket writes,
                        # so a send to a client that stopped reading cannot be cancelled; this
                        # task can stop waiting for it (the send deadline) and free the turn.
                        nursery.start_soon(push.run, name="llmpipe ws send")
                        await push.finished.wait()
                finally:
                    self._waiting_since = None
                    self.sending.discard(scope)
            if push.failure is not None:
                raise push.failure
            if push.gone:
                self._abort()
                await trio.lowlevel.checkpoint()  # raises Cancelled

    async def _send_event(self, turn: _Turn, event: Event) -> None:
        obj = event_to_dict(event)
        obj["turn"] = turn.number
        await self._send(obj, turn)

    # -- reading -------------------------------------------------------------------------------

    async def _read_loop(self, inbox: trio.MemoryReceiveChannel[_Frame]) -> None:
        async for text in inbox:
            if isinstance(text, bytes):
                await self._send(_protocol_error("frame", "expected a text frame with JSON"))
                continue
            if isinstance(text, int):
                await self._send(
                    _protocol_error("frame", f"at most {self.max_frame} bytes", status=413)
                )
                continue
            try:
                body = decode_json(text)
            except RequestError as exc:
                await self._send({"type": "error", **exc.to_json()})
                continue
            if not isinstance(body, dict):
                await self._send(_protocol_error("body", "expected a JSON object"))
                continue
            kind = body.get("type")
            if kind == "ping":
                pong: dict[str, Any] = {"type": "pong"}
                if "id" in body:
                    pong["id"] = body["id"]
                await self._send(pong)
            elif kind == "interrupt":
                await self._interrupt()
            elif kind == "request":
                await self._request(body)
            else:
                await self._send(
                    _protocol_error("type", "expected 'request', 'interrupt' or 'ping'")
                )

    async def _interrupt(self) -> None:
        turn = self.turn
        if turn is None or turn.ending:
            return  # nothing running, or its end is already on the way
        turn.interrupted = True
        turn.ending = True
        turn.scope.cancel()
        await _stop_speech(turn)

    async def _request(self, body: dict[str, Any]) -> None:
        previous = self.turn
        if self.closing:
            await self._send(_SHUTTING_DOWN)
            return
        if previous is not None and not previous.ending:
            await self._send(
                _protocol_error(
                    "type", "a turn is in progress: wait for its end or interrupt it", status=409
                )
            )
            return
        fields = {k: v for k, v in body.items() if k not in ("type", "reset", "speech")}
        reset = body.get("reset", False)
        if not isinstance(reset, bool):
            await self._send(_protocol_error("reset", "expected true or false"))
            return
        try:
            request = StreamRequest.from_json(fields, providers=self.runtime.config.providers)
            speech = None if body.get("speech") is None else SpeechRequest.from_json(body["speech"])
        except RequestError as exc:
            await self._send({"type": "error", **exc.to_json()})
            return
        engine = None
        if speech is not None:
            try:  # the first one loads the library: not in the event loop
                engine = await trio.to_thread.run_sync(_espeak, speech)
            except MissingExtraError as exc:
                await self._send(_protocol_error("speech", str(exc), status=501))
                return
            if self.closing:
                await self._send(_SHUTTING_DOWN)
                return
        self.turns += 1
        turn = _Turn(self.turns, request, reset, previous, engine)
        self.turn = turn  # synchronously: the next frame already sees it
        assert self.nursery is not None
        self.nursery.start_soon(self._run_turn, turn, name=f"llmpipe ws turn {turn.number}")

    # -- a turn --------------------------------------------------------------------------------

    async def _run_turn(self, turn: _Turn) -> None:
        try:
            with turn.scope:
                if turn.previous is not None:
                    await turn.previous.finished.wait()
                    turn.previous = None
                if turn.reset:
                    self.history.clear()
                request = attrs.evolve(
                    turn.request, messages=(*self.history, *turn.request.messages)
                )
                await self._stream(turn, request)
            if turn.shutdown:
                self._remember(turn, failed=True)
                shutdown = Error(
                    kind="shutdown",
                    message="the server is shutting down",
                    retryable=True,
                    partial_chars=turn.delivered_chars,
                )
                await self._send_event(turn, shutdown)
            elif turn.interrupted:
                self._remember(turn)
                interrupted: dict[str, Any] = {
                    "type": "interrupted",
                    "turn": turn.number,
                    "delivered_chars": turn.delivered_chars,
                }
                if turn.engine is not None:
                    heard = _heard(turn)
                    interrupted |= {"heard": heard.text, "heard_exact": heard.exact}
                await self._send(interrupted)
        finally:
            turn.finished.set()
            if self.turn is turn:
                self.turn = None

    async def _stream(self, turn: _Turn, request: StreamRequest) -> None:
        """Run the pipeline and send its events; inside ``turn.scope``."""
        runtime = self.runtime
        record = begin_stream(runtime, "live", "/v1/ws", request)
        reason: StreamReason = "consumer_gone"
        audio = None
        end: Event | None = None  # a speech turn's terminal event, sent once the audio played
        try:
            with runtime.admit(self.client):  # the app's stream slot (per-client and total limits)
                async with runtime.factory(request) as producer:
                    routes: list[Route] = []
                    if turn.engine is not None:
                        audio = _AudioFrames(self, turn)
                        turn.speaker = _speaker(turn.engine, audio)
                        runtime.metrics.live.speakers.add(turn.speaker)
                        routes.append(Route(turn.speaker, policy="coalesce", name="speaker"))
                    pipeline = Pipeline(producer, sinks=routes, heartbeat_interval=self.heartbeat)
                    async with runtime.live_events(pipeline, request) as events:
                        turn.events = events
                        async for event in events:
                            if is_terminal(event):
                                reason = "error" if isinstance(event, Error) else "done"
                                if isinstance(event, Error):
                                    record.fail(event.kind)
                                if turn.engine is not None:
                                    end = event  # the speech goes on: still interruptible
                                    continue
                                turn.ending = True
                                self._remember(turn, failed=isinstance(event, Error))
                            await self._send_event(turn, event)
                            if isinstance(event, TextDelta):
                                runtime.metrics.sent(record, 1, 1, len(event.text))
                            else:
                                runtime.metrics.sent(record, 1, 0, 0)
                    # Leaving the block waited for the pipeline: the speaker has played it all.
                if end is not None and not turn.ending:
                    turn.ending = True
                    self._remember(turn, failed=isinstance(end, Error))
                    if audio is not None:
                        await audio.flush()
                    await self._send_event(turn, end)
                    runtime.metrics.sent(record, 1, 0, 0)
        except Exception as exc:
            if turn.ending:
                return  # interrupted, shut down, or the terminal event already went out
            turn.ending = True
            self._remember(turn, failed=True)
            reason = "error"
            # A refusal (the stream limits) is answered from the server's error table.
            failure = runtime.refuse(exc).event() if isinstance(exc, Refused) else error_event(exc)
            record.fail(failure.kind)
            await self._send_event(turn, failure)
        finally:
            turn.events = None
            if turn.interrupted:
                reason = "cancelled"
            if turn.frozen is not None:
                reason = "consumer_gone"
                if turn.frozen == "overflow":
                    record.fail("overflow")
            if reason in ("cancelled", "consumer_gone"):
                why = "interrupted" if turn.interrupted else "shutdown" if turn.shutdown else None
                runtime.metrics.expected_end(
                    why or "client_gone",
                    "websocket_turn",
                    client=self.client,
                    turn=turn.number,
                    delivered_chars=turn.delivered_chars,
                )
            if turn.speaker is not None:
                runtime.metrics.live.speakers.discard(turn.speaker)
                runtime.metrics.speech_ended(record, turn.speaker.statistics())
            runtime.metrics.end_stream(record, reason)

    def _remember(self, turn: _Turn, *, failed: bool = False) -> None:
        """Append the turn and the answer as delivered (a speech turn: as heard) to the
        history, then bound it."""
        answer = _heard(turn).text if turn.engine is not None else "".join(turn.delivered)
        if failed and not answer:
            return
        self.history.extend(dict(m) for m in turn.request.messages)
        if answer:
            self.history.append({"role": "assistant", "content": answer})
        self.history = trim_history(self.history)


@attrs.define(eq=False)
class _Push:
    """One :meth:`_Session._send_frames`: its frames sent in order, then ``finished`` set;
    ``gone`` if the transport failed, ``failure`` for any other error (re-raised by the
    waiter, never into the lifespan nursery)."""

    ws: WebSocket
    frames: Sequence[Frame]
    finished: trio.Event = attrs.Factory(trio.Event)
    gone: bool = False
    failure: Exception | None = None

    async def run(self) -> None:
        try:
            for frame in self.frames:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_text(frame)
        except (WebSocketDisconnect, OSError, trio.BrokenResourceError):
            self.gone = True
        except Exception as exc:
            self.failure = exc
        finally:
            self.finished.set()


# -- speech ------------------------------------------------------------------------------------


def _espeak(speech: SpeechRequest) -> SpeechEngine:
    """The engine of a speech turn (:class:`pipeline.MissingExtraError` without the ``speech``
    extra). Loading the library is once per process and quick; later calls only build it."""
    return EspeakEngine(voice=speech.voice, rate=speech.rate)


def _speaker(engine: SpeechEngine, audio: _AudioFrames) -> Speaker:
    """The speaker of one speech turn: markdown cleaned as ``llmpipe speak`` does, played on
    trio's clock into ``audio`` (so it goes out at playback speed)."""
    cleaner = SpeakableStream()
    return Speaker(
        _WordTimeline(engine, audio.words),
        player=Player(output=audio),
        transform=lambda sentence: cleaner.feed(sentence).text,
    )


def _heard(turn: _Turn) -> HeardText:
    """What the listener of a speech turn heard (nothing before its speaker ran)."""
    return turn.speaker.heard() if turn.speaker is not None else HeardText("")


async def _stop_speech(turn: _Turn) -> None:
    """Barge-in: playback stops at this instant, so what was heard is fixed now."""
    if turn.speaker is not None:
        await turn.speaker.interrupt()


@attrs.define(eq=False)
class _WordTimeline:
    """A :class:`SpeechEngine` that also lists each word it marks as (its first sample on the
    turn's audio, the word as spoken) in ``words``, in order; the audio and marks are the
    engine's. Entries are added as the speaker takes the chunk (so they never outrun the audio
    they point into): at most the audio queued ahead of playback holds."""

    engine: SpeechEngine
    words: deque[tuple[int, str]]
    samples: int = 0  # the audio given so far, all utterances of the turn

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    @property
    def word_marks(self) -> bool:
        return self.engine.word_marks

    async def synthesize(self, text: str, emit: EmitAudio, /) -> None:
        base = self.samples

        async def emit_words(chunk: AudioChunk) -> None:
            await emit(chunk)
            self.samples += chunk.samples
            for mark in chunk.marks:
                self.words.append((base + mark.sample, text[mark.start : mark.end]))

        await self.engine.synthesize(text, emit_words)


@attrs.define(eq=False)
class _AudioFrames:
    """The output of a speech turn's player: each frame it plays goes to the client as one
    binary frame (the first preceded by ``audio_format``), followed by the ``word`` frames of
    the words whose first sample is in it. ``sent`` counts the samples sent."""

    session: _Session
    turn: _Turn
    words: deque[tuple[int, str]] = attrs.Factory(deque)
    sent: int = 0

    async def write(self, chunk: AudioChunk, /) -> None:
        if not chunk.samples:
            await trio.lowlevel.checkpoint()
            return
        frames: list[Frame] = []
        if not self.sent:
            frames.append(
                _dumps(
                    {
                        "type": "audio_format",
                        "turn": self.turn.number,
                        "encoding": "pcm_s16le",
                        "sample_rate": chunk.sample_rate,
                        "channels": 1,
                    }
                )
            )
        frames.append(chunk.pcm)
        self.sent += chunk.samples
        frames += self._words(self.sent)
        await self.session._send_frames(frames)

    def _words(self, before: int | None) -> list[Frame]:
        out: list[Frame] = []
        while self.words and (before is None or self.words[0][0] < before):
            sample, text = self.words.popleft()
            word = {"type": "word", "turn": self.turn.number, "text": text, "sample": sample}
            out.append(_dumps(word))
        return out

    async def flush(self) -> None:
        """After the speech: the words left (marked at the very end of the audio)."""
        await self.session._send_frames(self._words(None))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def websocket_endpoint(runtime: AppRuntime, websocket: WebSocket) -> None:
    """The ``/v1/ws`` endpoint of the app whose runtime is ``runtime`` (mount it with
    ``WebSocketRoute("/v1/ws", partial(websocket_endpoint, runtime))``).

    Checks the page's origin, the bearer token, the subprotocols and the client's connection
    limit, accepts the connection and serves turns until the client disconnects; see the
    module docstring for the protocol. Returns when the client has gone and every task of the
    connection (the turn, its pipeline, the upstream request) has been closed.
    """
    with contextlib.ExitStack() as stack:
        try:
            check_origin(websocket, runtime.config.cors_origins)
            runtime.check_auth(_auth_headers(websocket))
            chosen = _subprotocol(websocket)
            client = websocket.client.host if websocket.client else "unknown"
            stack.enter_context(runtime.admit_websocket(client))
        except (Refused, RequestError) as exc:
            await _deny(websocket, runtime.refuse(exc))
            return
        session = _Session(websocket, runtime)
        await websocket.accept(subprotocol=chosen)
        await session.run()
        await session.finish()


def check_origin(websocket: WebSocket, allowed: Sequence[str]) -> None:
    """:class:`Forbidden` unless the handshake comes from the page's own origin (the
    ``Origin``'s host and port are the ``Host`` header's), from one of ``allowed``
    (``--cors-origin``; ``"*"`` allows any), or from a client that is not a web page (no
    ``Origin`` header: browsers always send one). A WebSocket is not subject to CORS: without
    this, any page a user visits could run turns on this server and read the answers."""
    origin = websocket.headers.get("origin")
    if origin is None or "*" in allowed or origin in allowed:
        return
    scheme, _, netloc = origin.partition("://")
    host = websocket.headers.get("host", "")
    default = {"http": ":80", "https": ":443"}.get(scheme.lower())
    if default is not None and _without(netloc, default) == _without(host, default):
        return
    raise Forbidden(
        f"a page from the origin {origin[:200]!r} may not open this WebSocket (allowed: the "
        "page's own origin and --cors-origin ones)",
        field="Origin",
    )


def _without(netloc: str, port: str) -> str:
    netloc = netloc.lower()
    return netloc.removesuffix(port) if netloc.endswith(port) else netloc


def _subprotocol(websocket: WebSocket) -> str | None:
    """The subprotocol to select: :data:`SUBPROTOCOL` when offered, else none. Never a
    ``bearer.<token>`` one (the response header would echo the token): offering that one
    without ``llmpipe`` is refused (:class:`RequestError`), as a browser would fail the
    connection anyway when the server selects none of the offered."""
    offered = list(websocket.scope.get("subprotocols") or ())
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    if any(p.startswith(BEARER_SUBPROTOCOL_PREFIX) for p in offered):
        raise RequestError(
            "Sec-WebSocket-Protocol",
            f"offer {SUBPROTOCOL!r} with the bearer.<token> subprotocol: "
            f'new WebSocket(url, ["{SUBPROTOCOL}", "bearer." + token])',
        )
    return None


@attrs.frozen
class WebSocketApp:
    """The ``/v1/ws`` route as a raw ASGI app: :func:`websocket_endpoint`, then a drain.

    Hypercorn hands the client's frames to the app through a small queue (10) and stops reading
    the socket while it is full, even after the app has returned or seen a disconnect (it goes
    on handing over the frames it had already read). A client that sent more than that (a flood
    of pings) would so pin its connection, and the shutdown until the grace runs out. So once
    the session has ended, the frames still coming are read and dropped until the client has
    been quiet for :data:`DRAIN_QUIET`, for at most :data:`DRAIN_SECONDS`."""

    runtime: AppRuntime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await websocket_endpoint(self.runtime, WebSocket(scope, receive, send))
        with trio.move_on_after(DRAIN_SECONDS):
            while True:
                with trio.move_on_after(DRAIN_QUIET) as quiet:
                    await receive()
                if quiet.cancelled_caught:
                    return


def _auth_headers(websocket: WebSocket) -> Mapping[str, str]:
    """The request's headers, with a ``bearer.<token>`` subprotocol standing in for a missing
    ``Authorization`` header (see the module docstring)."""
    if "authorization" in websocket.headers:
        return websocket.headers
    for protocol in websocket.scope.get("subprotocols") or ():
        if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX):
            token = protocol[len(BEARER_SUBPROTOCOL_PREFIX) :]
            return {**websocket.headers, "authorization": f"Bearer {token}"}
    return websocket.headers


async def _deny(websocket: WebSocket, reply: ErrorReply) -> None:
    """Refuse the handshake: the HTTP answer (e.g. 401) when the server supports WebSocket
    denial responses, else a close before accept (HTTP 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(reply.response())
    else:
        await websocket.close(code=1008)
