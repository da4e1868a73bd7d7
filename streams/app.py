"""The Faust application of the worker, and its topics.

Values travel as raw bytes and are decoded by the agents themselves
(``streams.pipeline``), so a message that is not valid Avro becomes a dead
letter instead of an exception inside Faust's consumer.

Delivery is at-least-once and every effect is idempotent, which together give
exactly-once results. Faust's own ``exactly_once`` mode is not used: it picks
the transactional producer by the *output* partition but commits
transactions by the *input* partition, so a record sent to a partition other
than the one being consumed sits in a transaction that is never committed
(seen here: assembled files that never reached the scanner). Instead an
agent awaits the broker's ack of its outputs before its input offset may be
committed; a crash replays inputs, and deterministic object keys, event ids
and replacing warehouse tables turn the replay into a restatement.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as aiokafka_driver

from streams import topics
from streams.config import Settings, get_settings
from streams.logs import get_logger

log = get_logger(__name__)


def _read_committed_worker_consumer(self: Any, transport: Any) -> Any:
    """The worker's consumer, always with isolation_level=read_committed.

    Faust reads committed records only in its exactly_once mode. Without
    this the agents would see chunk events of gateway transactions that
    were aborted (a gateway killed mid-PATCH), bytes no client was ever
    told were stored.
    """
    consumer = self.consumer
    in_transaction = consumer.in_transaction
    consumer.in_transaction = True  # Faust's own switch for read_committed
    try:
        return _faust_worker_consumer(self, transport)
    finally:
        consumer.in_transaction = in_transaction


_faust_worker_consumer = aiokafka_driver.AIOKafkaConsumerThread._create_worker_consumer
aiokafka_driver.AIOKafkaConsumerThread._create_worker_consumer = (  # type: ignore[method-assign]
    _read_committed_worker_consumer
)


def _ack_processed_only(self: Any, message: Any) -> bool:
    """Consumer.ack that never records an event the agent did not process.

    Faust's pure-Python stream iterator (the one it runs where its Cython
    extension is not built) drops events it fetched before a rebalance
    (flow control suspended, or an older consumer generation) and acks
    them, so their offsets could be committed although no agent saw them: a
    worker killed after that commit loses them. Such acks are marked done
    but not recorded; after the rebalance Faust seeks to the committed
    offsets and the events come again. An event processed in the old
    generation comes again too, which is harmless: every effect is
    idempotent. The Cython iterator (used with the wheels pinned here)
    inlines its acks and does not ack dropped events;
    tests/test_faust_patches.py checks both stay so.
    """
    app = self.app
    if (
        not app.flow_control.is_active()
        or getattr(message, "generation_id", None) != app.consumer_generation_id
    ):
        message.acked = True
        self._unacked_messages.discard(message)
        return False
    return _faust_ack(self, message)


_faust_ack = faust_consumer.Consumer.ack
faust_consumer.Consumer.ack = _ack_processed_only  # type: ignore[method-assign]


FETCH_WAIT_S = 0.1


async def _drain_refetching_jumps(self: Any, fetcher: Any) -> None:
    """Consumer._drain_messages that never counts a record it did not deliver.

    Faust takes a jump in the offsets it hands to streams as records absent
    from the log (transaction markers, aborted records) and counts them as
    processed. But it also jumps over records that exist: a batch cut short
    by a flow stop, or a seek to the committed offsets racing a delivery
    while a restarted worker starts. Those were committed unprocessed, and
    a file stopped between two stages (seen in the two-worker chaos test).
    Here a jump seeks back and fetches again; only what a fetch from that
    very offset still skips is absent, and only that is counted. On topics
    written in transactions (``TopicSpec.transactional``) a jump of one
    offset is the commit marker of the transaction before it and is counted
    at once: fetching again per marker there made the chaos tests take 105 s
    instead of 67 s.

    ``_read_offset`` holds the next offset expected (what Faust's seeks
    store; its own loop stored the last one delivered).

    A fetch waits at most 100 ms for records, not Faust's 1 s: Faust stops
    fetching a partition whose stream buffer is full and asks for it again
    only on its next fetch, and chunk events fill a buffer in a few hundred
    milliseconds, so each refill cost a second of idling (assembly ran at
    a third of its speed).
    """
    callback = self.callback
    read_offset = self._read_offset
    acks_enabled_for = self.app.topics.acks_enabled_for
    with_markers = _transactional_topics()
    # Partition -> (offset sought back to, the batch that did, offset seen).
    refetching: dict[Any, tuple[int, int, int]] = {}
    batch = 0
    since_yield = 0
    try:
        while not (self._stopped.is_set() or fetcher._stopped.is_set()):
            batch += 1
            self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
            records = self.getmany(timeout=FETCH_WAIT_S)
            await self.sleep(0)  # getmany can return at once, again and again
            if self.should_stop:
                continue
            async for tp, message in records:
                since_yield += 1
                if since_yield > 100:
                    await asyncio.sleep(0)
                    since_yield = 0
                offset = message.offset
                expected = read_offset[tp]
                acked = acks_enabled_for(message.topic)
                sought = refetching.get(tp)
                if sought is not None and expected != (sought[0] or None):
                    # Faust sought this partition since (a rebalance): its
                    # position stands, ours is void.
                    del refetching[tp]
                    sought = None

                if sought is not None:
                    start, sought_in, jumped_to = sought
                    if sought_in == batch or offset < start:
                        continue  # fetched before the seek back
                    del refetching[tp]
                    if offset > start:
                        # A fetch from start skips to offset: that range is
                        # absent from the log, not lost.
                        _count_absent(self, tp, start, offset - 1)
                    else:
                        # Routine around rebalances and restarts.
                        log.info(
                            "fetch.skipped_records_refetched",
                            topic=tp.topic,
                            partition=tp.partition,
                            first=start,
                            skipped_to=jumped_to,
                        )
                elif expected is not None and offset != expected:
                    if offset < expected:
                        continue  # delivered already (a seek went back over it)
                    # Changelogs are not committed by offset: a jump there
                    # loses nothing, and Faust's recovery handles it.
                    if acked:
                        if offset == expected + 1 and tp.topic in with_markers:
                            _count_absent(self, tp, expected, expected)
                        else:
                            if await _seek_back(self, tp, expected, offset):
                                refetching[tp] = (expected, batch, offset)
                            continue

                if acked and not _streams_take(self.app, message):
                    # Not handed over: fetch it again, from here. (Left to the
                    # jump after it, on chunks that jump would pass for a
                    # commit marker.)
                    if await _seek_back(self, tp, offset, offset):
                        refetching[tp] = (offset, batch, offset)
                    continue

                if self._n_acked >= (self._commit_every or float("inf")):
                    self._n_acked = 0
                    await self.commit()
                delivery = callback(message)
                waited = await self.wait_first(delivery, self.suspend_flow.wait())
                # Not delivered (the flow stopped first), or Faust sought tp
                # meanwhile: leave the position to that seek.
                if delivery in waited.done and read_offset[tp] == expected:
                    read_offset[tp] = offset + 1
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise
    finally:
        self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)


async def _seek_back(consumer: Any, tp: Any, offset: int, seen: int) -> bool:
    """Seek tp back to offset; False when tp is no longer assigned here.

    A rebalance can revoke tp in the middle of a batch: its new owner reads
    from the committed offset, which never passed this record.
    """
    log.debug(
        "fetch.sought_back",
        topic=tp.topic,
        partition=tp.partition,
        to=offset,
        seen=seen,
    )
    try:
        await consumer.seek_wait({tp: offset})
    except IllegalStateError:
        return False
    return True


def _streams_take(app: Any, message: Any) -> bool:
    """Whether a stream would process message now rather than drop it.

    Streams drop, unacked, what arrives while flow control is suspended or
    was fetched in an older generation (around a rebalance, and while a
    restarted worker seeks to its committed offsets). Such a record is not
    handed over at all, so the fetch loop fetches it again.
    """
    return bool(
        app.flow_control.is_active()
        and getattr(message, "generation_id", None) == app.consumer_generation_id
    )


def _transactional_topics() -> frozenset[str]:
    settings = get_settings()
    return frozenset(settings.topic(t.name) for t in topics.TOPICS if t.transactional)


def _count_absent(self: Any, tp: Any, first: int, last: int) -> None:
    """Let commits pass offsets first..last, which hold no record to process.

    Faust's own _add_gap clips the range to start after the committed
    offset, which it reads as the last one processed; it is the next one.
    """
    gap = self._gap[tp]
    gap.addi(first, last + 1)
    gap.merge_overlaps()


def _new_offset_never_past_unprocessed(self: Any, tp: Any) -> int | None:
    """Consumer._new_offset that never commits over the committed offset.

    Faust commits past the record at the committed offset when the next
    one is acked, allowing for a transaction marker there. A record a
    stream dropped there was then lost. Absent offsets are counted by the
    fetch loop above, so the head must be acked or known absent.
    """
    committed = self._committed_offset[tp]
    acked = self._acked[tp]
    if committed and acked and min(acked) > committed:
        if not self._gap[tp].overlaps_point(committed):
            return None
    result: int | None = _faust_new_offset(self, tp)
    return result


_faust_drain_messages = faust_consumer.Consumer._drain_messages
faust_consumer.Consumer._drain_messages = _drain_refetching_jumps  # type: ignore[method-assign]
_faust_new_offset = faust_consumer.Consumer._new_offset
faust_consumer.Consumer._new_offset = _new_offset_never_past_unprocessed  # type: ignore[method-assign]


def create_app(settings: Settings) -> faust.App:
    datadir = settings.home / "worker" / settings.worker_name
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        "sluice-worker",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store=settings.worker_store,
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
        broker_commit_interval=1.0,
        # Static membership: a worker restarted under the same name within
        # the session timeout takes its partitions back without a rebalance.
        # Rebalances also make Faust drop the events it had buffered (see
        # _ack_processed_only), so fewer of them is cheaper.
        consumer_group_instance_id=settings.worker_name,
        broker_session_timeout=30.0,
        broker_heartbeat_interval=3.0,
        datadir=str(datadir),
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=settings.worker_web_port,
        web_transport="tcp://",
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=1_200_000,
        # Chunk events are up to 900 KiB: fetch many per round trip, but
        # buffer few, so a fast fetcher cannot pile gigabytes in memory.
        consumer_max_fetch_size=8 * 1024 * 1024,
        stream_buffer_maxsize=64,
        stream_wait_empty=False,
    )


@lru_cache(maxsize=1)
def get_app() -> faust.App:
    return create_app(get_settings())


def raw_topic(app: faust.App, short_name: str, **kwargs: Any) -> faust.TopicT:
    """A platform topic carrying framed Avro bytes, declared in streams.topics."""
    settings = get_settings()
    spec = next(t for t in topics.TOPICS if t.name == short_name)
    return app.topic(
        settings.topic(short_name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topics.partitions_of(spec, settings),
        **kwargs,
    )
