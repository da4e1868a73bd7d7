"""Avro encoding of every event, framed so a reader can find the writer's schema.

Framing is Avro single-object encoding: ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's canonical form, then the
binary body. Readers resolve the writer schema from the fingerprint among the
schemas under ``schemas/avro/`` (current and retired versions alike) and read
it into their own version of the record, so schemas evolve by Avro's rules.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from streams.errors import DecodeError

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "avro"


@dataclass(frozen=True)
class Schema:
    """One parsed schema version and its fingerprint."""

    name: str
    parsed: dict[str, Any]
    fingerprint: bytes


def _load(path: Path) -> Schema:
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw, _write_hint=False)
    if not isinstance(parsed, dict):
        raise ValueError(f"{path.name}: an event schema must be a record")
    canonical = to_parsing_canonical_form(parsed)
    digest = int(fingerprint(canonical, "CRC-64-AVRO"), 16)
    return Schema(
        name=raw["name"],
        parsed=parsed,
        fingerprint=struct.pack("<Q", digest),
    )


@lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, Schema], dict[bytes, Schema]]:
    """Current schema per record name, and every known version by fingerprint.

    Files directly under schemas/avro are current; schemas/avro/retired holds
    older versions kept so today's readers can still read yesterday's writers.
    """
    current: dict[str, Schema] = {}
    by_fingerprint: dict[bytes, Schema] = {}
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        schema = _load(path)
        current[schema.name] = schema
        by_fingerprint[schema.fingerprint] = schema
    for path in sorted((SCHEMA_DIR / "retired").glob("*.avsc")):
        schema = _load(path)
        by_fingerprint.setdefault(schema.fingerprint, schema)
    return current, by_fingerprint


def schema(name: str) -> Schema:
    """The current schema of a record, by its short name (e.g. ``Chunk``)."""
    return _registry()[0][name]


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Encode a record with the current version of its schema."""
    writer = schema(name)
    buffer = io.BytesIO()
    buffer.write(MAGIC)
    buffer.write(writer.fingerprint)
    fastavro.schemaless_writer(buffer, writer.parsed, record)
    return buffer.getvalue()


Buffers = Sequence[bytes | bytearray | memoryview]


def encode_spliced(name: str, record: dict[str, Any], field: str) -> bytes:
    """encode(), with one ``bytes`` field given as a sequence of buffers.

    The buffers are copied once, straight into the message: for chunk
    events, whose data is most of the message and arrives in pieces, this
    saves the copies a joined value and a growing encoder buffer would make.
    The result is byte-identical to :func:`encode` of the joined value.
    """
    writer = schema(name)
    head, tail = _split(name, field)
    buffers: Buffers = record[field]
    if isinstance(buffers, bytes | bytearray | memoryview):
        buffers = [buffers]
    before = io.BytesIO()
    fastavro.schemaless_writer(before, head, record)
    after = io.BytesIO()
    fastavro.schemaless_writer(after, tail, record)
    size = sum(memoryview(b).nbytes for b in buffers)
    return b"".join(
        [
            MAGIC,
            writer.fingerprint,
            before.getvalue(),
            _avro_long(size),
            *buffers,
            after.getvalue(),
        ]
    )


@cache
def _split(name: str, field: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record's fields before and after a ``bytes`` field, as records.

    A record's binary encoding is its fields' encodings one after another,
    so the two halves around the field's own encoding make the whole.
    """
    parsed = schema(name).parsed
    names = [f["name"] for f in parsed["fields"]]
    index = names.index(field)
    if parsed["fields"][index]["type"] != "bytes":
        raise ValueError(f"{name}.{field} is not a bytes field")

    def part(suffix: str, fields: list[dict[str, Any]]) -> dict[str, Any]:
        raw = {"type": "record", "name": f"{name}{suffix}", "fields": fields}
        parsed_part = parse_schema(raw, _write_hint=False)
        assert isinstance(parsed_part, dict)
        return parsed_part

    return (
        part("Head", parsed["fields"][:index]),
        part("Tail", parsed["fields"][index + 1 :]),
    )


def _avro_long(value: int) -> bytes:
    """Avro's zig-zag varint encoding of a long."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def decode(name: str, payload: bytes) -> dict[str, Any]:
    """Decode a framed message into the current version of record ``name``.

    Raises DecodeError for anything that is not a framed record this reader
    can resolve: the caller dead-letters it instead of crashing a partition.
    """
    if len(payload) < HEADER_LEN or payload[:2] != MAGIC:
        raise DecodeError("not an Avro single-object encoded message")

    writer = _registry()[1].get(payload[2:HEADER_LEN])
    if writer is None:
        raise DecodeError("unknown writer schema fingerprint")
    reader = schema(name)
    if writer.name != reader.name:
        raise DecodeError(f"expected {reader.name}, got {writer.name}")

    try:
        record = fastavro.schemaless_reader(
            io.BytesIO(payload[HEADER_LEN:]), writer.parsed, reader.parsed
        )
    except Exception as exc:  # fastavro raises many unrelated types
        raise DecodeError(f"invalid {name} body: {exc}") from exc
    if not isinstance(record, dict):
        raise DecodeError(f"invalid {name} body")
    return _plain(record)


def _plain(value: Any) -> Any:
    """Timestamps back to epoch milliseconds, as every producer writes them.

    fastavro turns timestamp-millis into datetimes on read; Sluice's code
    compares and stores them as integers, so readers get what writers gave.
    """
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
