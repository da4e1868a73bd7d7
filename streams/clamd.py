"""A streaming clamd client (INSTREAM over TCP) that fails closed.

The file goes to clamd in bounded pieces, so memory stays flat whatever its
size. Anything but a clear ``OK`` or ``FOUND`` reply is an error: a file is
clean only when clamd has scanned all of it and said so.

A circuit breaker sits in front of clamd: after a run of failures it opens
and calls fail at once with ScanUnavailable (no connect timeouts piling up
in every agent), then lets one trial call through after a pause. Open or
closed, nothing is ever reported clean without a scan.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Gauge

from streams.errors import ScanPaused, ScanUnavailable
from streams.logs import get_logger

log = get_logger(__name__)

BREAKER_OPEN = Gauge(
    "sluice_clamd_breaker_open", "1 while the clamd circuit breaker is open"
)
T = TypeVar("T")

PIECE = 256 * 1024

# Signatures clamd reports under AlertExceedsMax / AlertEncrypted: the file was
# not (fully) scanned, so it is suspicious, never clean and never "infected".
NOT_FULLY_SCANNED = ("Heuristics.Limits.Exceeded", "Heuristics.Encrypted")


@dataclass(frozen=True)
class ScanReply:
    status: str  # CLEAN, INFECTED or SUSPICIOUS
    signature: str | None


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures, for ``reset_s`` seconds."""

    def __init__(
        self,
        threshold: int = 3,
        reset_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or reset_s <= 0:
            raise ValueError("threshold must be >= 1 and reset_s > 0")
        self._threshold = threshold
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None

    def call(self, action: Callable[[], T]) -> T:
        """Run action unless the breaker is open; count its failure or success."""
        with self._lock:
            if self._opened_at is not None:
                remaining = self._reset_s - (self._clock() - self._opened_at)
                if remaining > 0:
                    raise ScanPaused(
                        "clamd circuit breaker is open", retry_after_s=remaining
                    )
                # Half open: this call is the trial; others keep failing fast.
                self._opened_at = self._clock()
        try:
            result = action()
        except ScanUnavailable:
            self._failed()
            raise
        self._succeeded()
        return result

    def _failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self._threshold:
                if self._opened_at is None:
                    log.warning("clamd.breaker_opened", failures=self._failures)
                self._opened_at = self._clock()
                BREAKER_OPEN.set(1)

    def _succeeded(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.info("clamd.breaker_closed")
            self._failures = 0
            self._opened_at = None
            BREAKER_OPEN.set(0)


class Clamd:
    """One TCP conversation per command; clamd handles each independently."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._address = (host, port)
        self._timeout = timeout_s
        self._breaker = breaker or CircuitBreaker()

    def _connect(self) -> socket.socket:
        try:
            return socket.create_connection(self._address, timeout=self._timeout)
        except OSError as exc:
            raise ScanUnavailable(f"clamd unreachable: {exc}") from exc

    def _command(self, command: bytes) -> str:
        with self._connect() as conn:
            try:
                conn.sendall(b"z" + command + b"\0")
                return _read_reply(conn)
            except OSError as exc:
                raise ScanUnavailable(f"clamd {command!r} failed: {exc}") from exc

    def ping(self) -> bool:
        return self._breaker.call(lambda: self._command(b"PING")) == "PONG"

    def version(self) -> str:
        """Engine and signature database version, recorded with each verdict."""
        return self._breaker.call(lambda: self._command(b"VERSION"))

    def scan(self, blocks: Iterable[bytes]) -> ScanReply:
        """Stream blocks through INSTREAM; a verdict, or ScanUnavailable."""
        return self._breaker.call(lambda: self._instream(blocks))

    def _instream(self, blocks: Iterable[bytes]) -> ScanReply:
        with self._connect() as conn:
            try:
                conn.sendall(b"zINSTREAM\0")
                for block in blocks:
                    for start in range(0, len(block), PIECE):
                        piece = block[start : start + PIECE]
                        conn.sendall(struct.pack(">I", len(piece)) + piece)
                conn.sendall(struct.pack(">I", 0))
                reply = _read_reply(conn)
            except OSError as exc:
                raise ScanUnavailable(f"clamd INSTREAM failed: {exc}") from exc
        return parse_reply(reply)


def _read_reply(conn: socket.socket) -> str:
    data = bytearray()
    while True:
        piece = conn.recv(4096)
        if not piece:
            break
        data.extend(piece)
        if data.endswith(b"\0"):
            break
    return data.rstrip(b"\0").decode("utf-8", "replace").strip()


def parse_reply(reply: str) -> ScanReply:
    """Map clamd's reply to a verdict; any other reply raises ScanUnavailable."""
    if reply == "stream: OK":
        return ScanReply("CLEAN", None)
    if reply.startswith("stream: ") and reply.endswith(" FOUND"):
        signature = reply[len("stream: ") : -len(" FOUND")]
        if signature.startswith(NOT_FULLY_SCANNED):
            return ScanReply("SUSPICIOUS", signature)
        return ScanReply("INFECTED", signature)
    if "size limit exceeded" in reply:
        # clamd stopped reading at StreamMaxLength: the rest was never scanned.
        return ScanReply("SUSPICIOUS", "Sluice.Limits.StreamMaxLength")
    # Any other "... ERROR" or an empty reply: no verdict, never clean.
    raise ScanUnavailable(f"clamd gave no verdict: {reply[:200]!r}")
