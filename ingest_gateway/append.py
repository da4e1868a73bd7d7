"""Appending a request body to an upload: PATCH, and creation-with-upload.

The body is written to Kafka as it arrives, one transaction per batch, each
holding the batch's chunks and the upload's new offset. A request holds a
share of the gateway's in-flight budget (``ingest_gateway.limits.Budget``),
resized at every batch, and its batches are cut to fit in it:

- *Pipelined*, while the share holds three batches of the full
  ``SLUICE_GATEWAY_BATCH_BYTES`` (few requests running): the next batch is
  read while one commits (the batch being read, the one committing, and the
  producer's copy of it), so one fast client is not stalled by Kafka round
  trips.
- *Stop-and-wait* otherwise: a batch is half the share (the batch, and the
  producer's copy of it), and the body is not read while it commits; the
  client's bytes wait in the socket meanwhile. With many requests running
  the cores are busy with the others anyway, and a transaction half rather
  than a third of the share means half again fewer transactions, each of
  which costs the gateway and Kafka several round trips whatever its size.

Either way memory stays within the share, and batches shrink towards one
chunk as more requests share the budget. A client that disconnects keeps
every byte that arrived: what was buffered is committed before the request
ends.

With ``Upload-Checksum`` nothing may be stored unless the whole body matches,
so the body is spooled (memory, then disk) and verified first.

Limits: a body that overruns the upload's length is refused with 413 once
the overrun arrives; batches committed before that point stay committed, and
HEAD reports them.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ingest_gateway import tus
from ingest_gateway.errors import BodyTimeout, ShuttingDown
from ingest_gateway.limits import Budget
from ingest_gateway.producer import cut_chunks, final_marker
from ingest_gateway.session import Exclusive
from streams.codec import Buffers
from streams.config import Settings
from streams.errors import (
    ChecksumMismatch,
    Conflict,
    InvalidRequest,
    Locked,
    PayloadTooLarge,
)
from streams.events import now_ms
from streams.logs import get_logger
from streams.topics import CHUNKS, PARTIAL_CHUNKS

log = get_logger(__name__)


def advanced(state: dict[str, Any], offset: int, settings: Settings) -> dict[str, Any]:
    """state moved to offset: status and expiry follow."""
    new = dict(state, offset=offset)
    complete = state["length"] is not None and offset == state["length"]
    new["status"] = "COMPLETE" if complete else "RECEIVING"
    new["expires_at"] = (
        None if complete else now_ms() + int(settings.upload_expiry_s * 1000)
    )
    return new


def declare_length(
    state: dict[str, Any], declared: int | None, limit: int
) -> dict[str, Any]:
    """Apply an Upload-Length sent with a PATCH (creation-defer-length)."""
    if declared is None:
        return state
    if state["length"] is not None:
        if declared != state["length"]:
            raise InvalidRequest("Upload-Length is already set", reason="length")
        return state
    if declared > limit:
        raise PayloadTooLarge("upload exceeds the size limit", reason="too-large")
    if declared < state["offset"]:
        raise InvalidRequest("Upload-Length is below the offset", reason="length")
    return dict(state, length=declared)


def batch_plan(share: int, chunk: int, full: int) -> tuple[int, bool]:
    """Batch size for a share of the budget, and whether to pipeline.

    Pipelined (three batches in the share) only once that costs nothing in
    batch size; otherwise stop-and-wait, two batches in the share. Whole
    chunks, at least one.
    """
    pipelined = share // 3 >= full
    batch = full if pipelined else min(full, share // 2)
    return max(chunk, batch // chunk * chunk), pipelined


# How often a body waiting for its client looks whether it owes budget.
RECHECK_S = 0.5
# Pieces smaller than this are copied together (up to COALESCE_INTO bytes)
# rather than kept one object each: a client sending 1-byte frames would
# otherwise cost hundreds of bytes of bookkeeping per byte.
COALESCE_BELOW = 16 * 1024
COALESCE_INTO = 256 * 1024


class Pieces:
    """A batch of body pieces, in order, and their total size."""

    def __init__(self) -> None:
        self._pieces: list[bytes | bytearray] = []
        self.size = 0

    def add(self, piece: bytes) -> None:
        if not piece:
            return
        if len(piece) >= COALESCE_BELOW:
            self._pieces.append(piece)
        else:
            last = self._pieces[-1] if self._pieces else None
            if (
                not isinstance(last, bytearray)
                or len(last) + len(piece) > COALESCE_INTO
            ):
                last = bytearray()
                self._pieces.append(last)
            last += piece
        self.size += len(piece)

    def take(self) -> tuple[Buffers, int]:
        """The pieces so far, handed over; the batch starts again empty."""
        taken = (self._pieces, self.size)
        self._pieces, self.size = [], 0
        return taken


class BodyWriter:
    """Writes one request body into one leased upload."""

    def __init__(
        self,
        exclusive: Exclusive,
        settings: Settings,
        budget: Budget,
        limit: int,
        cut_off: asyncio.Event,
    ) -> None:
        self._exclusive = exclusive
        self._settings = settings
        self._budget = budget
        self._limit = limit
        # Set when the instance is stopping and its grace period is over.
        self._cut_off = cut_off
        self._batch = settings.gateway_batch_bytes
        self._pipelined = True
        state = exclusive.state
        self._topic = settings.topic(
            PARTIAL_CHUNKS if state.get("concat") == "PARTIAL" else CHUNKS
        )
        # Shared by the body loop and its quiet watcher (see _read).
        self._pieces = Pieces()
        self._pending: asyncio.Task[None] | None = None
        self._steps = asyncio.Lock()
        self._flushes = True
        self._heard = True
        self._reading = False
        self._interrupted: str | None = None
        self._failure: BaseException | None = None

    async def write(
        self,
        request: Request,
        checksum: tuple[tus.Hasher, bytes] | None,
        declared_length: int | None,
    ) -> dict[str, Any]:
        """Append the body; return the upload's state afterwards."""
        exclusive = self._exclusive
        state = declare_length(exclusive.state, declared_length, self._limit)
        if state["status"] == "COMPLETE":
            raise Conflict("upload is already complete", reason="complete")
        length = state["length"]
        remaining = (length if length is not None else self._limit) - state["offset"]
        announced = request.headers.get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > remaining:
            raise PayloadTooLarge("body exceeds Upload-Length", reason="exceeds-length")
        if state is not exclusive.state:
            exclusive.state = dict(exclusive.state, length=state["length"])

        self._share = self._budget.admit()
        try:
            await self._resize()
            if checksum is None:
                received = await self._stream(request, remaining)
            else:
                received = await self._verified(request, remaining, checksum)
        finally:
            await self._share.close()

        final = exclusive.state
        if (
            received == 0
            and final["length"] == final["offset"]
            and (final["status"] != "COMPLETE")
        ):
            # The length was declared after the last bytes: say so to the
            # assemble agent with an empty chunk at the end.
            marker = final_marker(final, final["length"])
            final = await exclusive.commit(
                advanced(final, final["offset"], self._settings),
                lambda: [marker],
                self._topic,
                release=True,
            )
        elif declared_length is not None and received == 0:
            final = await exclusive.commit(final, release=True)
        return final

    async def _resize(self) -> int:
        """Batch size and mode from this body's current share of the budget."""
        size = await self._share.resize()
        self._batch, self._pipelined = batch_plan(
            size, self._settings.chunk_bytes, self._settings.gateway_batch_bytes
        )
        return self._batch

    async def _stream(self, request: Request, remaining: int) -> int:
        """Commit the body batch by batch as it arrives.

        A batch is the list of pieces the server handed over: they are not
        joined here, so the event loop copies nothing (small pieces excepted,
        see :class:`Pieces`); each chunk event is encoded straight from them
        in the committing thread. When another body waits for budget this
        one holds beyond its fair part, what is buffered is committed early
        and the excess given back, also while the client sends nothing. A
        body that ends early (the client went away, was silent for
        ``gateway_body_idle_s``: 408, or the instance stopped: 503) keeps
        what arrived.
        """
        received, ended = await self._read(request, remaining, self._buffer)
        if self._pieces.size:
            pieces, size = self._pieces.take()
            await self._commit(pieces, size, last=True)
        self._raise_if_cut_short(ended)
        return received

    async def _buffer(self, piece: bytes) -> None:
        self._pieces.add(piece)
        pending = self._pending
        if self._pieces.size >= self._batch or (pending is None and self._share.owes()):
            await self._step(flush=True)
            if not self._pipelined:
                await self._step(settle=True)
        elif pending is None or pending.done():
            await self._step(flush=False)

    async def _read(
        self,
        request: Request,
        remaining: int,
        take: Callable[[bytes], Awaitable[None]],
        *,
        flushes: bool = True,
    ) -> tuple[int, str]:
        """Hand each body piece to take, with a quiet watcher alongside.

        Returns the bytes received and how the body ended: ``complete``,
        ``disconnected``, ``idle`` or ``shutdown``. Raises what take or a commit raised,
        once no commit is running any more.
        """
        self._flushes = flushes
        body = asyncio.current_task()
        assert body is not None
        received = 0
        ended = "complete"
        watcher = asyncio.create_task(self._watch_quiet(body))
        pieces_in = request.stream().__aiter__()
        try:
            while True:
                self._reading = True
                try:
                    piece = await pieces_in.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    self._reading = False
                self._heard = True
                received += len(piece)
                if received > remaining:
                    raise PayloadTooLarge(
                        "body exceeds Upload-Length", reason="exceeds-length"
                    )
                await take(piece)
        except ClientDisconnect:
            ended = "disconnected"
            log.info("chunk.client_disconnected", received=received)
        except asyncio.CancelledError:
            if self._interrupted is None:  # not ours: the server is stopping
                await self._abandon(watcher)
                raise
            body.uncancel()
            ended = self._interrupted
            log.warning("chunk.body_interrupted", why=ended, received=received)
        except BaseException:
            await self._abandon(watcher)
            raise
        await self._stop_watching(watcher)
        if self._failure is not None:
            raise self._failure
        if self._pending is not None:
            await self._pending  # raises what a failed commit raised
            self._pending = None
        return received, ended

    async def _step(self, *, flush: bool = False, settle: bool = False) -> None:
        """Settle the committing batch if done (or wait for it, if settle);
        start the next one if flush.

        The body loop and the quiet watcher both step; the lock keeps their
        commits, which share one transactional writer, one at a time.
        """
        async with self._steps:
            pending = self._pending
            if pending is not None and (flush or settle or pending.done()):
                await asyncio.shield(pending)  # raises what a failed commit raised
                self._pending = None
            if flush:
                if self._pieces.size:
                    pieces, size = self._pieces.take()
                    self._pending = asyncio.create_task(
                        self._commit(pieces, size, last=False)
                    )
                await self._resize()
            elif self._pending is None:
                await self._exclusive.keepalive()

    async def _watch_quiet(self, body: asyncio.Task[Any]) -> None:
        """While the client sends nothing: keep the lease, pay back budget,
        and end the body once it has been silent for ``gateway_body_idle_s``.

        The body loop acts only when a piece arrives; a client that stalls
        would otherwise hold a share a waiting body needs, let its lease
        lapse, or hold both for ever. One timer per request, rather than a
        timeout around every read, keeps the fast path free of it. Silence
        is counted only while the loop waits on the client, not while it
        waits on Kafka. A failed renewal is tried again at the next tick
        (Kafka may be back, the lease still ours); a lost lease or a failed
        commit ends the body at once rather than when the client next speaks.
        """
        idle_s = self._settings.gateway_body_idle_s
        silent_s = 0.0
        while True:
            await asyncio.sleep(RECHECK_S)
            if self._cut_off.is_set() and self._reading:
                self._interrupt(body, "shutdown")
                return
            if self._heard:
                self._heard = False
                silent_s = 0.0
                continue
            silent_s = silent_s + RECHECK_S if self._reading else 0.0
            if silent_s >= idle_s:
                self._interrupt(body, "idle")
                return
            pending = self._pending
            if pending is not None and pending.done():
                if pending.cancelled() or pending.exception() is not None:
                    self._interrupt(body, "failed")
                    return
            try:
                await self._step(
                    flush=self._flushes and pending is None and self._share.owes()
                )
            except Locked as exc:
                self._failure = exc
                self._interrupt(body, "failed")
                return
            except Exception as exc:
                log.warning("chunk.quiet_step_failed", error=str(exc))

    def _interrupt(self, body: asyncio.Task[Any], why: str) -> None:
        """End a body that waits on its client; never one inside a commit
        (the body loop then meets the failure itself, at its next step)."""
        if self._reading:
            self._interrupted = why
            body.cancel()

    async def _abandon(self, watcher: asyncio.Task[None]) -> None:
        """The body failed: stop watching and let the committing batch end."""
        await self._stop_watching(watcher)
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)

    async def _stop_watching(self, watcher: asyncio.Task[None]) -> None:
        """End the watcher between steps, never inside a commit."""
        async with self._steps:
            watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    def _raise_if_cut_short(self, ended: str) -> None:
        """The error of a body the gateway ended: silent, or stopping."""
        if ended == "idle":
            raise BodyTimeout(
                "no body bytes arrived for "
                f"{self._settings.gateway_body_idle_s:g} s; resume from HEAD",
                reason="body-idle",
            )
        if ended == "shutdown":
            raise ShuttingDown("this gateway instance is stopping; resume from HEAD")

    async def _verified(
        self,
        request: Request,
        remaining: int,
        checksum: tuple[tus.Hasher, bytes],
    ) -> int:
        """Spool and verify the whole body, then commit it batch by batch."""
        hasher, expected = checksum
        batch_bytes = self._batch
        with tempfile.SpooledTemporaryFile(max_size=batch_bytes) as spool:

            async def spooled(piece: bytes) -> None:
                hasher.update(piece)
                spool.write(piece)
                await self._step(flush=False)

            received, ended = await self._read(
                request, remaining, spooled, flushes=False
            )
            if ended != "complete":
                # The checksum covers the whole body: a part proves nothing.
                log.warning("chunk.interrupted_with_checksum", received=received)
                self._raise_if_cut_short(ended)
                raise InvalidRequest(
                    "body ended before the checksum could be verified",
                    reason="interrupted",
                )
            if hasher.digest() != expected:
                raise ChecksumMismatch("checksum mismatch", reason="checksum")

            spool.seek(0)
            left = received
            while left:
                data = spool.read(min(batch_bytes, left))
                left -= len(data)
                await self._commit([data], len(data), last=left == 0)
        return received

    async def _commit(self, pieces: Buffers, size: int, *, last: bool) -> None:
        exclusive = self._exclusive
        state = exclusive.state
        start = state["offset"]
        upload_length = state["length"] if state["length"] is not None else self._limit
        new = advanced(state, start + size, self._settings)
        chunks: Callable[[], Any] = lambda: cut_chunks(  # noqa: E731
            pieces,
            state=state,
            start_offset=start,
            chunk_bytes=self._settings.chunk_bytes,
            upload_length=upload_length,
        )
        await exclusive.commit(new, chunks, self._topic, release=last)
        log.info(
            "chunk.committed",
            offset=new["offset"],
            received=size,
            complete=new["status"] == "COMPLETE",
        )
