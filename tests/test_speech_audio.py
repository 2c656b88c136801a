"""The audio outputs: WAV file (atomic, exact header), raw PCM, and the player on trio's clock."""

from __future__ import annotations

import io
import os
import struct
import wave
from pathlib import Path

import pytest
import trio
import trio.testing

from pipeline import ConfigError, ConsumerGone
from sinks.speech import (
    AudioChunk,
    AudioSink,
    PcmWriter,
    PlaybackPosition,
    Player,
    PlayerStatistics,
    ScriptedSpeechEngine,
    WavWriter,
    WordMark,
)

RATE = 1000  # one sample a millisecond: times and sample counts read alike


async def tone(text: str = "Hello there, world.", rate: int = 22050) -> list[AudioChunk]:
    engine = ScriptedSpeechEngine(sample_rate=rate, tone_hz=440)
    chunks: list[AudioChunk] = []

    async def emit(chunk: AudioChunk) -> None:
        chunks.append(chunk)

    await engine.synthesize(text, emit)
    return chunks


def silence(seconds: float, first_sample: int = 0, rate: int = RATE) -> AudioChunk:
    return AudioChunk(bytes(round(seconds * rate) * 2), rate, first_sample)


class Recorder:
    """An AudioSink that keeps what it was given."""

    def __init__(self) -> None:
        self.chunks: list[AudioChunk] = []
        self.closed = False

    async def write(self, chunk: AudioChunk, /) -> None:
        self.chunks.append(chunk)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True


def test_every_output_is_an_audio_sink(tmp_path: Path) -> None:
    for sink in (WavWriter(tmp_path / "a.wav"), PcmWriter(io.BytesIO()), Player(), Recorder()):
        assert isinstance(sink, AudioSink)


# --- WAV ----------------------------------------------------------------------------------------


async def test_wav_holds_every_chunk_with_a_correct_header(tmp_path: Path) -> None:
    chunks = await tone()
    path = tmp_path / "out" / "speech.wav"
    async with WavWriter(path) as wav:
        for chunk in chunks:
            await wav.write(chunk)
        assert not path.exists()  # nothing under the final name until it is complete
    assert wav.completed
    assert wav.written_samples == sum(c.samples for c in chunks)
    assert os.listdir(path.parent) == ["speech.wav"]  # no temporary file left behind
    with wave.open(str(path), "rb") as r:
        assert (r.getnchannels(), r.getsampwidth(), r.getframerate()) == (1, 2, 22050)
        assert r.getnframes() == sum(c.samples for c in chunks)
        assert r.getnframes() / r.getframerate() == pytest.approx(sum(c.duration for c in chunks))
        assert r.readframes(r.getnframes()) == b"".join(c.pcm for c in chunks)
    data = path.read_bytes()
    riff, riff_size, wave_id = struct.unpack("<4sI4s", data[:12])
    assert (riff, wave_id, riff_size) == (b"RIFF", b"WAVE", len(data) - 8)
    assert data[36:40] == b"data"
    assert struct.unpack("<I", data[40:44])[0] == len(data) - 44


async def test_wav_without_audio_is_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    wav = WavWriter(path, sample_rate=16000)
    await wav.aclose()
    await wav.aclose()  # idempotent
    with wave.open(str(path), "rb") as r:
        assert (r.getnframes(), r.getframerate()) == (0, 16000)
    with pytest.raises(trio.ClosedResourceError):
        await wav.write(silence(0.1))


async def test_a_cancelled_wav_leaves_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "speech.wav"
    path.write_bytes(b"old")
    chunks = await tone()
    with trio.CancelScope() as scope:
        async with WavWriter(path) as wav:
            await wav.write(chunks[0])
            assert len(os.listdir(tmp_path)) == 2  # the old file and the temporary one
            scope.cancel()
            await wav.write(chunks[1])
    assert scope.cancelled_caught
    assert not wav.completed
    assert os.listdir(tmp_path) == ["speech.wav"]
    assert path.read_bytes() == b"old"


async def test_aclose_when_cancelled_discards_the_file(tmp_path: Path) -> None:
    path = tmp_path / "speech.wav"
    wav = WavWriter(path)
    with trio.CancelScope() as scope:
        try:
            await wav.write(silence(0.5))
            scope.cancel()
            await trio.sleep(1)
        finally:
            await wav.aclose()
    assert scope.cancelled_caught
    assert os.listdir(tmp_path) == []


async def test_a_wav_file_has_one_sample_rate(tmp_path: Path) -> None:
    path = tmp_path / "speech.wav"
    with pytest.raises(ConfigError, match="16000 Hz after audio at 1000 Hz"):
        async with WavWriter(path) as wav:
            await wav.write(silence(0.1))
            await wav.write(silence(0.1, rate=16000))
    assert os.listdir(tmp_path) == []


# --- raw PCM ------------------------------------------------------------------------------------


