"""The worker's patches to Faust are in place, and Faust still needs them.

``streams.app`` changes three things in faust-streaming: the consumer reads
committed records only, acks of events dropped around a rebalance are not
recorded, and fetches wait 100 ms rather than a second. Each rests on how
Faust's own code reads today; when an upgrade changes that code, these
tests fail so that someone looks again.
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
    assert faust_consumer.Consumer.getmany is app._getmany_short_wait
    create = aiokafka_driver.AIOKafkaConsumerThread._create_worker_consumer
    assert create is app._read_committed_worker_consumer


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


def test_faust_still_fetches_with_a_one_second_wait() -> None:
    source = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert "getmany(timeout=1.0)" in source


def test_faust_still_switches_isolation_on_in_transaction() -> None:
    source = inspect.getsource(aiokafka_driver.AIOKafkaConsumerThread)
    assert "read_committed" in source
    assert "in_transaction" in source
