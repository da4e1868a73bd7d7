"""Every platform topic, declared once: name, partitions, retention, compaction.

``sluice topics apply`` creates what is missing from this declaration; the
agents and the gateway refer to topics only through these constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.config import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic's declaration. ``partitions=None`` takes the platform default.

    ``transactional`` topics are written in Kafka transactions, so commit
    markers sit between their records (the worker's fetch loop counts a
    one-offset jump there as a marker).
    """

    name: str
    doc: str
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    transactional: bool = False


CHUNKS = "chunks"
PARTIAL_CHUNKS = "chunks.partial"
UPLOAD_STATE = "upload-state"
ASSEMBLED = "files.assembled"
SCANNED = "files.scanned"
TYPED = "files.typed"
DEDUPLICATED = "files.deduplicated"
RESULTS = "results"
AUDIT = "audit"
DEAD_LETTER = "deadletter"
DLQ_REPLAYS = "deadletter.replays"

# Stage topics come in two lanes, so a bulk file (large, or marked
# priority=bulk) never waits in front of small interactive ones: each lane
# has its own topic and its own agents. The interactive lane keeps the bare
# name; the bulk lane adds ".bulk".
LANES = ("interactive", "bulk")
# files.typed is one topic: dedupe is quick, and its tables must be fed by
# exactly one source topic to stay co-partitioned with it.
LANED = (ASSEMBLED, SCANNED, DEDUPLICATED)


STAGES = (ASSEMBLED, SCANNED, TYPED, DEDUPLICATED)


def for_lane(name: str, lane: str) -> str:
    """The topic short name of a stage topic in one lane (one for both, if unlaned)."""
    if name not in STAGES or lane not in LANES:
        raise ValueError(f"{name!r} has no lane {lane!r}")
    return f"{name}.bulk" if lane == "bulk" and name in LANED else name


def stage_topics() -> tuple[str, ...]:
    """Every stage topic's short name, each lane's, once."""
    return tuple(dict.fromkeys(for_lane(n, lane) for n in STAGES for lane in LANES))


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        CHUNKS,
        "Upload bytes, keyed by upload id. Kept until assembled and past expiry.",
        config={"retention.ms": str(7 * DAY_MS), "max.message.bytes": "1048576"},
        transactional=True,
    ),
    TopicSpec(
        PARTIAL_CHUNKS,
        "Bytes of tus partial uploads, keyed by upload id. No agent reads them: "
        "the gateway copies them into chunks when a final upload joins them.",
        config={"retention.ms": str(7 * DAY_MS), "max.message.bytes": "1048576"},
        transactional=True,
    ),
    TopicSpec(
        UPLOAD_STATE,
        "Gateway upload state, keyed by upload id; the latest record wins.",
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        transactional=True,
    ),
    TopicSpec(ASSEMBLED, "Files assembled in staging, keyed by upload id."),
    TopicSpec(SCANNED, "Files scanned by clamd, keyed by upload id."),
    TopicSpec(TYPED, "Files type-checked, keyed by tenant:sha256 for dedupe."),
    TopicSpec(DEDUPLICATED, "Files after dedupe, keyed by upload id."),
    TopicSpec(f"{ASSEMBLED}.bulk", "Bulk lane of files.assembled."),
    TopicSpec(f"{SCANNED}.bulk", "Bulk lane of files.scanned."),
    TopicSpec(f"{DEDUPLICATED}.bulk", "Bulk lane of files.deduplicated."),
    TopicSpec(
        RESULTS,
        "One terminal result per upload, keyed by upload id.",
        config={"retention.ms": str(30 * DAY_MS)},
    ),
    TopicSpec(
        AUDIT,
        "Audit events, keyed by tenant.",
        config={"retention.ms": str(90 * DAY_MS)},
    ),
    TopicSpec(
        DEAD_LETTER,
        "Messages agents gave up on, with category and attempts.",
        partitions=1,
        config={"retention.ms": str(30 * DAY_MS)},
    ),
    TopicSpec(
        DLQ_REPLAYS,
        "Which dead letters were replayed, keyed by dead-letter event id.",
        partitions=1,
        config={"cleanup.policy": "compact"},
    ),
)


def partitions_of(spec: TopicSpec, settings: Settings) -> int:
    return spec.partitions or settings.topic_partitions
