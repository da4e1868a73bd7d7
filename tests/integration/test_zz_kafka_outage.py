"""Kafka unreachable: 503 with Retry-After, and nothing acknowledged is lost.

Named to run last: it stops the test stack's Kafka and starts it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from streams.storage import ObjectStore

from .conftest import TUS, create_upload, patch_upload, stack_script, stored_bytes


def _retry_503(call: Callable[[], httpx.Response], timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = call()
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code != 503:
            return response
        assert time.monotonic() < deadline, "still unavailable"
        time.sleep(1)


def test_kafka_outage_is_503_and_acknowledged_bytes_survive(
    gateway: httpx.Client,
    auth: dict[str, str],
    store: ObjectStore,
    result_of: Callable[..., dict[str, Any]],
) -> None:
    data = os.urandom(6 * 1024 * 1024 + 5)
    half = 3 * 1024 * 1024
    location = create_upload(gateway, auth, len(data)).headers["Location"]
    assert patch_upload(gateway, auth, location, 0, data[:half]).status_code == 204

    stack_script("kafka.sh", "stop")
    try:
        refused = patch_upload(gateway, auth, location, half, data[half:])
        head = gateway.head(location, headers={**TUS, **auth})
    finally:
        stack_script("kafka.sh", "start")

    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert head.status_code == 503

    head = _retry_503(
        lambda: gateway.head(location, headers={**TUS, **auth}), timeout_s=120
    )
    assert head.headers["Upload-Offset"] == str(half)
    resumed = _retry_503(
        lambda: patch_upload(gateway, auth, location, half, data[half:]),
        timeout_s=60,
    )
    assert resumed.status_code == 204
    result = result_of(location.rsplit("/", 1)[-1], timeout_s=240)
    assert stored_bytes(store, result) == data
