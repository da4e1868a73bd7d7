"""Appending a request body to an upload: PATCH, and creation-with-upload.

The body is written to Kafka as it arrives, one transaction per batch, each
holding the batch's chunks and the upload's new offset. While one batch
commits the next one is read, so the client is not stalled by Kafka round
trips. A request holds a share of the gateway's in-flight budget
(``ingest_gateway.limits.Budget``) worth three batches (the one being read,
the one committing, and the producer's copy of it); batches are as large as
``SLUICE_GATEWAY_BATCH_BYTES`` when few requests run, and shrink towards one
chunk, batch by batch, as more share the budget, so memory stays bounded. A
client that disconnects keeps every byte that arrived: what was buffered is
committed before the request ends.

With ``Upload-Checksum`` nothing may be stored unless the whole body matches,
so the body is spooled (memory, then disk) and verified first.

Limits: a body that overruns the upload's length is refused with 413 once
the overrun arrives; batches committed before that point stay committed, and
HEAD reports them.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ingest_gateway import tus
from ingest_gateway.limits import Budget
from ingest_gateway.producer import cut_chunks, final_marker
from ingest_gateway.session import Exclusive
from streams.config import Settings
from streams.errors import (
    ChecksumMismatch,
    Conflict,
    InvalidRequest,
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


class BodyWriter:
    """Writes one request body into one leased upload."""

    def __init__(
        self,
        exclusive: Exclusive,
        settings: Settings,
        budget: Budget,
        limit: int,
    ) -> None:
        self._exclusive = exclusive
        self._settings = settings
        self._budget = budget
        self._limit = limit
        self._batch = settings.gateway_batch_bytes
        state = exclusive.state
        self._topic = settings.topic(
            PARTIAL_CHUNKS if state.get("concat") == "PARTIAL" else CHUNKS
        )

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
        """Batch size from this body's current share of the budget."""
        chunk = self._settings.chunk_bytes
        size = await self._share.resize()
        self._batch = max(chunk, size // 3 // chunk * chunk)
        return self._batch

    async def _stream(self, request: Request, remaining: int) -> int:
        """Commit the body batch by batch as it arrives.

        A batch is the list of pieces the server handed over: they are not
        joined here, so the event loop copies nothing; each chunk event is
        encoded straight from them in the committing thread.
        """
        batch_bytes = self._batch
        pieces: list[bytes] = []
        buffered = 0
        pending: asyncio.Task[None] | None = None
        received = 0
        try:
            async for piece in request.stream():
                received += len(piece)
                if received > remaining:
                    raise PayloadTooLarge(
                        "body exceeds Upload-Length", reason="exceeds-length"
                    )
                if piece:
                    pieces.append(piece)
                    buffered += len(piece)
                if buffered >= batch_bytes:
                    if pending is not None:
                        await pending
                    pending = asyncio.create_task(
                        self._commit(pieces, buffered, last=False)
                    )
                    pieces, buffered = [], 0
                    batch_bytes = await self._resize()
                elif pending is None or pending.done():
                    if pending is not None:
                        await pending
                        pending = None
                    await self._exclusive.keepalive()
        except ClientDisconnect:
            log.info("chunk.client_disconnected", received=received)
        except BaseException:
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
            raise
        if pending is not None:
            await pending
        if pieces:
            await self._commit(pieces, buffered, last=True)
        return received

    async def _verified(
        self,
        request: Request,
        remaining: int,
        checksum: tuple[tus.Hasher, bytes],
    ) -> int:
        """Spool and verify the whole body, then commit it batch by batch."""
        hasher, expected = checksum
        batch_bytes = self._batch
        received = 0
        with tempfile.SpooledTemporaryFile(max_size=batch_bytes) as spool:
            try:
                async for piece in request.stream():
                    received += len(piece)
                    if received > remaining:
                        raise PayloadTooLarge(
                            "body exceeds Upload-Length", reason="exceeds-length"
                        )
                    hasher.update(piece)
                    spool.write(piece)
                    await self._exclusive.keepalive()
            except ClientDisconnect:
                # The checksum covers the whole body: a part proves nothing.
                log.warning("chunk.interrupted_with_checksum", received=received)
                raise InvalidRequest(
                    "body ended before the checksum could be verified",
                    reason="interrupted",
                ) from None
            if hasher.digest() != expected:
                raise ChecksumMismatch("checksum mismatch", reason="checksum")

            spool.seek(0)
            left = received
            while left:
                data = spool.read(min(batch_bytes, left))
                left -= len(data)
                await self._commit([data], len(data), last=left == 0)
        return received

    async def _commit(self, pieces: list[bytes], size: int, *, last: bool) -> None:
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
