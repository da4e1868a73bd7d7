"""The worker's patches to Faust are in place, and Faust still needs them.

``streams.app`` changes four things in faust-streaming: the consumer reads
committed records only; acks of events dropped around a rebalance are not
recorded; its own fetch loop waits 100 ms rather than a second and fetches
a jump in offsets again instead of counting it as processed; and no commit
passes the record at the committed offset unless it was processed or is
absent. Each rests on how Faust's own code reads today; when an upgrade
changes that code, these tests fail so that someone looks again.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import faust
import faust.streams
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as aiokafka_driver

import streams.app as app


def test_the_patches_are_installed() -> None:
    assert faust_consumer.Consumer.ack is app._ack_processed_only
    create = aiokafka_driver.AIOKafkaConsumerThread._create_worker_consumer
    assert create is app._read_committed_worker_consumer
    assert faust_consumer.Consumer._drain_messages is app._drain_refetching_jumps
    new_offset = faust_consumer.Consumer._new_offset
    assert new_offset is app._new_offset_never_past_unprocessed


def test_dropped_events_of_an_old_generation_are_never_recorded() -> None:
    # The pure-Python iterator acks what it drops: the ack guard is needed.
    python = inspect.getsource(faust.streams.Stream._py_aiter)
    assert "message.generation_id != self.app.consumer_generation_id" in python
    assert "do_ack or value is skipped_value" in python
    # The Cython iterator bypasses Consumer.ack and must keep skipping
    # dropped events (they carry no current event) without acking them.
    pyx = Path(faust.__file__).parent / "_cython" / "streams.pyx"
    cython = pyx.read_text()
    assert "message.generation_id != self.app.consumer_generation_id" in cython
    assert "return None, self._skipped_value, stream_state" in cython
    assert "if do_ack and event is not None:" in cython


def test_faust_still_switches_isolation_on_in_transaction() -> None:
    source = inspect.getsource(aiokafka_driver.AIOKafkaConsumerThread)
    assert "read_committed" in source
    assert "in_transaction" in source


def test_faust_still_counts_jumps_as_processed() -> None:
    # What the replaced fetch loop and the commit guard correct: Faust fills
    # any jump between delivered offsets, storing the last offset delivered,
    # and commits past one unacked record at the committed offset.
    drain = inspect.getsource(app._faust_drain_messages)
    assert "await self._add_gap(tp, r_offset + 1, offset)" in drain
    assert "set_read_offset(tp, offset)" in drain
    assert "getmany(timeout=1.0)" in drain
    new_offset = inspect.getsource(app._faust_new_offset)
    assert "if min(acked) - committed_offset > 1:" in new_offset
