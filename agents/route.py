"""Route agent: the verdict, the bytes' final place, the result and the audit.

Verdicts, in order of precedence:

- INFECTED: clamd found a signature.
- REJECTED: the deep checks found something the tenant's policy refuses.
- SUSPICIOUS: clamd could not scan all of it (limits, encryption), or the
  deep checks found something the policy quarantines (the default).
- CLEAN: clamd scanned every byte and found nothing, and every finding (if
  any) is one the tenant's policy allows.

Clean bytes go to their content-addressed place (so a tenant's duplicate is
stored once); everything else goes to quarantine under the upload id,
encrypted (``streams.quarantine``). The result is recorded in the upload's
routed marker, so a replay restates it exactly. Clean
tabular files name the warehouse dataset they load into. The result's
event_id is the upload id, so there is exactly one result per upload however
often this step is replayed.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import faust

from agents.deps import store
from agents.typecheck import extension
from streams import quarantine, storage, topics
from streams.config import Settings, get_settings
from streams.errors import IntegrityError
from streams.events import deterministic_id, now_ms
from streams.inspection import Action
from streams.logs import get_logger
from streams.names import safe_table_name
from streams.pipeline import Output, Sender, Step, register_laned
from streams.policy import action_for
from streams.routing import route_for

log = get_logger(__name__)

TABULAR_EXTENSIONS = frozenset({"csv", "tsv", "jsonl", "ndjson", "parquet"})


def verdict_of(stage: dict[str, Any]) -> tuple[str, str, str | None]:
    """(verdict, reason, signature) for a file that went through every check."""
    scan = stage.get("scan")
    if scan is None:
        # Never happens on the agents' own path; refuse rather than pass.
        return "SUSPICIOUS", "not scanned", None
    if scan["status"] == "INFECTED":
        return "INFECTED", f"malware signature {scan['signature']}", scan["signature"]
    if scan["status"] == "SUSPICIOUS":
        return (
            "SUSPICIOUS",
            f"not fully scanned ({scan['signature']})",
            scan["signature"],
        )
    if stage["findings"]:
        codes = ", ".join(stage["findings"])
        action = action_for(stage["tenant"], stage["findings"])
        if action is Action.REJECT:
            return "REJECTED", f"refused by policy: {codes}", None
        if action is Action.QUARANTINE:
            return "SUSPICIOUS", f"deep checks: {codes}", None
        return "CLEAN", f"no threats found (allowed by policy: {codes})", None
    return "CLEAN", "no threats found", None


def dataset_of(stage: dict[str, Any]) -> str | None:
    if extension(stage["filename"]) not in TABULAR_EXTENSIONS:
        return None
    requested = stage["metadata"].get("dataset")
    return safe_table_name(requested or PurePosixPath(stage["filename"]).stem)


def handle(stage: dict[str, Any], headers: dict[str, str]) -> list[Output]:
    tenant, upload_id = stage["tenant"], stage["upload_id"]
    objects = store()

    # A replay restates the result recorded when the upload was routed, to
    # the byte: one result per upload however often this step runs.
    marker = storage.routed_key(tenant, upload_id)
    result = routed_result(tenant, upload_id)
    if result is None:
        result = build_result(stage)
        # The marker goes before the move: from the moment the staged file
        # leaves, a replayed earlier stage must find the marker, never a
        # missing file and no marker. A crash between the two leaves the
        # marker and the staged file; the replay of this step finishes.
        objects.put(marker, json.dumps({"result": result}).encode("utf-8"))
        try:
            place(stage, result["verdict"], result["location"])
        except IntegrityError:
            objects.delete_prefix(marker)  # not routed after all: say so
            raise
        log.info(
            "file.routed",
            verdict=result["verdict"],
            duplicate=bool(stage["duplicate_of"]),
        )
    elif objects.exists(stage["staging_key"]):
        place(stage, result["verdict"], result["location"])
    objects.delete_prefix(storage.staging_prefix(tenant, upload_id))

    audit = {
        "event_id": deterministic_id(upload_id, "file.routed"),
        "occurred_at": result["completed_at"],
        "tenant": tenant,
        "actor": "system:route",
        "action": "file.routed",
        "target": upload_id,
        "outcome": result["verdict"].lower(),
        "correlation_id": result["correlation_id"],
        "detail": {"location": result["location"], "reason": result["reason"]},
    }
    return [
        Output(topics.RESULTS, upload_id.encode(), "FileResult", result),
        Output(topics.AUDIT, tenant.encode(), "AuditEvent", audit),
    ]


def routed_result(tenant: str, upload_id: str) -> dict[str, Any] | None:
    """The result recorded in the upload's routed marker, if it was routed."""
    objects = store()
    key = storage.routed_key(tenant, upload_id)
    if not objects.exists(key):
        return None
    marker = json.loads(objects.read_head(key, 1024 * 1024))
    result = marker.get("result") if isinstance(marker, dict) else None
    return result if isinstance(result, dict) else None


def build_result(stage: dict[str, Any]) -> dict[str, Any]:
    """The terminal FileResult of a stage that went through every check."""
    tenant, upload_id, sha256 = stage["tenant"], stage["upload_id"], stage["sha256"]
    verdict, reason, signature = verdict_of(stage)
    dataset = None
    if verdict == "CLEAN":
        routed = route_for(stage, extension(stage["filename"]), dataset_of(stage))
        location = routed.location
        # A duplicate's rows are already in the dataset under the first copy.
        dataset = None if stage["duplicate_of"] else routed.dataset
    else:
        location = storage.quarantine_key(tenant, upload_id)
    scan = stage.get("scan") or {}
    return {
        "event_id": upload_id,
        "upload_id": upload_id,
        "tenant": tenant,
        "filename": stage["filename"],
        "size": stage["size"],
        "sha256": sha256,
        "verdict": verdict,
        "reason": reason,
        "signature": signature,
        "engine": scan.get("engine"),
        "detected_mime": stage["detected_mime"],
        "findings": stage["findings"],
        "location": location,
        "duplicate_of": stage["duplicate_of"],
        "dataset": dataset,
        "correlation_id": stage["correlation_id"],
        "completed_at": now_ms(),
    }


def place(stage: dict[str, Any], verdict: str, destination: str) -> None:
    """Copy the staged bytes to their final place (sealed in quarantine)."""
    objects = store()
    if objects.exists(destination):
        return  # content-addressed: a tenant's duplicate, or a replay
    if not objects.exists(stage["staging_key"]):
        raise IntegrityError("staged file is missing and was never routed")
    if verdict == "CLEAN":
        # On one disk a rename replaces the copy; the bytes are the ones
        # assembly hashed, in staging no one but the agents writes.
        if objects.rename(stage["staging_key"], destination):
            return
        written = objects.copy(stage["staging_key"], destination)
    else:
        key = quarantine.load_key(get_settings())
        written = quarantine.put(objects, stage["staging_key"], destination, key)
    if written.sha256 != stage["sha256"] or written.size != stage["size"]:
        objects.delete_prefix(destination)
        raise IntegrityError("staged file changed after it was scanned")


STEP = Step(agent="route", input_schema="FileStage", handler=handle)


def register(app: faust.App, sender: Sender, settings: Settings) -> None:
    register_laned(app, STEP, topics.DEDUPLICATED, sender, settings)
