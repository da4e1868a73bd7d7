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

from functools import lru_cache
from typing import Any

import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as aiokafka_driver

from streams import topics
from streams.config import Settings, get_settings


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


def _getmany_short_wait(self: Any, timeout: float) -> Any:
    """Consumer.getmany waiting at most 100 ms for records, not Faust's 1 s.

    Faust stops fetching a partition whose stream buffer is full and only
    asks for it again on its next fetch; the fetch before that waits the
    whole timeout for the other, idle partitions. Chunk events fill the
    buffer in a few hundred milliseconds, so every refill cost a second of
    idling (assembly ran at a third of its speed).
    """
    return _faust_getmany(self, min(timeout, 0.1))


_faust_getmany = faust_consumer.Consumer.getmany
faust_consumer.Consumer.getmany = _getmany_short_wait  # type: ignore[method-assign]


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
