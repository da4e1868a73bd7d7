"""One writer per upload, across every gateway instance: leases plus fencing.

A request that changes an upload (PATCH, DELETE, creation with a body or an
Idempotency-Key, concatenation, expiry) first takes the upload's *lease*: it
commits the upload's state with ``lease_holder`` set to itself and
``lease_expires_at`` a few seconds ahead, through the upload's own
transactional producer. Taking it goes:

1. Refuse (423) when this process already serves the upload, or the latest
   state this instance has read shows another live holder.
2. Get the upload's writer. A writer not already held here initialises the
   upload's transactional id, which fences every other producer of it (on
   any instance) and aborts its open transaction.
3. Having fenced, read the upload's partition of ``upload-state`` up to its
   end: the state is now exact, and nobody else can commit until someone
   initialises the id again.
4. Refuse (423) if that exact state shows another live holder; otherwise
   commit the lease.

A holder that finds itself fenced mid-request (someone passed step 2 and
stopped at step 4) initialises again, rereads, and carries on only while the
lease is still its own and the offset unchanged. So two requests never both
commit, and the one already writing keeps going while the newcomer gets 423.
A holder that finds the upload taken (its lease lapsed while it stalled, and
another request went on) gets 423 and never commits again, not even to
release: its state is stale, and writing it would roll the upload back.

Leases are renewed by every commit and by :meth:`Exclusive.keepalive` while
a slow body arrives, and released by the request's last commit. A holder
that dies leaves a lease that lapses after ``SLUICE_GATEWAY_LEASE_S``; an
instance restarted under the same name recognises its predecessor's leases
(same instance, other boot id) and takes them over at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ingest_gateway.errors import Busy, Fenced
from ingest_gateway.producer import UploadWriter, UploadWriters
from ingest_gateway.state import UNFINISHED, UploadStates
from streams.errors import KafkaUnavailable, Locked
from streams.events import now_ms
from streams.logs import get_logger

log = get_logger(__name__)

# How often a holder fences back in one commit. Each newcomer fences once or
# twice before it sees the lease and gives up, so a holder racing a few of
# them at once would otherwise lose to the last, leaving nobody writing.
REFENCES = 3

ChunkSource = Callable[[], Iterable[dict[str, Any]]]
Check = Callable[[dict[str, Any] | None], dict[str, Any]]


@dataclass
class Writers:
    """What a lease needs from its gateway instance."""

    states: UploadStates
    writers: UploadWriters
    instance: str
    boot: str
    lease_s: float
    busy: set[str] = field(default_factory=set)

    def holder(self, request_id: str) -> str:
        return f"{self.instance}/{self.boot}/{request_id}"

    def held_elsewhere(self, state: dict[str, Any] | None, me: str) -> float:
        """Seconds left on another live holder's lease, or 0 when free."""
        if state is None or not state.get("lease_holder"):
            return 0.0
        holder: str = state["lease_holder"]
        left = ((state.get("lease_expires_at") or 0) - now_ms()) / 1000
        if holder == me or left <= 0:
            return 0.0
        instance, boot, _ = (holder.split("/") + ["", ""])[:3]
        if instance == self.instance and boot != self.boot:
            return 0.0  # our predecessor under this name: it is dead
        if instance == self.instance and state["upload_id"] not in self.busy:
            return 0.0  # this process, but the request is gone
        return left


