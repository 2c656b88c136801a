"""Event channels: budgets, every overflow policy, statistics, the resource contract."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from pipeline import (
    ChannelOverflowError,
    ConfigError,
    Done,
    Dropped,
    Error,
    Event,
    TextDelta,
    ToolCallStart,
    Usage,
    open_event_channel,
)


def drain(recv: trio.abc.ReceiveChannel[Event]) -> list[Event]:
    out: list[Event] = []
    while True:
        try:
            out.append(recv.receive_nowait())  # type: ignore[attr-defined]
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


def texts(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_items": 0}, ConfigError),
        ({"max_items": -1}, ConfigError),
        ({"max_bytes": -1}, ConfigError),
        ({"max_items": 1.5}, TypeError),
        ({"max_items": math.inf}, TypeError),
        ({"max_items": True}, TypeError),
        ({"max_bytes": "10"}, TypeError),
        ({"policy": "lossy"}, ConfigError),
        ({"max_spill_bytes": 0}, ConfigError),
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        open_event_channel(**kwargs)  # type: ignore[arg-type]


def test_config_error_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="max_items"):
        open_event_channel(max_items=0)


async def test_block_waits_for_room_and_counts_blocked_time(autojump_clock: trio.abc.Clock) -> None:
    send, recv = open_event_channel(max_items=2)
    send.send_nowait(TextDelta("a"))
    send.send_nowait(TextDelta("b"))
    with pytest.raises(trio.WouldBlock):
        send.send_nowait(TextDelta("c"))

    async def consumer() -> None:
        await trio.sleep(5)
        await recv.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await send.send(TextDelta("c"))
    stats = send.statistics()
    assert stats.blocked_seconds == pytest.approx(5)
    assert stats.items_queued == 2
    assert stats.high_water_items == 2
    assert texts(drain(recv)) == "bc"


async def test_byte_budget_blocks_but_a_big_item_passes_alone() -> None:
    send, recv = open_event_channel(max_items=100, max_bytes=10)
    send.send_nowait(TextDelta("x" * 50))  # larger than the budget, but the channel is empty
    with pytest.raises(trio.WouldBlock):
        send.send_nowait(TextDelta("y"))
    assert recv.receive_nowait() == TextDelta("x" * 50)
    send.send_nowait(TextDelta("é" * 5))  # 10 bytes of UTF-8
    assert send.statistics().bytes_queued == 10
    with pytest.raises(trio.WouldBlock):
        send.send_nowait(TextDelta("z"))


async def test_coalesce_merges_text_while_consumer_lags() -> None:
    send, recv = open_event_channel(max_items=4, max_bytes=1000, policy="coalesce")
    for i in range(100):
        send.send_nowait(TextDelta(str(i % 10), seq=i + 1))
    send.send_nowait(Usage(3, 4, seq=101))
    send.send_nowait(TextDelta("é", seq=102))
    send.close()
    got = drain(recv)
    assert got[0] == TextDelta("0123456789" * 10, seq=100)
    assert got[1] == Usage(3, 4, seq=101)
    assert got[2] == TextDelta("é", seq=102)
    stats = recv.statistics()
    assert stats.items_coalesced == 99
    assert stats.items_received == 3


async def test_coalesce_blocks_when_merged_text_exceeds_byte_budget() -> None:
    send, recv = open_event_channel(max_items=4, max_bytes=10, policy="coalesce")
    send.send_nowait(TextDelta("12345"))
    send.send_nowait(TextDelta("67890"))
    with pytest.raises(trio.WouldBlock):
        send.send_nowait(TextDelta("x"))
    assert recv.receive_nowait().text == "1234567890"  # type: ignore[union-attr]
    send.send_nowait(TextDelta("x"))


async def test_coalesce_never_merges_across_other_events() -> None:
    send, recv = open_event_channel(policy="coalesce")
    for ev in [TextDelta("a"), TextDelta("b"), ToolCallStart(0, "id", "f"), TextDelta("c")]:
        send.send_nowait(ev)
    send.close()
    assert drain(recv) == [TextDelta("ab"), ToolCallStart(0, "id", "f"), TextDelta("c")]


async def test_spill_never_blocks_keeps_order_and_merges_on_read_back() -> None:
    send, recv = open_event_channel(max_items=2, max_bytes=8, policy="spill")
    sent: list[Event] = []
    for i in range(10_000):
        ev: Event = TextDelta(f"{i},", seq=i + 1)
        if i % 1000 == 999:
            ev = Usage(i, i, seq=i + 1)
        send.send_nowait(ev)
        sent.append(ev)
    send.send_nowait(Done("stop", seq=10_001))
    sent.append(Done("stop", seq=10_001))
    stats = send.statistics()
    assert stats.items_queued == 2
    assert stats.items_spilled == 9_999
    assert stats.spill_file_bytes > 0
    send.close()
    got = drain(recv)
    assert texts(got) == texts(sent)
    assert [e for e in got if not isinstance(e, TextDelta)] == [
        e for e in sent if not isinstance(e, TextDelta)
    ]
    seqs = [e.seq for e in got]
    assert seqs == sorted(set(seqs))
    # Read-back items respect the byte budget (a merged delta holds at most max_bytes of text).
    assert all(len(e.text) <= 8 for e in got if isinstance(e, TextDelta))
    assert recv.statistics().spill_file_bytes == 0  # released once the reader caught up


async def test_spill_file_limit_blocks() -> None:
    send, recv = open_event_channel(max_items=1, policy="spill", max_spill_bytes=100)
    send.send_nowait(TextDelta("a"))
    n = 0
    with pytest.raises(trio.WouldBlock):
        while True:
            send.send_nowait(TextDelta("b" * 10))
            n += 1
    assert 0 < n < 10
    recv.close()


async def test_drop_oldest_drops_and_says_what() -> None:
    send, recv = open_event_channel(max_items=3, policy="drop_oldest")
    send.send_nowait(TextDelta("aa", seq=1))
    send.send_nowait(ToolCallStart(0, "c1", "f", seq=2))
    send.send_nowait(TextDelta("bbb", seq=3))
    send.send_nowait(TextDelta("cccc", seq=4))  # drops "aa"
    send.send_nowait(TextDelta("d", seq=5))  # drops "bbb" (the tool-call start is kept)
    send.send_nowait(Done("stop", seq=6))  # drops "cccc"
    send.close()
    got = drain(recv)
    assert got[0] == Dropped(items=3, text_bytes=9, text_chars=9, first_seq=1, last_seq=4)
    assert got[1:] == [
        ToolCallStart(0, "c1", "f", seq=2),
        TextDelta("d", seq=5),
        Done("stop", seq=6),
    ]
    assert recv.statistics().items_dropped == 3


async def test_drop_oldest_blocks_when_nothing_is_droppable() -> None:
    send, recv = open_event_channel(max_items=1, policy="drop_oldest")
    send.send_nowait(ToolCallStart(0, "c", "f"))
    with pytest.raises(trio.WouldBlock):
        send.send_nowait(TextDelta("x"))
    recv.close()


async def test_fail_policy_raises_and_tells_the_consumer() -> None:
    send, recv = open_event_channel(max_items=2, policy="fail")
    send.send_nowait(TextDelta("a"))
    send.send_nowait(TextDelta("b"))
    with pytest.raises(ChannelOverflowError, match="budget 2 items"):
        send.send_nowait(TextDelta("c"))
    with pytest.raises(trio.ClosedResourceError):
        send.send_nowait(TextDelta("d"))
    got = drain(recv)
    assert [type(e) for e in got] == [TextDelta, TextDelta, Error]
    assert isinstance(got[2], Error)
    assert got[2].kind == "overflow"
    with pytest.raises(trio.EndOfChannel):
        recv.receive_nowait()


async def test_receiver_close_breaks_sender_and_releases_spill() -> None:
    send, recv = open_event_channel(max_items=1, policy="spill")
    for _ in range(10):
        send.send_nowait(TextDelta("x"))
    await recv.aclose()
    await recv.aclose()  # idempotent
    with pytest.raises(trio.BrokenResourceError):
        await send.send(TextDelta("y"))
    with pytest.raises(trio.ClosedResourceError):
        recv.receive_nowait()


async def test_blocked_sender_is_woken_by_receiver_close() -> None:
    send, recv = open_event_channel(max_items=1)
    send.send_nowait(TextDelta("x"))
    async with trio.open_nursery() as nursery:

        async def sender() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await send.send(TextDelta("y"))

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        recv.close()


async def test_send_and_receive_are_cancel_safe(autojump_clock: trio.abc.Clock) -> None:
    send, recv = open_event_channel(max_items=1)
    send.send_nowait(TextDelta("x"))
    with trio.move_on_after(1):
        await send.send(TextDelta("lost"))
    assert drain(recv) == [TextDelta("x")]
    with trio.move_on_after(1):
        await recv.receive()
    send.send_nowait(TextDelta("y"))
    assert await recv.receive() == TextDelta("y")


async def test_concurrent_use_is_refused() -> None:
    send, recv = open_event_channel(max_items=1)
    with pytest.RaisesGroup(trio.BusyResourceError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(recv.receive)
            nursery.start_soon(recv.receive)
    with pytest.raises(NotImplementedError):
        send.clone()


async def test_sender_close_ends_the_stream_after_the_queue() -> None:
    send, recv = open_event_channel()
    await send.send(TextDelta("a"))
    await send.aclose()
    await send.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await send.send(TextDelta("b"))
    assert [e async for e in recv] == [TextDelta("a")]
    for _ in range(3):  # nothing after termination, and no hang
        with pytest.raises(trio.EndOfChannel):
            await recv.receive()


async def test_fill_ratio_tracks_the_larger_budget() -> None:
    send, recv = open_event_channel(max_items=4, max_bytes=100)
    send.send_nowait(TextDelta("x" * 75))
    assert send.statistics().fill_ratio == pytest.approx(0.75)
    assert send.fill_ratio() == pytest.approx(0.75)
    send.send_nowait(Done())
    send.send_nowait(Done())
    assert send.statistics().fill_ratio == pytest.approx(0.75)
    send.send_nowait(Done())
    assert send.fill_ratio() == send.statistics().fill_ratio == 1.0
    recv.close()


async def test_coalesce_accounts_the_merged_bytes() -> None:
    send, recv = open_event_channel(max_items=2, max_bytes=100, policy="coalesce")
    for text in ["é", "ab", "€"]:
        send.send_nowait(TextDelta(text))
    assert send.statistics().bytes_queued == 2 + 2 + 3
    send.send_nowait(Done())
    assert drain(recv) == [TextDelta("éab€"), Done()]
    stats = recv.statistics()
    assert (stats.items_queued, stats.bytes_queued, stats.bytes_sent) == (0, 0, 7)


async def test_spill_reads_back_non_text_events_and_unicode_text() -> None:
    send, recv = open_event_channel(max_items=1, max_bytes=6, policy="spill")
    sent: list[Event] = [
        TextDelta("a", seq=1),
        TextDelta("é", seq=2),
        TextDelta("€", seq=3),
        TextDelta("ü", seq=4),
        ToolCallStart(0, "c", "f", seq=5),
        TextDelta("x", seq=6),
        Error("timeout", "slow", partial_text="aé€üx", seq=7),
    ]
    for ev in sent:
        send.send_nowait(ev)
    assert send.statistics().spill_queued_items == 6
    send.close()
    got = drain(recv)
    # "é" and "€" merged (5 bytes; "ü" would pass max_bytes, 6), never across another event.
    assert got == [sent[0], TextDelta("é€", seq=3), *sent[3:]]
    stats = recv.statistics()
    assert (stats.spill_queued_items, stats.spill_file_bytes, stats.bytes_queued) == (0, 0, 0)


async def test_receive_batch_takes_what_is_ready_up_to_max_items() -> None:
    send, recv = open_event_channel(max_items=10)
    for i in range(5):
        send.send_nowait(TextDelta(str(i), seq=i + 1))
    assert [e.seq for e in await recv.receive_batch(3)] == [1, 2, 3]
    assert [e.seq for e in await recv.receive_batch()] == [4, 5]
    with trio.move_on_after(0.01) as scope:  # nothing ready: waits for one
        await recv.receive_batch()
    assert scope.cancelled_caught
    send.send_nowait(Done(seq=6))
    send.close()
    assert await recv.receive_batch() == [Done(seq=6)]
    assert await recv.receive_batch() == []
    assert await recv.receive_batch() == []


async def test_receive_batch_includes_the_channel_notices() -> None:
    send, recv = open_event_channel(max_items=2, policy="drop_oldest")
    for i in range(4):
        send.send_nowait(TextDelta("x", seq=i + 1))
    assert await recv.receive_batch() == [
        Dropped(items=2, text_bytes=2, text_chars=2, first_seq=1, last_seq=2),
        TextDelta("x", seq=3),
        TextDelta("x", seq=4),
    ]
    send, recv = open_event_channel(max_items=1, policy="fail")
    send.send_nowait(TextDelta("a"))
    with pytest.raises(ChannelOverflowError):
        send.send_nowait(TextDelta("b"))
    batch = await recv.receive_batch()
    assert [type(e) for e in batch] == [TextDelta, Error]
    assert await recv.receive_batch() == []


async def test_receive_batch_reads_the_spill_file() -> None:
    send, recv = open_event_channel(max_items=1, max_bytes=1, policy="spill")
    for i in range(5):
        send.send_nowait(TextDelta("x", seq=i + 1))
    send.close()
    batch = await recv.receive_batch()
    assert texts(batch) == "xxxxx"
    assert batch[-1].seq == 5
    assert await recv.receive_batch() == []


class _Direct:
    """A DirectConsumer that records what it takes in ``log`` (ready unless told otherwise)."""

    def __init__(self, log: list[tuple[str, int]], *, refuse: frozenset[int] = frozenset()):
        self.log = log
        self.ready_now = True
        self.refuse = refuse  # seqs whose take fails (then they are queued)

    def ready(self) -> bool:
        return self.ready_now

    async def take(self, event: Event, /) -> bool:
        await trio.lowlevel.checkpoint()
        if event.seq in self.refuse:
            return False
        self.log.append(("direct", event.seq))
        return True


async def test_direct_consumer_takes_events_while_the_receiver_waits() -> None:
    send, recv = open_event_channel(policy="coalesce")
    log: list[tuple[str, int]] = []
    recv.deliver_directly(_Direct(log))
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            async for ev in recv:
                log.append(("queued", ev.seq))

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 11):
            await send.send(TextDelta("ab", seq=i))
        send.close()
    assert log == [("direct", i) for i in range(1, 11)]
    st = send.statistics()
    assert (st.items_direct, st.items_sent, st.items_received, st.bytes_sent) == (10, 10, 10, 20)
    assert st.items_queued == 0
    assert st.items_coalesced == 0


async def test_direct_and_queued_events_keep_their_order_and_the_policy_acts(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The consumer is refused now and then, and the reader is slow: events queue (and
    coalesce) whenever the reader is busy or something is queued, go direct otherwise; the
    reader and the consumer together see every event once, in order."""
    send, recv = open_event_channel(policy="coalesce")
    log: list[tuple[str, int]] = []
    direct = _Direct(log, refuse=frozenset({7, 30}))
    recv.deliver_directly(direct)
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            async for ev in recv:
                log.append(("queued", ev.seq))
                await trio.sleep(0.05)  # busy: what comes meanwhile is queued

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, 41):
            direct.ready_now = i % 10 != 5
            await send.send(TextDelta("x", seq=i))
            await trio.sleep(0.01)
        send.close()
    seqs = [seq for _, seq in log]
    assert seqs == sorted(seqs)
    assert seqs[-1] == 40
    kinds = {kind for kind, _ in log}
    assert kinds == {"direct", "queued"}
    st = send.statistics()
    assert st.items_coalesced > 0  # the policy acted while the reader was busy
    assert st.items_direct == sum(1 for kind, _ in log if kind == "direct")
    assert st.items_sent == 40
    assert st.items_received == 40 - st.items_coalesced
    assert ("direct", 7) not in log
    assert ("direct", 30) not in log


async def test_no_direct_delivery_while_the_receiver_is_not_waiting() -> None:
    send, recv = open_event_channel()
    log: list[tuple[str, int]] = []
    recv.deliver_directly(_Direct(log))
    await send.send(TextDelta("a", seq=1))  # nobody waits in receive: queued
    assert log == []
    assert recv.receive_nowait().seq == 1
    recv.deliver_directly(None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recv.receive)
        await trio.testing.wait_all_tasks_blocked()
        await send.send(TextDelta("b", seq=2))  # consumer unregistered: to the waiting reader
    assert log == []
    assert send.statistics().items_direct == 0
