"""The quarantine's sealed format: round trips, and refuses any tampering."""

from __future__ import annotations

import os

import pytest

from streams.errors import IntegrityError
from streams.quarantine import BLOCK, seal, unseal

KEY = bytes(range(32))
OBJECT = "quarantine/acme/u1"


def sealed(data: bytes, pieces: int = 3) -> bytes:
    step = max(1, len(data) // pieces)
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    return b"".join(seal(iter(chunks), KEY, OBJECT))


def opened(blob: bytes, object_key: str = OBJECT, key: bytes = KEY) -> bytes:
    pieces = [blob[i : i + 7000] for i in range(0, len(blob), 7000)]
    return b"".join(unseal(iter(pieces), key, object_key))


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    blob = sealed(data)
    assert opened(blob) == data
    if size >= 16:
        assert data[:16] not in blob  # nothing readable at rest


def test_a_flipped_bit_is_refused() -> None:
    blob = bytearray(sealed(os.urandom(BLOCK + 10)))
    blob[100] ^= 1
    with pytest.raises(IntegrityError):
        opened(bytes(blob))


def test_a_truncated_file_is_refused() -> None:
    blob = sealed(os.urandom(2 * BLOCK + 10))
    # Cut at the boundary after the first whole block: still refused.
    first_block_end = 12 + 4 + BLOCK + 16
    for cut in (len(blob) - 1, first_block_end, 12):
        with pytest.raises(IntegrityError):
            opened(blob[:cut])


def test_trailing_data_is_refused() -> None:
    with pytest.raises(IntegrityError):
        opened(sealed(b"payload") + b"extra")


def test_another_object_key_or_key_cannot_open_it() -> None:
    blob = sealed(b"EICAR-like payload")
    with pytest.raises(IntegrityError):
        opened(blob, object_key="quarantine/other/u1")
    with pytest.raises(IntegrityError):
        opened(blob, key=bytes(32))


def test_not_a_sealed_file() -> None:
    with pytest.raises(IntegrityError, match="not a sealed"):
        opened(b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR")