async def test_pcm_writer_writes_exactly_the_samples() -> None:
    chunks = await tone()
    out = io.BytesIO()
    async with PcmWriter(out) as pcm:
        for chunk in chunks:
            await pcm.write(chunk)
    assert out.getvalue() == b"".join(c.pcm for c in chunks)
    assert pcm.written_samples == len(out.getvalue()) // 2
    assert not out.closed  # the stream is not the writer's to close
    with pytest.raises(trio.ClosedResourceError):
        await pcm.write(chunks[0])


async def test_pcm_writer_to_a_closed_pipe_raises_consumer_gone() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "wb", buffering=0) as stream:
        pcm = PcmWriter(stream)
        with pytest.raises(ConsumerGone, match="pipe was closed"):
            await pcm.write(silence(0.1))
        with pytest.raises(ConsumerGone):  # still gone on the next write
            await pcm.write(silence(0.1))


async def test_pcm_writer_has_one_sample_rate() -> None:
    pcm = PcmWriter(io.BytesIO())
    await pcm.write(silence(0.1))
    with pytest.raises(ConfigError):
        await pcm.write(silence(0.1, rate=8000))


# --- the player ---------------------------------------------------------------------------------


async def play_in_background(
    nursery: trio.Nursery, player: Player, chunks: list[AudioChunk]
) -> float:
    """Write ``chunks`` to ``player`` in a task of ``nursery``; return once the first frame
    plays, with the time it started."""

    async def play() -> None:
        for chunk in chunks:
            await player.write(chunk)

    nursery.start_soon(play)
    await trio.testing.wait_all_tasks_blocked()
    return trio.current_time()


async def test_playing_n_seconds_takes_n_seconds(autojump_clock: trio.testing.MockClock) -> None:
    chunks = [silence(1.0, first_sample=i * RATE) for i in range(3)]
    start = trio.current_time()
    async with Player() as player:
        await player.write(chunks[0])
        # It returns once the last frame is on the loudspeaker: one frame (20 ms) ahead.
        assert trio.current_time() - start == pytest.approx(0.98)
        assert player.played_samples == 980
        for chunk in chunks[1:]:
            await player.write(chunk)
    assert trio.current_time() - start == pytest.approx(3.0)
    assert player.played_samples == 3000
    assert player.position == PlaybackPosition(chunks[2], 1000)
    assert player.position.sample == 3000
    assert player.statistics() == PlayerStatistics(
        played_samples=3000,
        played_seconds=3.0,
        underruns=0,
        underrun_seconds=0.0,
        started_at=start,
        stopped=False,
    )
    with pytest.raises(trio.ClosedResourceError):
        await player.write(chunks[0])


