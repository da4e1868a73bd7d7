"""Priority lanes: which lane a file's stage events travel in.

A file is ``bulk`` when it is at least ``SLUICE_BULK_THRESHOLD_BYTES`` or its
upload metadata says ``priority=bulk``; otherwise it is ``interactive``. The
lane is a function of the record alone, so every stage (and every replay)
puts a file in the same lane.
"""

from __future__ import annotations

from typing import Any

from streams.config import Settings


def lane_of(record: dict[str, Any], settings: Settings) -> str:
    """``bulk`` or ``interactive`` for one FileStage record."""
    priority = str(record.get("metadata", {}).get("priority", "")).lower()
    if priority == "bulk" or record.get("size", 0) >= settings.bulk_threshold_bytes:
        return "bulk"
    return "interactive"
