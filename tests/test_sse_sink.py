"""The SSE frame of an llmpipe event and the NDJSON line: round trips through the decoders."""

from __future__ import annotations

import pipeline.wire
import pipeline.wire._sse
from pipeline import (
    Done,
    Error,
    Event,
    Metadata,
    TextDelta,
    ToolCallEnd,
    event_from_json,
    event_to_json,
)
from pipeline.wire import (
    SSE_HEADERS,
    SSEDecoder,
    encode_comment,
    encode_event,
    event_frame,
    ndjson_line,
)

EVENTS: list[Event] = [
    Metadata("openai", "m", "r1", seq=1),
    TextDelta("line one\nline two\r\nthree\r", seq=2),
    TextDelta("caf\u00e9 \U0001f600 \u2028 end", seq=3),
    ToolCallEnd(0, "c1", "f", '{"a": "b\\n"}', seq=4),
    Error(kind="connection", message="reset\nby peer", retryable=True, seq=5),
    Done("stop", seq=6),
]


def test_codec_is_reexported() -> None:
    for name in ("encode_event", "encode_comment", "SSEDecoder", "SSEEvent"):
        assert getattr(pipeline.wire, name) is getattr(pipeline.wire._sse, name)
        assert name in pipeline.wire.__all__
    public = {n for n in vars(pipeline.wire) if not n.startswith("_") and n != "annotations"}
    assert public - {"Event", "Final", "event_to_json"} == set(pipeline.wire.__all__)


def test_event_frame_round_trip() -> None:
    decoder = SSEDecoder()
    stream = encode_comment("keep-alive") + b"".join(event_frame(e) for e in EVENTS)
    # fed one byte at a time: framing does not depend on chunk boundaries
    decoded = [ev for i in range(len(stream)) for ev in decoder.feed(stream[i : i + 1])]
    assert [d.event for d in decoded] == [e.type for e in EVENTS]
    assert [d.id for d in decoded] == [str(e.seq) for e in EVENTS]
    assert [event_from_json(d.data) for d in decoded] == EVENTS


def test_event_frame_shape() -> None:
    frame = event_frame(TextDelta("hi", seq=7))
    assert frame == b'event: text\nid: 7\ndata: {"type":"text","text":"hi","seq":7}\n\n'
    # the JSON is one line, so a frame has exactly one data line
    assert all(event_frame(e).count(b"\ndata: ") == 1 for e in EVENTS)
    # the fast framing gives exactly what the checked encoder gives
    for e in EVENTS:
        assert event_frame(e) == encode_event(event_to_json(e), event=e.type, id=str(e.seq))


def test_headers() -> None:
    headers = dict(SSE_HEADERS)
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"


def test_ndjson_round_trip() -> None:
    data = b"".join(ndjson_line(e) for e in EVENTS)
    lines = data.split(b"\n")
    assert lines[-1] == b""
    assert [event_from_json(line) for line in lines[:-1]] == EVENTS
