"""The ``sluice`` command line: services, operator tools and clients.

Services: ``gateway``, ``worker``, ``warehouse serve|migrate``.
Operators: ``topics apply|list``, ``token``, ``dlq list|replay``,
``quarantine list|release|delete``.
Clients: ``upload``, ``status``, ``query``.

Client commands authenticate with the bearer token in ``SLUICE_TOKEN`` (or
``--token``); ``sluice token`` prints a development one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from streams.config import Settings, get_settings

err = Console(stderr=True)
out = Console()


def _token(args: argparse.Namespace, settings: Settings) -> str:
    token = args.token or (settings.token.get_secret_value() if settings.token else "")
    if not token:
        err.print(
            "[red]no token: set SLUICE_TOKEN or pass --token "
            "(`sluice token --tenant T --role R` prints a development one)"
        )
        raise SystemExit(2)
    return str(token)


def _auth(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(args, settings)}"}


def _warehouse_url(settings: Settings) -> str:
    return f"http://{settings.warehouse_listen}"


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from ingest_gateway.app import create_app
    from streams import logs

    settings = get_settings()
    logs.configure(settings.log_level, component="gateway")
    host, _, port = settings.gateway_listen.rpartition(":")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=int(port),
        log_level="warning",
        access_log=False,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run

    run()
    return 0


def cmd_warehouse(args: argparse.Namespace) -> int:
    from streams import logs

    settings = get_settings()
    logs.configure(settings.log_level, component="warehouse")
    if args.action == "migrate":
        from streams.warehouse.backend import ChdbBackend
        from streams.warehouse.schema import migrate

        version = migrate(ChdbBackend(settings.chdb_path))
        out.print(f"warehouse schema at version {version}")
        return 0

    import uvicorn

    from streams.warehouse.service import create_app

    host, _, port = settings.warehouse_listen.rpartition(":")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=int(port),
        log_level="warning",
        access_log=False,
    )
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.admin import apply_topics, describe_topics

    settings = get_settings()
    if args.action == "apply":
        for name, outcome in apply_topics(settings):
            out.print(f"{name}: {outcome}")
        return 0
    for row in describe_topics(settings):
        out.print(row)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from streams.auth import DevKeys

    settings = get_settings()
    keys = DevKeys.load_or_create(settings.keys_dir)
    token = keys.issue(
        args.tenant,
        args.role,
        subject=args.subject,
        ttl_s=args.ttl,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    print(token)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from streams.client import upload_files

    settings = get_settings()
    results = upload_files(
        [Path(p) for p in args.paths],
        gateway_url=settings.gateway_url,
        headers=_auth(args, settings),
        chunk_size=args.chunk_size,
        show_progress=not args.json,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            out.print(f"{item['upload_id']}  {item['path']}")
    return 0 if all(r["upload_id"] for r in results) else 1


def cmd_status(args: argparse.Namespace) -> int:
    settings = get_settings()
    headers = _auth(args, settings)
    receipt = httpx.get(
        f"{settings.gateway_url}/v1/uploads/{args.upload_id}",
        headers=headers,
        timeout=10,
    )
    if receipt.status_code == 404:
        err.print("upload not found")
        return 1
    receipt.raise_for_status()
    status: dict[str, Any] = {
        "upload": receipt.json(),
        "stage": "RECEIVING",
        "result": None,
    }
    processed = httpx.get(
        f"{_warehouse_url(settings)}/v1/uploads/{args.upload_id}",
        headers=headers,
        timeout=10,
    )
    if processed.status_code == 200:
        body = processed.json()
        status["stage"] = body["stage"]
        status["result"] = body["result"]
    elif status["upload"]["status"] == "COMPLETE":
        status["stage"] = "RECEIVED"

    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    result = status["result"] or {}
    table = Table(show_header=False)
    for label, value in (
        ("upload", args.upload_id),
        ("file", status["upload"]["filename"]),
        ("received", f"{status['upload']['offset']} / {status['upload']['length']}"),
        ("stage", status["stage"]),
        ("verdict", result.get("verdict", "-")),
        ("reason", result.get("reason", "-")),
        ("location", result.get("location", "-")),
    ):
        table.add_row(label, str(value))
    out.print(table)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    settings = get_settings()
    response = httpx.post(
        f"{_warehouse_url(settings)}/v1/query",
        headers=_auth(args, settings),
        json={"sql": args.sql, "format": args.format},
        timeout=60,
    )
    if response.status_code != 200:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        err.print(f"[red]query refused ({response.status_code}): {message}")
        return 1
    sys.stdout.write(response.text)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from streams.dlq import list_dead_letters, replay_dead_letters

    settings = get_settings()
    if args.action == "show":
        from streams.dlq import describe

        wanted = set(args.ids)
        shown = [
            describe(d) for d in list_dead_letters(settings) if d["event_id"] in wanted
        ]
        if not shown:
            err.print("[red]no such dead letter")
            return 1
        print(json.dumps(shown, indent=2, default=str))
        return 0
    if args.action == "list":
        letters = list_dead_letters(settings)
        if args.json:
            summary = [
                {k: v for k, v in d.items() if k not in ("key", "value")}
                for d in letters
            ]
            print(json.dumps(summary, indent=2, default=str))
            return 0
        table = Table(
            "id", "category", "agent", "upload", "attempts", "replayed", "error"
        )
        for letter in letters:
            table.add_row(
                letter["event_id"],
                letter["category"],
                letter["agent"],
                letter["upload_id"] or "-",
                str(letter["attempts"]),
                "yes" if letter["replayed"] else "no",
                letter["error"][:60],
            )
        out.print(table)
        return 0
    replayed = replay_dead_letters(
        settings, ids=args.ids, category=args.category, actor=args.actor
    )
    out.print(f"replayed {len(replayed)} dead letter(s)")
    for event_id in replayed:
        out.print(f"  {event_id}")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from streams import quarantine, topics
    from streams.errors import NotFound
    from streams.publish import Publisher
    from streams.storage import ObjectStore

    settings = get_settings()
    objects = ObjectStore(settings.storage_root)
    if args.action == "list":
        entries = quarantine.entries(objects, args.tenant)
        if args.json:
            print(json.dumps([vars(e) for e in entries], indent=2))
            return 0
        table = Table("tenant", "upload", "verdict", "bytes", "reason")
        for e in entries:
            table.add_row(
                e.tenant, e.upload_id, e.verdict, str(e.stored_bytes), e.reason
            )
        out.print(table)
        return 0

    if not args.tenant or not args.upload_id:
        err.print("[red]release and delete need --tenant and an upload id")
        return 2
    publisher = Publisher(settings)
    action = f"quarantine.{args.action}d"  # quarantine.released / .deleted
    try:
        if args.action == "release":
            key = quarantine.load_key(settings)
            result = quarantine.release(
                objects, args.tenant, args.upload_id, key, args.actor
            )
        else:
            result = quarantine.delete(objects, args.tenant, args.upload_id, args.actor)
    except NotFound:
        publisher.audit(
            tenant=args.tenant,
            actor=args.actor,
            action=action,
            target=args.upload_id,
            outcome="not-found",
        )
        publisher.flush()
        err.print("[red]no such quarantined upload")
        return 1
    publisher.send(topics.RESULTS, args.upload_id, "FileResult", result)
    publisher.audit(
        tenant=args.tenant,
        actor=args.actor,
        action=action,
        target=args.upload_id,
        outcome="success",
        correlation_id=result["correlation_id"],
        detail={"location": result["location"]},
    )
    publisher.flush()
    out.print(f"{args.action}d {args.upload_id}: {result['location'] or 'gone'}")
    return 0


def cmd_staging(args: argparse.Namespace) -> int:
    from agents.cleanup import sweep
    from streams.storage import ObjectStore

    settings = get_settings()
    older_than = (
        settings.upload_expiry_s if args.older_than is None else args.older_than
    )
    expired = sweep(ObjectStore(settings.storage_root), older_than)
    for item in expired:
        out.print(f"expired {item.tenant}/{item.upload_id} (idle {item.idle_s:.0f}s)")
    out.print(f"{len(expired)} abandoned upload(s) removed from staging")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__.split("\n")[0])
    parser.add_argument("--token", help="bearer token (default: $SLUICE_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("gateway", help="run the ingest gateway").set_defaults(
        func=cmd_gateway
    )
    sub.add_parser("worker", help="run the Faust worker").set_defaults(func=cmd_worker)

    warehouse = sub.add_parser("warehouse", help="run or migrate the warehouse")
    warehouse.add_argument("action", choices=["serve", "migrate"])
    warehouse.set_defaults(func=cmd_warehouse)

    topics = sub.add_parser("topics", help="create or list platform topics")
    topics.add_argument("action", choices=["apply", "list"])
    topics.set_defaults(func=cmd_topics)

    token = sub.add_parser("token", help="print a development bearer token")
    token.add_argument("--tenant", required=True)
    token.add_argument(
        "--role", action="append", required=True, help="repeat for several roles"
    )
    token.add_argument("--subject", default="dev")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    upload = sub.add_parser("upload", help="upload files through the gateway (tus)")
    upload.add_argument("paths", nargs="+")
    upload.add_argument("--json", action="store_true")
    upload.add_argument("--chunk-size", type=int, default=8 * 1024 * 1024)
    upload.set_defaults(func=cmd_upload)

    status = sub.add_parser("status", help="stage and verdict of an upload")
    status.add_argument("upload_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    query = sub.add_parser("query", help="run a read-only SQL query")
    query.add_argument("sql")
    query.add_argument(
        "--format", choices=["table", "csv", "json", "tsv"], default="table"
    )
    query.set_defaults(func=cmd_query)

    dlq = sub.add_parser("dlq", help="list, show or replay dead letters")
    dlq.add_argument("action", choices=["list", "show", "replay"])
    dlq.add_argument(
        "ids", nargs="*", help="dead letters to show or replay (replay: default all)"
    )
    dlq.add_argument("--category", help="only this category, e.g. SCAN_UNAVAILABLE")
    dlq.add_argument("--actor", default="operator", help="who replays, for audit")
    dlq.add_argument("--json", action="store_true")
    dlq.set_defaults(func=cmd_dlq)

    quarantined = sub.add_parser("quarantine", help="list, release or delete")
    quarantined.add_argument("action", choices=["list", "release", "delete"])
    quarantined.add_argument("upload_id", nargs="?")
    quarantined.add_argument("--tenant", help="the upload's tenant (list: filter)")
    quarantined.add_argument("--actor", default="operator", help="who, for audit")
    quarantined.add_argument("--json", action="store_true")
    quarantined.set_defaults(func=cmd_quarantine)

    staging = sub.add_parser("staging", help="remove abandoned uploads' staging")
    staging.add_argument("action", choices=["sweep"])
    staging.add_argument(
        "--older-than", type=float, help="idle seconds (default: upload expiry)"
    )
    staging.set_defaults(func=cmd_staging)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
