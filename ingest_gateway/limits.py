"""Backpressure: the gateway's memory and in-flight budgets, tenants' rates.

A request that would take the gateway past a budget is refused at once with
503 and ``Retry-After`` rather than queued, so memory stays bounded however
many clients push at once; nothing acknowledged is affected, and tus clients
retry 503s. A tenant over its request rate gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ingest_gateway.errors import Overloaded, TooManyRequests
from streams.config import Settings

_PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_TRACKED_TENANTS = 10_000


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * _PAGE


class Budget:
    """Bytes that requests may hold in memory at once, and a ceiling on RSS."""

    def __init__(self, max_inflight: int, max_rss: int) -> None:
        self.max_inflight = max_inflight
        self.max_rss = max_rss
        self.inflight = 0
        self.holders = 0

    def share(self, largest: int, smallest: int) -> int:
        """A fair part of what is left for one more holder, within bounds."""
        left = self.max_inflight - self.inflight
        # Leave room for the next one too, so a burst shrinks batches rather
        # than refusing requests.
        return max(smallest, min(largest, left // (self.holders + 2)))

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold size bytes for the block, or raise Overloaded (503)."""
        if self.inflight + size > self.max_inflight:
            raise Overloaded("gateway is at its in-flight budget", retry_after=1)
        if rss_bytes() > self.max_rss:
            raise Overloaded("gateway is at its memory budget", retry_after=2)
        self.inflight += size
        self.holders += 1
        try:
            yield
        finally:
            self.inflight -= size
            self.holders -= 1


class TenantRates:
    """A token bucket per tenant: rate requests per second, up to burst."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, tenant: str) -> None:
        """Spend one request of tenant's budget, or raise TooManyRequests."""
        now = time.monotonic()
        tokens, at = self._buckets.get(tenant, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[tenant] = (tokens, now)
            wait = math.ceil((1 - tokens) / self.rate)
            raise TooManyRequests(
                "tenant is over its request rate",
                retry_after=max(1, wait),
                reason="rate-limited",
            )
        if len(self._buckets) > MAX_TRACKED_TENANTS:
            self._buckets.clear()  # full buckets again: errs on the side of serving
        self._buckets[tenant] = (tokens - 1, now)


def tenant_limit(settings: Settings, tenant: str) -> int:
    """The largest upload a tenant may declare."""
    return min(
        settings.gateway_tenant_max_bytes.get(tenant, settings.max_upload_bytes),
        settings.max_upload_bytes,
    )
