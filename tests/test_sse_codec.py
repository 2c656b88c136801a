"""The SSE codec against the WHATWG "Parsing an event stream" algorithm."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.wire import SSEDecoder, SSEEvent, encode_comment, encode_event


def parse(*chunks: bytes) -> list[SSEEvent]:
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        out += d.feed(c)
    out += d.close()
    return out


def parse_bytewise(data: bytes) -> list[SSEEvent]:
    return parse(*(data[i : i + 1] for i in range(len(data))))


def test_basic_fields_and_default_type() -> None:
    assert parse(b"data: hello\n\n") == [SSEEvent("hello")]
    assert parse(b"event: add\ndata: 1\ndata: 2\nid: 7\n\n") == [SSEEvent("1\n2", "add", "7")]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_all_line_ends(eol: bytes) -> None:
    data = b"data: a" + eol + b"data: b" + eol + eol
    assert parse(data) == [SSEEvent("a\nb")]
    assert parse_bytewise(data) == [SSEEvent("a\nb")]


def test_cr_at_chunk_end_and_lf_at_next_start_is_one_line_end() -> None:
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SSEEvent("a\nb")]
    # ... but CR, then CR in the next chunk, is two line ends (an empty line: dispatch).
    assert parse(b"data: a\r", b"\rdata: b\n\n") == [SSEEvent("a"), SSEEvent("b")]


def test_bom_only_once_at_start() -> None:
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("x")]
    # A second BOM is part of the field name: "\ufeffdata" is an unknown field.
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []
    # Split BOM across chunks.
    assert parse(b"\xef", b"\xbb", b"\xbfdata: y\n\n") == [SSEEvent("y")]


def test_exactly_one_space_stripped_and_colonless_lines() -> None:
    assert parse(b"data:  two\n\n") == [SSEEvent(" two")]
    assert parse(b"data:none\n\n") == [SSEEvent("none")]
    assert parse(b"data\n\n") == [SSEEvent("")]
    assert parse(b"data\ndata\n\n") == [SSEEvent("\n")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert parse(b": ping\nfoo: bar\ndata: x\n\n") == [SSEEvent("x")]
    assert parse(b": only a comment\n\n") == []


def test_retry_digits_only() -> None:
    d = SSEDecoder()
    events = d.feed(b"retry: 1500\ndata: a\n\nretry: 15x\ndata: b\n\nretry: -1\n\nretry: \n\n")
    assert events == [SSEEvent("a", retry=1500), SSEEvent("b")]
    assert d.retry == 1500


def test_id_with_nul_is_ignored_and_id_persists() -> None:
    events = parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1"), ("c", "1"), ("d", "")]


def test_id_updates_last_event_id_even_without_data() -> None:
    d = SSEDecoder()
    assert d.feed(b"id: 42\n\n") == []
    assert d.last_event_id == "42"


def test_event_type_resets_after_dispatch_and_on_empty_data() -> None:
    assert parse(b"event: a\n\ndata: x\n\n") == [SSEEvent("x")]
    assert parse(b"event: a\ndata: x\n\ndata: y\n\n") == [SSEEvent("x", "a"), SSEEvent("y")]


def test_unterminated_final_event_is_discarded() -> None:
    assert parse(b"data: a\n\ndata: b\n") == [SSEEvent("a")]
    assert parse(b"data: a\n\ndata: b") == [SSEEvent("a")]


def test_utf8_across_chunks_and_invalid_bytes() -> None:
    data = "data: héllo 你好 👍\n\n".encode()
    assert parse_bytewise(data) == [SSEEvent("héllo 你好 👍")]
    assert parse(b"data: \xff\n\n") == [SSEEvent("\ufffd")]


@pytest.mark.slow
def test_decoding_is_linear_for_a_huge_event_one_byte_at_a_time() -> None:
    # 8 MiB: quadratic work would take minutes; linear takes seconds. Not a timing assertion on
    # speed, a guard against O(n^2): compare with 1/8 of the size.
    def run(n: int) -> float:
        d = SSEDecoder()
        payload = b"data: " + b"x" * n + b"\n\n"
        t = time.process_time()
        got: list[SSEEvent] = []
        view = memoryview(payload)
        for i in range(len(payload)):
            got += d.feed(bytes(view[i : i + 1]))
        assert len(got) == 1
        assert len(got[0].data) == n
        return time.process_time() - t

    small = run(1 << 20)
    big = run(8 << 20)
    assert big < small * 8 * 3  # linear with slack; quadratic would be ~64x


def test_encoder_splits_data_on_every_line_end() -> None:
    assert encode_event("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event("x", event="add", id="5", retry=100) == (
        b"event: add\nid: 5\nretry: 100\ndata: x\n\n"
    )
    assert encode_event("") == b"data: \n\n"


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\ndata: injected"])
def test_encoder_refuses_field_injection(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_event("x", **{field: bad})  # type: ignore[arg-type]


def test_encoder_refuses_nul_id_and_bad_retry() -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode_event("x", id="a\x00")
    with pytest.raises(ValueError, match="retry"):
        encode_event("x", retry=-1)


def test_comment() -> None:
    assert encode_comment("ping") == b": ping\n"
    assert encode_comment() == b":\n"
    assert parse(encode_comment("a\nb") + b"data: x\n\n") == [SSEEvent("x")]


@given(
    st.lists(
        st.tuples(
            # Text is UTF-8 on the wire: no lone surrogates (they have no encoding).
            st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
            st.none()
            | st.text(
                alphabet=st.characters(codec="utf-8", blacklist_characters="\r\n"), max_size=8
            ),
            st.none()
            | st.text(
                alphabet=st.characters(codec="utf-8", blacklist_characters="\r\n\x00"),
                max_size=8,
            ),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5),
)
def test_round_trip_in_any_chunking(
    events: list[tuple[str, str | None, str | None]], sizes: list[int]
) -> None:
    stream = b"".join(encode_event(d, event=e, id=i) for d, e, i in events)
    chunks, pos, k = [], 0, 0
    while pos < len(stream):
        chunks.append(stream[pos : pos + sizes[k % len(sizes)]])
        pos += sizes[k % len(sizes)]
        k += 1
    got = parse(*chunks)
    last_id = ""
    expected = []
    for d, e, i in events:
        if i is not None:
            last_id = i
        data = d.replace("\r\n", "\n").replace("\r", "\n")
        expected.append(SSEEvent(data, e or "message", last_id))
    assert got == expected


@given(
    st.lists(
        st.sampled_from(
            [b"data: ", b"data:", b"event: e\n", b"x", b"\n", b"\r", b"\n\n", b": c\n"]
            + [c.encode() for c in ("é", "你", "👍", "\ufeff")]
            + [b"\xff", b"\xc3", b"\xe4\xbd", b"\xf0\x9f", b"\xed\xa0\x80"]
        ),
        max_size=30,
    ),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=5),
)
def test_any_bytes_in_any_chunking_decode_as_the_whole_replaced_text(
    pieces: list[bytes], sizes: list[int]
) -> None:
    # Invalid UTF-8 becomes U+FFFD exactly as bytes.decode("utf-8", "replace") does, and a
    # character cut between chunks (valid or not) decodes as if the stream came whole.
    stream = b"".join(pieces)
    chunks, pos, k = [], 0, 0
    while pos < len(stream):
        chunks.append(stream[pos : pos + sizes[k % len(sizes)]])
        pos += sizes[k % len(sizes)]
        k += 1
    reference = parse(stream.decode("utf-8", "replace").encode())
    assert parse(*chunks) == reference
    assert parse(stream) == reference


# Chunks as a provider's stream may cut it: whole events of one data line (the decoder's
# shortcut), events of several lines or fields, fields pending across chunks, a line cut in
# two, CR line ends (one ending a chunk), a BOM, a UTF-8 character cut in two or invalid.
_CHUNKS = st.lists(
    st.sampled_from(
        [
            b"data: a\n\n",
            b"data:b\n\n",
            b"data:  c\n\n",
            b"data:\n\n",
            b"data: [DONE]\n\n",
            b"data: x\ndata: y\n\n",
            b"id: 7\n",
            b"id: 8\ndata: d\n\n",
            b"event: e\n",
            b"retry: 10\n",
            b": comment\n",
            b"\n",
            b"\xef\xbb\xbfdata: bom\n\n",
            b"data: p",
            b"art\n\n",
            b"data: q\r\n\r\n",
            b"data: q\r",
            b"\r",
            b"\n\n",
            b"\ndata: n\n",
            b"data: \xc3",
            b"\xa9\n\n",
            b"data: \xff\n\n",
        ]
    ),
    max_size=20,
)


@given(_CHUNKS)
def test_chunks_of_one_whole_event_decode_as_the_same_stream_byte_by_byte(
    chunks: list[bytes],
) -> None:
    # A chunk that is exactly one event of one data line, with nothing pending, takes the
    # decoder's shortcut: the same events (ids carried over, a pending event type or retry
    # field honoured) as the stream decoded one byte at a time.
    assert parse(*chunks) == parse_bytewise(b"".join(chunks))


@given(_CHUNKS)
def test_feed_single_takes_exactly_the_chunks_of_one_plain_event(chunks: list[bytes]) -> None:
    # The producers' loop: ``feed_single`` first, ``feed`` when it declines. Together they
    # give the events of the stream decoded byte by byte (a taken chunk is a "message" event
    # whose id is the decoder's last event id), and ``feed_single`` declines every chunk that
    # is not one event of one data line (it never takes part of one, or a chunk after a CR).
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        single = d.feed_single(c)
        if single is None:
            out += d.feed(c)
        else:
            assert c.startswith(b"data:")
            assert c.count(b"\n") == 2
            assert c.endswith(b"\n\n")
            out.append(SSEEvent(single, "message", d.last_event_id))
    out += d.close()
    assert out == parse_bytewise(b"".join(chunks))
