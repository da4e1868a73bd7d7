"""A streaming clamd client (INSTREAM over TCP) that fails closed.

The file goes to clamd in bounded pieces, so memory stays flat whatever its
size. Anything but a clear ``OK`` or ``FOUND`` reply is an error: a file is
clean only when clamd has scanned all of it and said so.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from streams.errors import ScanUnavailable

PIECE = 256 * 1024

# Signatures clamd reports under AlertExceedsMax / AlertEncrypted: the file was
# not (fully) scanned, so it is suspicious, never clean and never "infected".
NOT_FULLY_SCANNED = ("Heuristics.Limits.Exceeded", "Heuristics.Encrypted")


@dataclass(frozen=True)
class ScanReply:
    status: str  # CLEAN, INFECTED or SUSPICIOUS
    signature: str | None


class Clamd:
    """One TCP conversation per command; clamd handles each independently."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self._address = (host, port)
        self._timeout = timeout_s

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
        return self._command(b"PING") == "PONG"

    def version(self) -> str:
        return self._command(b"VERSION")

    def scan(self, blocks: Iterable[bytes]) -> ScanReply:
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