async def test_position_follows_the_clock_sample_by_sample(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunks = [silence(0.5, first_sample=i * 500) for i in range(4)]
    player = Player()
    assert player.position == PlaybackPosition(None, 0)
    assert player.started_at is None
    assert player.position.sample == 0
    async with trio.open_nursery() as nursery:
        start = await play_in_background(nursery, player, chunks)
        assert player.started_at == start
        for t in (0.0, 0.007, 0.25, 0.5, 0.777, 1.234, 1.99, 2.0):
            await trio.sleep_until(start + t)
            played = round(t * RATE)
            assert player.played_samples == played
            if played:  # at a boundary: the end of the chunk before
                i = (played - 1) // 500
                assert player.position == PlaybackPosition(chunks[i], played - 500 * i)
            else:
                assert player.position == PlaybackPosition(None, 0)
            assert player.position.sample == played


async def _feed(engine: ScriptedSpeechEngine, player: Player, text: str) -> None:
    """The engine synthesises into a small queue while the player plays from it."""
    send, receive = trio.open_memory_channel[AudioChunk](1)

    async def synthesize() -> None:
        async with send:
            await engine.synthesize(text, send.send)

    async with trio.open_nursery() as nursery, receive:
        nursery.start_soon(synthesize)
        async for chunk in receive:
            await player.write(chunk)


async def test_no_underrun_when_the_engine_is_faster_than_real_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = ScriptedSpeechEngine(sample_rate=RATE, chunk_seconds=0.1, realtime_factor=0.5)
    player = Player()
    start = trio.current_time()
    await _feed(engine, player, "a fairly long sentence to speak " * 5)
    await player.aclose()
    played = player.statistics()
    assert played.underruns == 0
    assert played.underrun_seconds == 0
    assert played.started_at is not None
    assert played.started_at == pytest.approx(start + 0.05)  # the first chunk's synthesis
    assert trio.current_time() == pytest.approx(played.started_at + played.played_seconds)


async def test_underruns_are_counted_when_the_engine_is_slower_than_real_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = ScriptedSpeechEngine(
        sample_rate=RATE, seconds_per_char=0.1, gap=0, chunk_seconds=0.1, realtime_factor=1.5
    )
    player = Player()
    await _feed(engine, player, "abcdef")  # six chunks, each ready 0.05 s after the last ended
    await player.aclose()
    assert player.played_samples == 600
    assert player.underruns == 5
    assert player.underrun_seconds == pytest.approx(5 * 0.05)
    assert player.statistics().played_seconds == 0.6


async def test_a_gap_after_idle_is_not_an_underrun(
    autojump_clock: trio.testing.MockClock,
) -> None:
    player = Player()
    await player.write(silence(0.1))
    player.idle()
    await trio.sleep(1)
    await player.write(silence(0.1))
    assert player.underruns == 0
    await trio.sleep(1)  # no idle() this time
    await player.write(silence(0.1))
    assert player.underruns == 1
    assert player.underrun_seconds == pytest.approx(1 - 0.02)
    player.idle()  # audio arriving in time continues the schedule all the same
    start = trio.current_time()
    await player.write(silence(0.1))
    await player.aclose()
    assert trio.current_time() - start == pytest.approx(0.1 + 0.02)
    assert player.played_samples == 400


async def test_stop_mid_chunk_stops_within_a_frame_and_nothing_plays_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    output = Recorder()
    player = Player(output=output)
    chunk = silence(1.0)
    returned_at: list[float] = []
    async with trio.open_nursery() as nursery:

        async def play() -> None:
            await player.write(chunk)
            returned_at.append(trio.current_time())
            await player.write(silence(1.0, first_sample=1000))  # after stop: plays nothing
            returned_at.append(trio.current_time())

        nursery.start_soon(play)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await trio.sleep(0.5054)
        player.stop()
        player.stop()  # idempotent
        stopped_at = trio.current_time()
    assert returned_at == [stopped_at, stopped_at]  # the write in progress returned at once
    played = player.played_samples
    assert played == 505  # the clock's position, to the nearest sample
    assert abs(played - (stopped_at - start) * RATE) <= 0.02 * RATE
    assert player.position == PlaybackPosition(chunk, 505)
    await trio.sleep(5)
    assert player.played_samples == 505
    assert player.statistics().stopped
    before = trio.current_time()
    await player.write(silence(1.0))
    await player.aclose()
    assert trio.current_time() == before
    assert player.played_samples == 505
    # The loudspeaker was given the frames up to the one playing at the stop, no more.
    assert sum(c.samples for c in output.chunks) == 520
    assert [c.first_sample for c in output.chunks] == list(range(0, 520, 20))
    assert not output.closed  # the player does not close its output


@pytest.mark.parametrize("attempt", range(20))  # trio shuffles who runs first at an instant
async def test_a_stop_exactly_at_a_chunk_boundary_is_decided_by_the_clock(
    autojump_clock: trio.testing.MockClock, attempt: int
) -> None:
    chunks = [silence(0.1, first_sample=100 * i) for i in range(5)]
    player = Player()
    async with trio.open_nursery() as nursery:
        start = await play_in_background(nursery, player, chunks)
        await trio.sleep_until(start + 0.3)
        player.stop()
    assert player.played_samples == 300
    assert player.position == PlaybackPosition(chunks[2], 100)
    await trio.sleep(1)
    assert player.played_samples == 300


async def test_resume_plays_again_on_a_new_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    player = Player()
    await player.write(silence(0.1))
    player.stop()  # as the last frame begins: it is not played
    assert player.played_samples == 80
    player.resume()
    player.resume()  # does nothing when not stopped
    await trio.sleep(3)
    start = trio.current_time()
    await player.write(silence(0.5))
    await player.aclose()
    assert trio.current_time() - start == pytest.approx(0.5)
    assert player.played_samples == 80 + 500
    assert player.underruns == 0


async def test_the_output_gets_every_frame_with_its_word_marks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunks = await tone("one two three", rate=RATE)
    out = io.BytesIO()
    pcm = PcmWriter(out)
    recorder = Recorder()

    class Both:
        async def write(self, chunk: AudioChunk, /) -> None:
            await recorder.write(chunk)
            await pcm.write(chunk)

        async def aclose(self) -> None:
            await pcm.aclose()

    async with pcm, Player(output=Both(), frame_seconds=0.05) as player:
        for chunk in chunks:
            await player.write(chunk)
    assert out.getvalue() == b"".join(c.pcm for c in chunks)
    assert all(0 < c.samples <= 50 for c in recorder.chunks)
    marks = [m for c in chunks for m in c.marks]
    assert [m for c in recorder.chunks for m in c.marks] == marks
    for frame in recorder.chunks:
        end = frame.first_sample + frame.samples
        assert all(frame.first_sample <= m.sample < end for m in frame.marks)
    assert isinstance(marks[0], WordMark)


async def test_a_player_plays_one_rate_one_writer_and_positive_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(ConfigError, match="frame_seconds"):
        Player(frame_seconds=0)
    player = Player()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(player.write, silence(1.0))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await player.write(silence(1.0))
        player.stop()
    with pytest.raises(ConfigError, match="2000 Hz after audio at 1000 Hz"):
        await player.write(silence(1.0, rate=RATE * 2))


async def test_an_exception_inside_the_player_block_stops_playback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with pytest.raises(KeyError):
        async with Player() as player:
            await player.write(silence(1.0))
            raise KeyError
    assert player.stopped
    assert trio.current_time() - start == pytest.approx(0.98)
    assert player.played_samples == 980
