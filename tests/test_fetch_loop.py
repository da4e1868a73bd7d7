"""The worker's fetch loop and commit guard never count an unseen record.

Both run here on a stand-in for Faust's consumer: scripted fetch batches
instead of Kafka, so each case (a jump over records that exist, a jump over
a transaction marker, a seek by Faust in between) is exact. The chaos tests
exercise the same code against a real broker.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.types import TP
from intervaltree import IntervalTree

from streams import app
from streams.config import get_settings

TOPIC = get_settings().topic("files.typed")  # written without transactions
PARTITION = TP(TOPIC, 0)


class ScriptedConsumer:
    """What the fetch loop uses of Faust's consumer, fed from a log."""

    consumer_stopped_errors = (RuntimeError,)

    def __init__(self, log: list[int], batch: int = 4, topic: str = TOPIC) -> None:
        self.log = log  # offsets present in the partition
        self.tp = TP(topic, 0)
        self.batch = batch
        self.position = log[0]
        self.delivered: list[int] = []
        self.seeks: list[int] = []
        self.skip_once: set[int] = set()  # offsets a fetch drops, as Faust can
        self.flow_stops_at = -1  # a delivery the flow stop cuts off
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._stopped = asyncio.Event()
        self._n_acked = 0
        self._commit_every = None
        self.should_stop = False
        self.suspend_flow = SimpleNamespace(wait=lambda: None)
        self.diag = SimpleNamespace(set_flag=lambda _: None, unset_flag=lambda _: None)
        self.flow_suspended_for: set[int] = set()  # offsets fetched while it is
        self.app = SimpleNamespace(
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            flow_control=SimpleNamespace(is_active=lambda: self.flowing),
            consumer_generation_id=1,
        )
        self.flowing = True
        self.faust_seeks_during: dict[int, int] = {}  # delivery -> offset
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=True))

    # Faust's signature: the loop passes timeout by name.
    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        fetched = [o for o in self.log if o >= self.position][: self.batch]
        if not fetched:
            self._stopped.set()
            return
        self.position = fetched[-1] + 1
        for offset in fetched:
            if offset in self.skip_once:
                self.skip_once.discard(offset)
                continue
            self.flowing = offset not in self.flow_suspended_for
            self.flow_suspended_for.discard(offset)
            yield (
                self.tp,
                SimpleNamespace(offset=offset, topic=self.tp.topic, generation_id=1),
            )

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        for tp, offset in partitions.items():
            self.seeks.append(offset)
            self.position = offset
            self._read_offset[tp] = offset or None

    async def callback(self, message: Any) -> None:
        self.delivered.append(message.offset)

    async def wait_first(self, delivery: Awaitable[None], _: object) -> Any:
        if self.flow_stops_at == len(self.delivered):
            self.flow_stops_at = -1
            delivery.close()  # type: ignore[attr-defined]
            return SimpleNamespace(done=[])
        await delivery
        seek_to = self.faust_seeks_during.pop(self.delivered[-1], None)
        if seek_to is not None:  # as perform_seek, racing the delivery
            self.position = seek_to
            self._read_offset[self.tp] = seek_to
        return SimpleNamespace(done=[delivery])

    async def sleep(self, _: float) -> None:
        await asyncio.sleep(0)

    async def commit(self) -> None:
        raise AssertionError("commit_every is off here")

    def run(self) -> None:
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        asyncio.run(app._drain_refetching_jumps(self, fetcher))

    def absent(self) -> list[int]:
        return sorted(o for i in self._gap[self.tp] for o in range(i.begin, i.end))


def test_records_a_fetch_dropped_are_fetched_again_and_delivered() -> None:
    consumer = ScriptedConsumer(list(range(12)))
    consumer.skip_once = {5, 6}  # a batch cut short mid-way, as after a flow stop

    consumer.run()

    assert consumer.delivered == list(range(12))
    assert consumer.seeks == [5]
    assert consumer.absent() == []


def test_a_delivery_cut_off_by_a_flow_stop_is_fetched_again() -> None:
    consumer = ScriptedConsumer(list(range(10)))
    consumer.flow_stops_at = 6

    consumer.run()

    assert consumer.delivered == list(range(10))
    assert consumer.seeks == [6]


def test_records_fetched_while_flow_control_is_suspended_come_again() -> None:
    consumer = ScriptedConsumer(list(range(10)))
    consumer.flow_suspended_for = {4, 5}  # a stream would drop them, unacked

    consumer.run()

    assert consumer.delivered == list(range(10))
    assert consumer.seeks == [4]