class Exclusive:
    """One request's exclusive right to write one upload."""

    def __init__(
        self, owner: Writers, writer: UploadWriter, state: dict[str, Any], me: str
    ) -> None:
        self.state = state
        self._owner = owner
        self._me = me
        self._renewed = time.monotonic()
        self._released = False
        self._leased = False
        # Set once another request is found holding the upload: from then on
        # this one must never commit, not even to release (it would write
        # its stale state over the other's).
        self._lost = False
        self._unreachable = False
        self._writer: UploadWriter | None = writer

    async def commit(
        self,
        new_state: dict[str, Any],
        chunks: ChunkSource | None = None,
        chunks_topic: str | None = None,
        *,
        release: bool = False,
    ) -> dict[str, Any]:
        """Commit new_state (and chunks) under the lease; renew or release it."""
        owner = self._owner
        state = dict(new_state)
        state["updated_at"] = max(now_ms(), self.state["updated_at"] + 1)
        if release:
            state["lease_holder"] = None
            state["lease_expires_at"] = None
        else:
            state["lease_holder"] = self._me
            state["lease_expires_at"] = now_ms() + int(owner.lease_s * 1000)

        if self._lost:
            raise Locked("another request took this upload", reason="locked")
        for attempt in range(REFENCES + 1):
            try:
                if self._writer is None:
                    await self._refence()
                assert self._writer is not None
                await asyncio.to_thread(
                    self._writer.transaction,
                    state,
                    chunks() if chunks is not None else (),
                    chunks_topic,
                )
                break
            except Fenced:
                await self._drop_writer()
                if attempt == REFENCES:
                    log.warning("lease.refused", cause="fenced-every-time")
                    raise Locked(
                        "another request took this upload", reason="locked"
                    ) from None
            except KafkaUnavailable:
                await self._drop_writer()
                # Releasing would need Kafka too: let the lease lapse.
                self._unreachable = True
                raise
        self.state = state
        owner.states.put(state)
        self._renewed = time.monotonic()
        self._released = release
        self._leased = not release
        return state

    async def _drop_writer(self) -> None:
        if self._writer is not None:
            await self._owner.writers.discard(self._writer)
            self._writer = None

    async def _refence(self) -> None:
        """Fenced: fence back, and check nothing moved.

        Holding the lease, it must still be ours. Taking it (the writer was
        fenced while it sat idle here), nobody else may hold it now. Either
        way the upload must be where this request saw it.
        """
        owner = self._owner
        self._writer, _ = await owner.writers.get(self.state["upload_id"])
        await asyncio.to_thread(
            owner.states.sync_upload, self.state["upload_id"], fenced=True
        )
        current = owner.states.get(self.state["upload_id"])
        if current is None and not self._leased:
            return  # a creation: nothing was there, nothing is
        ours = current is not None and (
            current.get("lease_holder") == self._me
            if self._leased
            else not owner.held_elsewhere(current, self._me)
        )
        if (
            current is None
            or not ours
            or current["offset"] != self.state["offset"]
            or current["status"] != self.state["status"]
            or current["length"] != self.state["length"]
        ):
            self._lost = True
            # The writer just fenced everyone else's and is healthy: keep it
            # for this upload's next request, which decides on the state
            # synced here instead of fencing once more (see acquire).
            await owner.writers.put_back(self._writer)
            self._writer = None
            log.warning(
                "lease.lost",
                holder=(current or {}).get("lease_holder"),
                offset=(current or {}).get("offset"),
            )
            raise Locked("another request took this upload", reason="locked")
        log.warning("lease.refenced")

    async def keepalive(self) -> None:
        """Renew the lease when a third of it has passed without a commit."""
        if time.monotonic() - self._renewed > self._owner.lease_s / 3:
            await self.commit(self.state)

    async def release(self) -> None:
        """Give the lease up (best effort: a lease lapses by itself anyway)."""
        try:
            if not (self._released or self._lost or self._unreachable):
                await self.commit(self.state, release=True)
        except (KafkaUnavailable, Locked) as exc:
            log.warning("lease.release_failed", error=str(exc))
        finally:
            await self.drop()

    async def drop(self) -> None:
        """Stop using the upload: keep a healthy writer for its next request.

        An upload that is finished (complete, terminated, expired) will have
        no next request, so its writer is closed at once instead of idling.
        """
        owner = self._owner
        try:
            if self._writer is not None:
                if self.state["status"] in UNFINISHED:
                    await owner.writers.put_back(self._writer)
                else:
                    await owner.writers.discard(self._writer)
                self._writer = None
        finally:
            owner.busy.discard(self.state["upload_id"])


async def acquire(
    owner: Writers, upload_id: str, request_id: str, check: Check
) -> Exclusive:
    """Take the upload's lease, or raise Locked (423).

    check receives the exact current state (None if the upload does not
    exist yet) and returns the state to lease, or raises the client error
    that state calls for (404, 410, ...).
    """
    me = owner.holder(request_id)
    if upload_id in owner.busy:
        log.info("lease.refused", cause="busy-on-this-instance")
        raise _locked(owner.lease_s)
    left = owner.held_elsewhere(owner.states.get(upload_id), me)
    if left:
        # Perhaps released already and not yet read here: look again.
        await asyncio.to_thread(owner.states.sync_upload, upload_id)
        left = owner.held_elsewhere(owner.states.get(upload_id), me)
        if left:
            log.info("lease.refused", cause="held", holder=_holder(owner, upload_id))
            raise _locked(left)

    owner.busy.add(upload_id)
    writer: UploadWriter | None = None
    exclusive: Exclusive | None = None
    try:
        writer, fresh = await owner.writers.get(upload_id)
        synced = False
        while True:
            if fresh and not synced:
                await asyncio.to_thread(
                    owner.states.sync_upload, upload_id, fenced=True
                )
                synced = True
            current = owner.states.get(upload_id)
            base = check(current)
            left = owner.held_elsewhere(current, me)
            if left and not synced:
                # A pooled writer's view may lag another instance's release.
                await asyncio.to_thread(owner.states.sync_upload, upload_id)
                synced = True
                continue
            if left:
                log.info(
                    "lease.refused", cause="held", holder=_holder(owner, upload_id)
                )
                raise _locked(left)
            exclusive, writer = Exclusive(owner, writer, current or base, me), None
            try:
                await exclusive.commit(base)
                return exclusive
            except Locked:
                await exclusive._drop_writer()
                if synced or not exclusive._lost:
                    raise  # decided on the exact state, or another is taking it
            # The pooled writer had been fenced: another instance wrote the
            # upload since this one last did, so what check saw was stale.
            # Decide again on the state _refence synced, with its writer.
            exclusive, synced = None, True
            writer, fresh = await owner.writers.get(upload_id)
    except BaseException:
        if exclusive is not None:
            await exclusive.drop()
        else:
            if writer is not None:
                await owner.writers.put_back(writer)
            owner.busy.discard(upload_id)
        raise


def _holder(owner: Writers, upload_id: str) -> str | None:
    state = owner.states.get(upload_id)
    return None if state is None else state.get("lease_holder")


def _locked(seconds: float) -> Busy:
    return Busy(
        "another request is writing this upload",
        retry_after=max(1, math.ceil(seconds)),
    )
