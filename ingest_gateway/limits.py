"""Backpressure: the gateway's memory and in-flight budgets, tenants' rates.

A request that would take the gateway past a budget is refused at once with
503 and ``Retry-After`` rather than queued, so memory stays bounded however
many clients push at once; nothing acknowledged is affected, and tus clients
retry 503s. A tenant over its request rate gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time

from ingest_gateway.errors import Overloaded, TooManyRequests
from streams.config import Settings

_PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_TRACKED_TENANTS = 10_000


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * _PAGE


class Budget:
    """Bytes that request bodies may hold in memory at once, and a ceiling on RSS.

    Every body being written holds a *share* of ``max_inflight``. Shares are
    fair: the budget split among the writers, within ``[smallest, largest]``.
    A writer is admitted while every writer, itself included, could hold the
    smallest share; otherwise, or over ``max_rss``, it is refused at once
    (503). A writer resizes its share at each batch, so when more arrive the
    earlier ones give back what exceeds their fair part, and a newcomer
    waits for that rather than being refused. The sum of shares never
    exceeds ``max_inflight``; a writer that shrinks still has its batch in
    flight until that commits.
    """

    def __init__(
        self,
        max_inflight: int,
        max_rss: int,
        *,
        smallest: int,
        largest: int,
        wait_s: float = 5.0,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_rss = max_rss
        self.smallest = min(smallest, max_inflight)
        self.largest = max(self.smallest, largest)
        self.wait_s = wait_s
        self.inflight = 0
        self.holders = 0
        # Writers waiting for their first share: others give back their
        # excess for them without waiting for a full batch.
        self.waiting = 0
        self._freed = asyncio.Condition()

    def admit(self) -> Share:
        """A share for one more body, or Overloaded (503) when none can fit."""
        if (self.holders + 1) * self.smallest > self.max_inflight:
            raise Overloaded("gateway is at its in-flight budget", retry_after=1)
        if rss_bytes() > self.max_rss:
            raise Overloaded("gateway is at its memory budget", retry_after=2)
        self.holders += 1
        return Share(self)

    def fair(self) -> int:
        """Each writer's part of the budget, as things stand."""
        part = self.max_inflight // max(1, self.holders)
        return max(self.smallest, min(self.largest, part))

    async def _changed(self) -> None:
        async with self._freed:
            self._freed.notify_all()


class Share:
    """One body's part of the in-flight budget; resized at every batch."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self.size = 0
        self._closed = False

    async def resize(self) -> int:
        """Move towards the fair part: give back any excess, or grow.

        A share starts at the smallest size and at most doubles per batch
        (a slow start, as TCP's): bodies arriving in a burst do not find the
        first of them holding the whole budget. Growing takes only what is
        free. The first call waits, up to the budget's ``wait_s``, while
        even the smallest share is not free (others give back their excess
        at their next batch); then it raises Overloaded (503).
        """
        budget = self._budget
        target = min(budget.fair(), max(budget.smallest, 2 * self.size))
        if self.size >= target:
            if self.size > target:
                budget.inflight -= self.size - target
                self.size = target
                await budget._changed()
            return self.size
        deadline = time.monotonic() + budget.wait_s
        async with budget._freed:
            while True:
                free = budget.max_inflight - budget.inflight
                grant = min(target - self.size, free)
                if self.size + grant >= budget.smallest:
                    budget.inflight += grant
                    self.size += grant
                    return self.size
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded(
                        "gateway is at its in-flight budget", retry_after=1
                    )
                budget.waiting += 1
                try:
                    await asyncio.wait_for(budget._freed.wait(), left)
                except TimeoutError:
                    pass
                finally:
                    budget.waiting -= 1

    def owes(self) -> bool:
        """Whether a waiting writer needs what this share holds beyond fair."""
        budget = self._budget
        return budget.waiting > 0 and self.size > budget.fair()

    async def close(self) -> None:
        """Give the whole share back."""
        if self._closed:
            return
        self._closed = True
        budget = self._budget
        budget.inflight -= self.size
        budget.holders -= 1
        self.size = 0
        await budget._changed()


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