def test_a_chunk_held_back_by_flow_control_is_not_taken_for_a_marker() -> None:
    log = [0, 1, 2, 4, 5, 6]  # a commit marker at 3
    consumer = ScriptedConsumer(log, topic=get_settings().topic("chunks"))
    consumer.flow_suspended_for = {1}

    consumer.run()

    assert consumer.delivered == log
    assert consumer.absent() == [3]


def test_a_seek_racing_a_delivery_keeps_its_position() -> None:
    consumer = ScriptedConsumer(list(range(8)))
    consumer.faust_seeks_during = {5: 3}  # the committed offset was 3

    consumer.run()

    assert consumer.delivered == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]


def test_a_partition_revoked_mid_batch_is_left_to_its_new_owner() -> None:
    consumer = ScriptedConsumer(list(range(8)))
    consumer.skip_once = {3}

    async def revoked(partitions: dict[TP, int]) -> None:
        consumer._stopped.set()  # nothing more is fetched here
        raise IllegalStateError("No current assignment for partition")

    consumer.seek_wait = revoked  # type: ignore[method-assign]

    consumer.run()

    # Nothing past the jump is delivered; the committed offset never passed 3.
    assert consumer.delivered == [0, 1, 2]


def test_offsets_absent_from_the_log_are_counted_after_one_refetch() -> None:
    # 4 and 9 hold transaction markers: no record to deliver, ever.
    log = [o for o in range(14) if o not in (4, 9)]
    consumer = ScriptedConsumer(log)

    consumer.run()

    assert consumer.delivered == log
    assert consumer.seeks == [4, 9]
    assert consumer.absent() == [4, 9]


def test_a_one_offset_jump_on_a_transactional_topic_is_a_marker() -> None:
    # Chunks: a commit marker after every transaction, and an aborted
    # transaction at 9-11; only the longer jump is fetched again.
    log = [0, 1, 3, 4, 6, 7, 8, 12, 13]
    consumer = ScriptedConsumer(log, topic=get_settings().topic("chunks"))

    consumer.run()

    assert consumer.delivered == log
    assert consumer.seeks == [9]
    assert consumer.absent() == [2, 5, 9, 10, 11]


def test_a_seek_by_faust_voids_a_pending_refetch() -> None:
    consumer = ScriptedConsumer(list(range(12)), batch=3)
    consumer.skip_once = {3}
    seek_wait = consumer.seek_wait

    async def then_rebalance(partitions: dict[TP, int]) -> None:
        await seek_wait(partitions)
        # A rebalance seeks to the committed offset before the refetch.
        consumer.position = 1
        consumer._read_offset[PARTITION] = 1

    consumer.seek_wait = then_rebalance  # type: ignore[method-assign]

    consumer.run()

    assert consumer.delivered == [0, 1, 2, 1, 2, *range(3, 12)]
    assert consumer.absent() == []


def test_records_delivered_before_a_seek_back_are_not_delivered_twice() -> None:
    consumer = ScriptedConsumer(list(range(8)))
    consumer._read_offset[PARTITION] = 3  # Faust sought to its committed 3

    consumer.position = 0  # but the fetch started earlier
    consumer.run()

    assert consumer.delivered == list(range(3, 8))


def offsets_state(committed: int, acked: list[int], absent: list[int]) -> Any:
    gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
    for offset in absent:
        gap[PARTITION].addi(offset, offset + 1)
    return SimpleNamespace(
        _committed_offset={PARTITION: committed},
        _acked={PARTITION: list(acked)},
        _acked_index={PARTITION: set(acked)},
        _gap=gap,
    )


def test_no_commit_passes_an_unprocessed_record_at_the_committed_offset() -> None:
    # Faust alone would commit 13 here, losing the record at offset 10.
    state = offsets_state(committed=10, acked=[11, 12], absent=[])

    assert app._new_offset_never_past_unprocessed(state, PARTITION) is None


def test_commits_pass_an_absent_offset_and_run_through_acked_ones() -> None:
    marker = offsets_state(committed=10, acked=[11, 12], absent=[10])
    processed = offsets_state(committed=10, acked=[10, 11, 13], absent=[])

    assert app._new_offset_never_past_unprocessed(marker, PARTITION) == 13
    assert app._new_offset_never_past_unprocessed(processed, PARTITION) == 12
