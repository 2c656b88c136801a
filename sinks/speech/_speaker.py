"""The speaker: a sink that speaks a pipeline's text at the listener's pace and knows exactly
what was heard.

Tasks (one nursery, inside :meth:`Speaker.consume`)::

    events ─► intake ──(sentences, ≤ max_pending_chars)─► synthesis ──(audio, ≤ high s)─► playback
              SentenceBuffer                              engine.synthesize(batch, emit)  outputs,
              (transform per sentence)                                                    player

* **intake** reads the events, cuts the text into sentences with
  :class:`pipeline.text.SentenceBuffer` (its first piece may be a clause, see
  ``first_clause_min_chars``) and queues them. While more than ``max_pending_chars`` characters
  wait it stops reading, so the channel that feeds the sink fills and the producer blocks: the
  backpressure reaches the model through the core's channels and the speaker never buffers text
  without bound. ``Done`` or ``Error`` end the text: what was received is still spoken, then
  :meth:`~Speaker.consume` returns.
* **synthesis** gives batches of sentences to the engine, one request at a time.
* **playback** writes each chunk to the ``outputs`` (WAV, raw PCM) and then to the ``player``,
  the output that plays in real time (:class:`PlaybackClock`); the player's position says what
  was heard. The default player is a silent :class:`Player` on trio's clock.

Pacing is by the audio queued ahead of playback (synthesised, not yet played), not by text. The
first piece (a clause with the fast path) goes to the engine at once. After that the synthesis
waits while more than ``low`` seconds are queued ahead (``ahead_seconds=(low, high)``); below
that it sends, as one request, the waiting sentences until they should bring the queue to
``high`` seconds (seconds per character are estimated from the audio synthesised so far): at
least one sentence, whole sentences (the last one may cross ``high``), at most
``max_batch_chars``. The engine's ``emit`` waits while more than ``high`` seconds are queued, so
the audio held is bounded too. An engine faster than real time is therefore never starved (a
request goes out while ``low`` seconds are still to play) and never flooded (few, large
requests). ``high`` is the trade-off between engine requests and text paid for but not heard
at a barge-in: the text sent ahead of the listener is at most about ``high`` seconds of speech
and one sentence (``benchmarks/SPEECH.md`` measures requests per minute against ``high``).

What was heard: each utterance (one engine request) keeps its text as sent to the engine, the
original text of each sentence in it, its first sample on the speaker's timeline (the samples it
gave the player, counted from the start of :meth:`~Speaker.consume`) and the engine's word
marks. :meth:`Speaker.heard` takes the player's position and returns the original text of the
whole words whose audio ended at or before it; a word ends where the next word's mark starts,
or at the end of its utterance. A sentence whose words were all heard counts whole, with the
whitespace after it. An engine without marks (``word_marks`` false) is estimated in proportion
to the characters, and the answer says so (``HeardText.exact`` is false). Utterances that have
played entirely are reduced to their original text, so the memory is the heard text itself.

Barge-in: :meth:`Speaker.interrupt` reads the player's position at the moment it is called,
stops playback (the internal clock stops at once; a real device within one frame, 20 ms),
drops the queued text and audio, cancels the synthesis and, unless
``keep_generation_on_interrupt``, makes :meth:`~Speaker.consume` raise
:class:`pipeline.ConsumerGone`, so that the pipeline cancels the producer and closes the
upstream request. What was heard is decided by the playback clock alone: the player's position
is a function of ``trio.current_time()``, so an interrupt at the very instant a sentence ends
counts that sentence as heard whichever task trio happens to run first, and never a word that
had not finished.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol, runtime_checkable

import attrs
import trio

from pipeline import (
    ConfigError,
    ConsumerGone,
    EventReceiver,
    TextDelta,
    is_terminal,
    lone_exception_unwrapped,
)
from pipeline.text import SentenceBuffer

from ._audio import Player
from ._types import AudioChunk, AudioSink, SpeechEngine, WordMark

__all__ = [
    "Conversation",
    "HeardText",
    "Message",
    "PlaybackClock",
    "Speaker",
    "SpeakerStatistics",
]


_FEED_CHARS: Final = 256  # text given to the SentenceBuffer at once (a coalesced delta is big)
_SECONDS_PER_CHAR: Final = 0.07  # estimate before the first utterance is complete
_RECHECK: Final = 0.005  # shortest wait while audio drains (for players that count by frames)
_WORD: Final = re.compile(r"\S+")
_TOKEN: Final = re.compile(r"\w+")
_ALIGN_WINDOW: Final = 200  # how far a spoken word is looked for in its original text
_HEARD_PARTS: Final = 256  # heard sentences kept apart before they are joined into one string


@runtime_checkable
class PlaybackClock(AudioSink, Protocol):
    """What the speaker needs of the output that plays in real time (:class:`Player` is one).

    ``write`` plays a chunk (it may return up to one frame, at most 20 ms, before the chunk has
    finished). ``played_samples`` counts the samples played so far over all writes at
    ``trio.current_time()``: a function of the clock, not of which task trio ran first (a chunk
    that ends at time ``t`` counts as played at ``t``). ``stop()`` ends playback within one
    frame and freezes the count; ``resume()`` lets the next write play on a fresh schedule;
    ``idle()`` says that the next gap is intended silence (the answer ended), not an underrun.
    """

    @property
    def played_samples(self) -> int: ...

    def stop(self) -> None: ...

    def resume(self) -> None: ...

    def idle(self) -> None: ...


@attrs.frozen
class HeardText:
    """What the listener heard: the original text (markup and punctuation as the model wrote
    it) of the whole words whose audio had played. ``exact`` is false when a word boundary was
    estimated in proportion to the characters (an engine without word marks)."""

    text: str
    exact: bool = True


@attrs.frozen
class SpeakerStatistics:
    """A snapshot of one :class:`Speaker`. Seconds are seconds of audio unless said otherwise.

    ``time_to_first_audio`` is clock time from the start of :meth:`Speaker.consume` to the
    first audio handed to the outputs. ``chars_spoken`` counts the characters given to the
    engine (after ``transform``); ``chars_waiting`` the original text queued for synthesis
    (``max_chars_waiting`` its high-water mark). ``seconds_ahead`` is the audio synthesised and
    not yet played. ``underruns`` counts the times playback ran dry before the end, after the
    first audio (``underrun_seconds``: clock time spent dry). ``realtime_factor`` is the
    engine's synthesis time per second of audio (time blocked in ``emit`` not counted).
    ``first_audio_at`` is the ``trio.current_time()`` of the first audio (to measure it from
    an earlier moment, such as a request's arrival).
    """

    time_to_first_audio: float | None
    first_audio_at: float | None
    engine_requests: int
    chars_spoken: int
    chars_waiting: int
    max_chars_waiting: int
    audio_seconds: float
    played_seconds: float
    seconds_ahead: float
    max_seconds_ahead: float
    underruns: int
    underrun_seconds: float
    realtime_factor: float | None
    interrupted: bool


@attrs.define(eq=False)
class _Utterance:
    """One engine request: (original, spoken) per sentence, and its audio on the timeline."""

    pieces: list[tuple[str, str]]
    spoken: str
    first: int
    samples: int = 0
    complete: bool = False
    marks: list[WordMark] = attrs.Factory(list)

    @property
    def end(self) -> int | None:
        return self.first + self.samples if self.complete else None


def _check_config(speaker: Speaker) -> None:
    low, high = speaker.ahead_seconds
    if not 0 <= low < high:
        raise ConfigError(f"ahead_seconds: expected 0 <= low < high, got {speaker.ahead_seconds}")
    if speaker.max_batch_chars < 1 or speaker.max_pending_chars < 1:
        raise ConfigError("max_batch_chars and max_pending_chars must be >= 1")
    if speaker.first_clause_min_chars is not None and speaker.first_clause_min_chars < 1:
        raise ConfigError("first_clause_min_chars must be None or >= 1")
    if speaker.first_piece_max_chars is not None and speaker.first_piece_max_chars < 1:
        raise ConfigError("first_piece_max_chars must be None or >= 1")


@attrs.define(eq=False, kw_only=True)
class Speaker:
    """A :class:`pipeline.Sink` that speaks the text of one stream (see the module docstring).

    ``engine`` synthesises; ``player`` plays in real time and gives the position that decides
    what was heard (default: a silent clock on trio's clock); ``outputs`` also receive every
    chunk, just before the player plays it (a WAV file, raw PCM). The speaker closes neither.
    ``transform`` turns each sentence into the text the engine speaks (markdown cleaning); what
    was heard is reported in the original text. ``first_clause_min_chars`` lets the first piece
    end at a clause boundary once it is that long, and ``first_piece_max_chars`` cuts a first
    sentence without one at its last word before that length (``None`` for both: whole
    sentences), so the first audio need not wait for the model to finish a long sentence.
    ``ahead_seconds=(low, high)``: see the pacing in the module docstring; ``high`` bounds the
    audio held. ``max_pending_chars`` bounds the sentences waiting for synthesis (it may go
    over by what one 256-character slice of a delta completes); the text in hand besides is the
    delta being cut into sentences (at most the channel's ``max_bytes``, a coalesced delta) and
    that of the audio queued ahead. ``max_batch_chars`` bounds one request (a longer sentence
    is cut at a space).

    A speaker speaks one stream: :meth:`consume` runs once. Any task may call
    :meth:`interrupt`, :meth:`heard` and :meth:`statistics` at any time.
    """

    engine: SpeechEngine = attrs.field(kw_only=False)
    outputs: Sequence[AudioSink] = ()
    player: PlaybackClock = attrs.Factory(Player)
    transform: Callable[[str], str] | None = None
    first_clause_min_chars: int | None = 20
    first_piece_max_chars: int | None = 40
    ahead_seconds: tuple[float, float] = (1.5, 15.0)
    max_batch_chars: int = 500
    max_pending_chars: int = 1000
    keep_generation_on_interrupt: bool = False
    name: str = "speaker"

    _started_at: float | None = attrs.field(default=None, init=False)
    _base: int = attrs.field(default=0, init=False)
    _sentences: deque[tuple[str, str]] = attrs.field(factory=deque, init=False)
    _pending: int = attrs.field(default=0, init=False)
    _max_pending: int = attrs.field(default=0, init=False)
    _text_done: bool = attrs.field(default=False, init=False)
    _text_lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _room_lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _audio: deque[AudioChunk] = attrs.field(factory=deque, init=False)
    _audio_lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _synthesis_done: bool = attrs.field(default=False, init=False)
    _utterances: deque[_Utterance] = attrs.field(factory=deque, init=False)
    _heard_parts: list[str] = attrs.field(factory=list, init=False)
    _synthesised: int = attrs.field(default=0, init=False)  # samples on the timeline
    _done_samples: int = attrs.field(default=0, init=False)  # of complete requests
    _done_chars: int = attrs.field(default=0, init=False)
    _synthesis_seconds: float = attrs.field(default=0.0, init=False)
    _requests: int = attrs.field(default=0, init=False)
    _chars_spoken: int = attrs.field(default=0, init=False)
    _max_ahead: int = attrs.field(default=0, init=False)
    _first_audio_at: float | None = attrs.field(default=None, init=False)
    _written: int = attrs.field(default=0, init=False)  # samples given to the player
    _underruns: int = attrs.field(default=0, init=False)
    _underrun_seconds: float = attrs.field(default=0.0, init=False)
    _stop_position: int | None = attrs.field(default=None, init=False)
    _gone: bool = attrs.field(default=False, init=False)
    _intake_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _speech_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _speech_done: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        _check_config(self)

    # -- public ----------------------------------------------------------------------------

    @property
    def interrupted(self) -> bool:
        """True once :meth:`interrupt` stopped the speech before its end."""
        return self._stop_position is not None

    async def consume(self, events: EventReceiver, /) -> None:
        """Speak the text of ``events`` (see the module docstring); returns once it has been
        played. Raises :class:`pipeline.ConsumerGone` when :meth:`interrupt` stopped it before
        the end of the stream (unless ``keep_generation_on_interrupt``: then it reads the rest
        of the stream without speaking it). On cancellation the speech stops where it is."""
        if self._started_at is not None:
            raise RuntimeError("a Speaker speaks one stream; build one per answer")
        self._started_at = trio.current_time()
        self.player.resume()  # a player shared by turns may have been stopped by a barge-in
        self._base = self.player.played_samples
        # An engine or output failing in one of the tasks is raised as itself, as
        # Pipeline.open does (nested groups of one come from the nested nurseries).
        with lone_exception_unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._intake, events)
                nursery.start_soon(self._speak)
        if self._gone:
            raise ConsumerGone(f"{self.name}: interrupted")

    async def interrupt(self) -> HeardText:
        """Barge-in: stop speaking now and return what was heard (see the module docstring).

        Playback stops at the position the player has at the moment of the call; queued text
        and audio are dropped and the synthesis is cancelled. Returns once playback has
        stopped. Idempotent; after the speech ended normally it only returns what was heard.
        """
        if self._stop_position is None and not self._speech_done.is_set():
            self._stop_position = self._position()
            self.player.stop()
            self._speech_scope.cancel()
            self._sentences.clear()
            self._pending = 0
            self._audio.clear()
            self._room_lot.unpark_all()
            if not self.keep_generation_on_interrupt and not self._text_done:
                self._gone = True
                self._intake_scope.cancel()
        if self._started_at is not None:
            await self._speech_done.wait()
        else:
            await trio.lowlevel.checkpoint()
        return self.heard()

    def heard(self) -> HeardText:
        """The original text of the whole words heard so far (after :meth:`interrupt`: up to
        the stop). After a normal end it is everything the stream said."""
        position = self._position()
        parts = list(self._heard_parts)
        exact = True
        for u in self._utterances:
            end = u.end
            if end is not None and end <= position:
                parts.extend(original for original, _ in u.pieces)
                continue
            if position > u.first:
                spoken_end, estimated = self._heard_in(u, position - u.first)
                exact = not estimated
                parts.append(_original_prefix(u.pieces, spoken_end))
            break
        return HeardText("".join(parts), exact)

    def statistics(self) -> SpeakerStatistics:
        """A snapshot of the counters; cheap, any time."""
        rate = self.engine.sample_rate
        first = self._first_audio_at
        return SpeakerStatistics(
            time_to_first_audio=None
            if first is None or self._started_at is None
            else first - self._started_at,
            first_audio_at=first,
            engine_requests=self._requests,
            chars_spoken=self._chars_spoken,
            chars_waiting=self._pending,
            max_chars_waiting=self._max_pending,
            audio_seconds=self._synthesised / rate,
            played_seconds=self._position() / rate,
            seconds_ahead=self._ahead(),
            max_seconds_ahead=self._max_ahead / rate,
            underruns=self._underruns,
            underrun_seconds=self._underrun_seconds,
            realtime_factor=self._synthesis_seconds / (self._done_samples / rate)
            if self._done_samples
            else None,
            interrupted=self.interrupted,
        )

    # -- the timeline ----------------------------------------------------------------------

    def _position(self) -> int:
        """Samples of this speaker's audio played so far (frozen at an interrupt)."""
        if self._stop_position is not None:
            return self._stop_position
        if self._started_at is None:
            return 0
        return max(0, min(self._synthesised, self.player.played_samples - self._base))

    def _ahead(self) -> float:
        """Seconds of audio synthesised and not yet played."""
        if self._stop_position is not None:
            return 0.0
        return (self._synthesised - self._position()) / self.engine.sample_rate

    async def _drain_to(self, seconds: float) -> None:
        """Wait until at most ``seconds`` of audio are queued ahead of playback."""
        tolerance = 1 / self.engine.sample_rate
        # The queue drains with the clock (no task to signal it): sleep until it should have.
        while (excess := self._ahead() - seconds) > tolerance:  # noqa: ASYNC110
            await trio.sleep(max(excess, _RECHECK))

    def _seconds_per_char(self) -> float:
        if not self._done_chars:
            return _SECONDS_PER_CHAR
        return self._done_samples / self.engine.sample_rate / self._done_chars

    def _heard_in(self, u: _Utterance, local: int) -> tuple[int, bool]:
        """How far into ``u.spoken`` the words heard by sample ``local`` reach; and whether
        that was estimated."""
        if self.engine.word_marks:
            spoken_end = 0
            marks = u.marks
            for i, mark in enumerate(marks):
                if i + 1 < len(marks):
                    word_end: int | None = marks[i + 1].sample
                else:
                    word_end = u.samples if u.complete else None
                if word_end is None or word_end > local:
                    break
                spoken_end = mark.end
            return spoken_end, False
        rate = self.engine.sample_rate
        guess = len(u.spoken) * self._seconds_per_char() * rate
        total = u.samples if u.complete else max(u.samples, guess)
        chars = len(u.spoken) * local / total if total else 0
        spoken_end = 0
        for m in _WORD.finditer(u.spoken):
            if m.end() > chars:
                break
            spoken_end = m.end()
        return spoken_end, True

    # -- tasks -----------------------------------------------------------------------------

    async def _intake(self, events: EventReceiver) -> None:
        buffer = SentenceBuffer(
            first_fragment_min_chars=self.first_clause_min_chars,
            max_chars=max(16, self.max_batch_chars),
            first_fragment_max_chars=None
            if self.first_piece_max_chars is None
            else min(self.first_piece_max_chars, max(16, self.max_batch_chars)),
        )
        with self._intake_scope:
            async for event in events:
                if self._text_done:
                    continue  # after Done/Error: read to the end of the channel
                if isinstance(event, TextDelta):
                    text = event.text
                    for i in range(0, len(text), _FEED_CHARS):
                        if self.interrupted:
                            break  # keep_generation_on_interrupt: the rest is not spoken
                        for piece in buffer.feed(text[i : i + _FEED_CHARS]):
                            self._add(piece)
                        while self._pending > self.max_pending_chars and not self.interrupted:
                            await self._room_lot.park()
                elif is_terminal(event):
                    self._end_text(buffer)
            self._end_text(buffer)

    def _add(self, piece: str) -> None:
        if self.interrupted:
            return
        spoken = self.transform(piece) if self.transform is not None else piece
        self._sentences.append((piece, spoken))
        self._pending += len(piece)
        self._max_pending = max(self._max_pending, self._pending)
        self._text_lot.unpark_all()

    def _end_text(self, buffer: SentenceBuffer) -> None:
        if not self._text_done:
            for piece in buffer.flush():
                self._add(piece)
            self._text_done = True
            self._text_lot.unpark_all()

    async def _speak(self) -> None:
        try:
            with self._speech_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._synthesis)
                    nursery.start_soon(self._playback)
        finally:
            self._speech_done.set()

    async def _synthesis(self) -> None:
        low, high = self.ahead_seconds
        try:
            while True:
                while not self._sentences and not self._text_done:
                    await self._text_lot.park()
                if not self._sentences:
                    return
                if self._requests:
                    await self._drain_to(low)
                await self._synthesize(self._take_batch(high))
        finally:
            self._synthesis_done = True
            self._audio_lot.unpark_all()

    def _take_batch(self, high: float) -> list[tuple[str, str]]:
        """The next request: the first piece alone, later the sentences that should bring the
        audio queued ahead to ``high`` seconds (at least one, the last one may cross it, and
        ``max_batch_chars`` at most)."""
        batch = [self._sentences.popleft()]
        size = len(batch[0][1])
        if self._requests:
            target = (high - self._ahead()) / self._seconds_per_char()
            while (
                self._sentences
                and size < target
                and size + len(self._sentences[0][1]) <= self.max_batch_chars
            ):
                batch.append(self._sentences.popleft())
                size += len(batch[-1][1])
        self._pending -= sum(len(original) for original, _ in batch)
        self._room_lot.unpark_all()
        return batch

    async def _synthesize(self, pieces: list[tuple[str, str]]) -> None:
        spoken = "".join(s for _, s in pieces)
        u = _Utterance(pieces, spoken, self._synthesised)
        self._utterances.append(u)
        if not spoken.strip():
            u.complete = True  # nothing to say (a skipped code block): no request
            return
        high = self.ahead_seconds[1]
        self._requests += 1
        self._chars_spoken += len(spoken)
        blocked = 0.0

        async def emit(chunk: AudioChunk) -> None:
            nonlocal blocked
            await trio.lowlevel.checkpoint_if_cancelled()
            waited_from = trio.current_time()
            await self._drain_to(high)
            blocked += trio.current_time() - waited_from
            u.marks.extend(chunk.marks)
            u.samples += chunk.samples
            self._synthesised += chunk.samples
            self._max_ahead = max(self._max_ahead, self._synthesised - self._position())
            self._audio.append(chunk)
            self._audio_lot.unpark_all()

        started = trio.current_time()
        await self.engine.synthesize(spoken, emit)
        u.complete = True
        self._synthesis_seconds += trio.current_time() - started - blocked
        self._done_samples += u.samples
        self._done_chars += len(spoken)

    async def _playback(self) -> None:
        while True:
            while not self._audio:
                if self._synthesis_done:
                    # The player may still hold its last frame: the answer ends when it played.
                    rate = self.engine.sample_rate
                    while (left := self._written - self._position()) > 0:
                        await trio.sleep(left / rate)
                        if self._written - self._position() == left:
                            break  # stopped from outside: it will not play the rest
                    self.player.idle()  # the silence after the answer is not an underrun
                    return
                # When the player runs out of what it was given (it may still hold a frame).
                rate = self.engine.sample_rate
                dry_at = trio.current_time() + max(0, self._written - self._position()) / rate
                await self._audio_lot.park()
                late = trio.current_time() - dry_at
                if self._first_audio_at is not None and self._audio and late > 0.5 / rate:
                    self._underruns += 1
                    self._underrun_seconds += late
            chunk = self._audio.popleft()
            if self._first_audio_at is None and chunk.samples:
                self._first_audio_at = trio.current_time()
            for output in self.outputs:
                await output.write(chunk)
            self._written += chunk.samples
            await self.player.write(chunk)
            self._compact()

    def _compact(self) -> None:
        """Utterances that have played whole keep only their original text."""
        position = self._position()
        while self._utterances:
            end = self._utterances[0].end
            if end is None or end > position:
                return
            u = self._utterances.popleft()
            self._heard_parts.extend(original for original, _ in u.pieces)
            if len(self._heard_parts) > _HEARD_PARTS:
                # One string instead of many small ones (~50 bytes of overhead each): over an
                # hour-long answer the heard text is what is held, not its pieces.
                self._heard_parts[:] = ["".join(self._heard_parts)]


def _original_prefix(pieces: list[tuple[str, str]], spoken_end: int) -> str:
    """The original text of the words of ``pieces`` whose spoken text ends by ``spoken_end``
    (an offset in the concatenated spoken text). A piece whose words were all heard counts
    whole (with its whitespace); in the next, the text up to the last heard word and the
    punctuation or markup attached to it."""
    out: list[str] = []
    offset = 0
    for original, spoken in pieces:
        local = max(0, spoken_end - offset)
        if not spoken[local:].strip():
            out.append(original)
            offset += len(spoken)
            continue
        if local:
            out.append(original[: _original_end(original, spoken, local)])
        break
    return "".join(out)


def _original_end(original: str, spoken: str, local: int) -> int:
    """Where the words of ``spoken[:local]`` end in ``original``. Identical texts map one to
    one; otherwise (a transform rewrote the sentence) each spoken word is looked for, as a
    whole word, a little further on in the original: words the transform made up (a symbol
    spoken as a word) are skipped, never matched far ahead."""
    if original == spoken:
        end = local
    else:
        end = cursor = 0
        for token in _TOKEN.findall(spoken[:local]):
            pattern = re.compile(rf"\b{re.escape(token)}\b", re.IGNORECASE)
            m = pattern.search(original, cursor, cursor + _ALIGN_WINDOW + len(token))
            if m is not None:
                end = cursor = m.end()
    while end < len(original) and not original[end].isspace():
        end += 1  # the punctuation and markup attached to the last word
    return end


Role = Literal["system", "user", "assistant"]


@attrs.frozen
class Message:
    """One turn. ``interrupted``: an assistant turn cut short by barge-in (it holds only what
    was heard)."""

    role: Role
    content: str
    interrupted: bool = False


@attrs.define(eq=False)
class Conversation:
    """The history of a spoken conversation: the assistant's turns hold what the listener heard.

    After an interrupted answer that is the heard text (the words the model wrote but nobody
    heard are not in the history, so the model does not believe it said them); after a normal
    end it is the whole answer.
    """

    system: str | None = None
    _turns: list[Message] = attrs.field(factory=list, init=False)

    @property
    def messages(self) -> tuple[Message, ...]:
        """Every turn, the system prompt first (if any)."""
        head = (Message("system", self.system),) if self.system is not None else ()
        return (*head, *self._turns)

    def add_user(self, text: str) -> Message:
        message = Message("user", text)
        self._turns.append(message)
        return message

    def add_assistant(self, speaker: Speaker) -> Message:
        """Add the answer ``speaker`` spoke, as heard (call it once the speaker has ended)."""
        message = Message("assistant", speaker.heard().text, interrupted=speaker.interrupted)
        self._turns.append(message)
        return message

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as the chat APIs take them: ``[{"role": ..., "content": ...}]``."""
        return [{"role": m.role, "content": m.content} for m in self.messages]
