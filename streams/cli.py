"""The ``sluice`` command line: services, operator tools and clients.

Services: ``gateway``, ``worker``, ``warehouse serve|migrate``.
Operators: ``topics apply|list``, ``dlq list|show|replay``,
``quarantine list|release|delete``, ``staging sweep``, ``health``.
Admins: ``keys create|list|revoke|rotate``, ``tenants list``.
Clients: ``upload``, ``status``, ``query``; ``produce`` writes chunk events
straight to Kafka (docs/direct-producers.md).
Development identity provider: ``token``, ``jwks show|serve``.

Every client, operator and admin command authenticates with the bearer token
in ``SLUICE_TOKEN`` (or ``--token``) and needs the action the permission
matrix names for it (``streams.permissions.CLI_COMMANDS``). All but
``topics`` go through the gateway or warehouse over HTTP, which check the
token and the matrix themselves. ``topics`` must work before any service
runs (the services need the topics), so it verifies the token here, with
the same verifier and matrix, and audits what it does.

Exit codes: 0 done, 1 failed or not found, 2 usage, 3 not authenticated
(401), 4 not permitted (403), 5 a dependency is unavailable (503).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx
from rich.console import Console
from rich.table import Table

from streams.config import Settings, get_settings
from streams.permissions import Action

if TYPE_CHECKING:
    from types import FrameType

    from streams.audit import AuditLog
    from streams.auth import Principal

err = Console(stderr=True)
out = Console()

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAUTHENTICATED: Final = 3
EXIT_FORBIDDEN: Final = 4
EXIT_UNAVAILABLE: Final = 5

_EXIT_BY_STATUS: Final = {
    401: EXIT_UNAUTHENTICATED,
    403: EXIT_FORBIDDEN,
    503: EXIT_UNAVAILABLE,
}

HTTP_TIMEOUT_S: Final = 60.0
# After the gateway's shutdown grace period: for bodies it cut off to commit
# what arrived and answer, before uvicorn cancels what is left.
CUT_OFF_ANSWER_S: Final = 15
JWKS_PATHS: Final = ("/.well-known/jwks.json", "/jwks.json")


class _Refused(Exception):
    """A command stops with an exit code; its message is already printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _token(args: argparse.Namespace, settings: Settings) -> str:
    token = args.token or (settings.token.get_secret_value() if settings.token else "")
    if not token:
        err.print(
            "[red]no token: set SLUICE_TOKEN or pass --token "
            "(`sluice token --tenant T --role R` prints a development one)"
        )
        raise _Refused(EXIT_USAGE)
    return str(token)


def _auth(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(args, settings)}"}


def _warehouse_url(settings: Settings) -> str:
    return f"http://{settings.warehouse_listen}"


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return response.text.strip()


def _call(
    method: str,
    url: str,
    args: argparse.Namespace,
    settings: Settings,
    *,
    json_body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    what: str = "request",
    accept: tuple[int, ...] = (),
) -> httpx.Response:
    """Send an authenticated request; refusals become exit codes.

    Statuses in ``accept`` are returned to the caller instead.
    """
    try:
        response = httpx.request(
            method,
            url,
            headers=_auth(args, settings),
            json=json_body,
            params=params,
            timeout=HTTP_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]{what} failed: cannot reach {url}: {exc}")
        raise _Refused(EXIT_UNAVAILABLE) from exc

    if response.is_success or response.status_code in accept:
        return response
    err.print(f"[red]{what} refused ({response.status_code}): {_message(response)}")
    raise _Refused(_EXIT_BY_STATUS.get(response.status_code, EXIT_FAILED))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _when(epoch_s: int | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- Services -----------------------------------------------------------------


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from ingest_gateway.app import create_app
    from streams import logs

    settings = get_settings()
    logs.configure(settings.log_level, component="gateway")
    host, _, port = settings.gateway_listen.rpartition(":")
    tls = settings.gateway_tls_cert
    app = create_app(settings)
    gateway = app.state.gateway

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            gateway.stopping()

    config = uvicorn.Config(
        app,
        host=host,
        port=int(port),
        log_level="warning",
        access_log=False,
        ssl_certfile=str(tls) if tls else None,
        ssl_keyfile=str(settings.gateway_tls_key) if tls else None,
        # Past the grace period the gateway cuts bodies off itself; this
        # is the time they get to commit and answer before uvicorn cancels.
        timeout_graceful_shutdown=int(settings.gateway_shutdown_grace_s)
        + CUT_OFF_ANSWER_S,
    )
    Server(config).run()
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run

    run()
    return EXIT_OK


def cmd_warehouse(args: argparse.Namespace) -> int:
    from streams import logs

    settings = get_settings()
    logs.configure(settings.log_level, component="warehouse")
    if args.action == "migrate":
        return _migrate(settings)

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
    return EXIT_OK


# --- Topics: verified here, since they must exist before any service ----------


def _authorize_locally(
    args: argparse.Namespace, settings: Settings, action: Action, command: str
) -> Principal:
    """The token's principal, if the matrix allows ``action``; audit refusals."""
    from streams import audit, service_keys
    from streams.audit import AuditLog
    from streams.auth import PLATFORM_TENANT, AuthenticationError, TokenVerifier
    from streams.permissions import allows
    from streams.service_keys import ServiceKeyStore

    header = f"Bearer {_token(args, settings)}"
    correlation_id = audit.correlation_id(None)
    try:
        principal = service_keys.authenticate(
            header,
            TokenVerifier.from_settings(settings),
            ServiceKeyStore.from_settings(settings),
        )
    except AuthenticationError as exc:
        _audit_quickly(
            AuditLog(settings),
            audit.audit_event(
                tenant=PLATFORM_TENANT,
                actor=audit.ANONYMOUS,
                action="auth.failed",
                target=f"sluice {command}",
                outcome=audit.DENIED,
                correlation_id=correlation_id,
                detail={"reason": exc.reason},
            ),
        )
        err.print(f"[red]{command} refused: {exc}")
        raise _Refused(
            EXIT_UNAVAILABLE if exc.retriable else EXIT_UNAUTHENTICATED
        ) from exc

    if not allows(principal, action):
        _audit_quickly(
            AuditLog(settings),
            audit.audit_event(
                tenant=principal.tenant,
                actor=principal.subject,
                action="permission.denied",
                target=action.value,
                outcome=audit.DENIED,
                correlation_id=correlation_id,
                detail={
                    "command": f"sluice {command}",
                    "roles": ",".join(sorted(principal.roles)),
                },
            ),
        )
        err.print(f"[red]{command} refused: role not permitted to {action.value}")
        raise _Refused(EXIT_FORBIDDEN)
    return principal


def _audit_quickly(log: AuditLog, event: dict[str, Any]) -> None:
    # A refusal must not hang the command when the audit topic is missing
    # (before the first `topics apply`): wait briefly, then give up.
    log.record(event, wait_s=2)
    log.close(timeout_s=2)


def _migrate(settings: Settings) -> int:
    from streams.warehouse.backend import open_backend
    from streams.warehouse.schema import migrate

    if not settings.clickhouse_url:
        # chdb admits one process per data directory: a running service
        # owns it, and it migrated the schema when it started.
        try:
            health = httpx.get(f"{_warehouse_url(settings)}/healthz", timeout=3)
            version = health.json().get("schema_version")
        except (httpx.HTTPError, ValueError):
            version = None
        if version is not None:
            out.print(
                f"warehouse schema at version {version} (migrated by the service)"
            )
            return EXIT_OK
    backend = open_backend(settings)
    try:
        version = migrate(backend)
    finally:
        backend.close()
    out.print(f"warehouse schema at version {version}")
    return EXIT_OK


def cmd_topics(args: argparse.Namespace) -> int:
    from streams import audit
    from streams.admin import apply_topics, describe_topics
    from streams.audit import AuditLog
    from streams.auth import PLATFORM_TENANT

    settings = get_settings()
    if args.action == "list":
        _authorize_locally(args, settings, Action.TOPICS_READ, "topics list")
        for row in describe_topics(settings):
            out.print(row)
        return EXIT_OK

    principal = _authorize_locally(args, settings, Action.TOPICS_APPLY, "topics apply")
    report = apply_topics(settings)
    for name, outcome in report:
        out.print(f"{name}: {outcome}")

    created = [name for name, outcome in report if outcome == "created"]
    log = AuditLog(settings)
    log.record(
        audit.audit_event(
            tenant=PLATFORM_TENANT,
            actor=principal.subject,
            action="topics.applied",
            target=settings.topic_prefix,
            outcome=audit.SUCCESS,
            correlation_id=audit.correlation_id(None),
            detail={"created": ",".join(created), "actor_tenant": principal.tenant},
        ),
        wait_s=10,
    )
    log.close()
    return EXIT_OK


# --- Development identity provider --------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    from streams.auth import DevKeys

    settings = get_settings()
    keys = DevKeys.load_or_create(settings.keys_dir)
    try:
        token = keys.issue(
            args.tenant,
            args.role,
            subject=args.subject,
            ttl_s=args.ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            audit_tenants=args.audit_tenant,
        )
    except ValueError as exc:
        err.print(f"[red]{exc}")
        return EXIT_USAGE
    if settings.jwks_url or settings.jwks_file is not None:
        err.print(
            "[yellow]note: SLUICE_JWKS_URL or SLUICE_JWKS_FILE is set; this token "
            "verifies only where that key set is this machine's development keys"
        )
    print(token)
    return EXIT_OK


def cmd_jwks(args: argparse.Namespace) -> int:
    from streams.auth import DevKeys

    settings = get_settings()
    keys = DevKeys.load_or_create(settings.keys_dir)
    if args.action == "show":
        _print_json(keys.jwks)
        return EXIT_OK
    return _serve_jwks(keys.jwks, args.listen)


def _serve_jwks(jwks: dict[str, Any], listen: str) -> int:
    """Serve the development JWKS on a loopback address until interrupted."""
    import ipaddress
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from streams.logs import get_logger

    host, _, port = listen.rpartition(":")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or not port.isdigit():
        err.print("[red]--listen must be a loopback host:port, e.g. 127.0.0.1:8099")
        return EXIT_USAGE

    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in JWKS_PATHS:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=60")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # http.server would print every request on stderr; keep it as
            # a debug record instead.
            get_logger(__name__).debug("jwks.request", request=format % args)

    server = ThreadingHTTPServer((host, int(port)), Handler)
    err.print(
        f"serving the development JWKS at http://{host}:{server.server_port}"
        f"{JWKS_PATHS[0]} (SLUICE_JWKS_URL); Ctrl-C stops"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


# --- Clients ------------------------------------------------------------------


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
            if item["upload_id"]:
                out.print(f"{item['upload_id']}  {item['path']}")
            else:
                status = item.get("status") or "-"
                err.print(
                    f"[red]upload of {item['path']} refused ({status}): {item['error']}"
                )
    if all(r["upload_id"] for r in results):
        return EXIT_OK
    statuses = {r.get("status") for r in results if not r["upload_id"]}
    for status, code in _EXIT_BY_STATUS.items():
        if status in statuses:
            return code
    return EXIT_FAILED


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.errors import SluiceError
    from streams.produce import produce_file

    settings = get_settings()
    results = []
    for path in map(Path, args.paths):
        try:
            state = produce_file(path, tenant=args.tenant, settings=settings)
            results.append({"path": str(path), "upload_id": state["upload_id"]})
        except (SluiceError, OSError) as exc:
            results.append({"path": str(path), "upload_id": None, "error": str(exc)})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            out.print(f"{item['upload_id'] or item.get('error')}  {item['path']}")
    return EXIT_OK if all(r["upload_id"] for r in results) else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    settings = get_settings()
    gateway = f"{settings.gateway_url}/v1/uploads/{args.upload_id}"
    receipt = _call("GET", gateway, args, settings, what="status").json()
    status: dict[str, Any] = {"upload": receipt, "stage": "RECEIVING", "result": None}
    # Not in the warehouse yet (404) is normal for an upload still arriving.
    processed = _call(
        "GET",
        f"{_warehouse_url(settings)}/v1/uploads/{args.upload_id}",
        args,
        settings,
        what="status",
        accept=(404,),
    )
    if processed.status_code == 200:
        status["stage"] = processed.json()["stage"]
        status["result"] = processed.json()["result"]
    elif receipt["status"] == "COMPLETE":
        status["stage"] = "RECEIVED"

    if args.json:
        _print_json(status)
        return EXIT_OK
    result = status["result"] or {}
    table = Table(show_header=False)
    for label, value in (
        ("upload", args.upload_id),
        ("file", receipt["filename"]),
        ("received", f"{receipt['offset']} / {receipt['length']}"),
        ("stage", status["stage"]),
        ("verdict", result.get("verdict", "-")),
        ("reason", result.get("reason", "-")),
        ("location", result.get("location", "-")),
    ):
        table.add_row(label, str(value))
    out.print(table)
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    settings = get_settings()
    response = _call(
        "POST",
        f"{_warehouse_url(settings)}/v1/query",
        args,
        settings,
        json_body={"sql": args.sql, "format": args.format},
        what="query",
    )
    sys.stdout.write(response.text)
    return EXIT_OK


# --- Operators: through the gateway's control endpoints -----------------------


def cmd_dlq(args: argparse.Namespace) -> int:
    settings = get_settings()
    base = f"{settings.gateway_url}/v1/ops/dead-letters"
    if args.action == "show":
        if not args.ids:
            err.print("[red]dlq show needs dead-letter ids")
            return EXIT_USAGE
        shown = [
            _call("GET", f"{base}/{event_id}", args, settings, what="dlq show").json()[
                "dead_letter"
            ]
            for event_id in args.ids
        ]
        _print_json(shown)
        return EXIT_OK
    if args.action == "list":
        letters = _call("GET", base, args, settings, what="dlq list").json()[
            "dead_letters"
        ]
        if args.json:
            _print_json(letters)
            return EXIT_OK
        table = Table(
            "id", "category", "agent", "tenant", "upload", "attempts", "replayed"
        )
        for letter in letters:
            table.add_row(
                letter["event_id"],
                letter["category"],
                letter["agent"],
                letter["tenant"] or "-",
                letter["upload_id"] or "-",
                str(letter["attempts"]),
                "yes" if letter["replayed"] else "no",
            )
        out.print(table)
        return EXIT_OK

    body = {"ids": args.ids, "category": args.category}
    replayed = _call(
        "POST", f"{base}/replay", args, settings, json_body=body, what="dlq replay"
    ).json()["replayed"]
    if args.json:
        _print_json(replayed)
        return EXIT_OK
    out.print(f"replayed {len(replayed)} dead letter(s)")
    for event_id in replayed:
        out.print(f"  {event_id}")
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    settings = get_settings()
    base = f"{settings.gateway_url}/v1/ops/quarantine"
    if args.action == "list":
        params = {"tenant": args.tenant} if args.tenant else None
        entries = _call(
            "GET", base, args, settings, params=params, what="quarantine list"
        ).json()["quarantined"]
        if args.json:
            _print_json(entries)
            return EXIT_OK
        table = Table("tenant", "upload", "verdict", "bytes", "reason")
        for e in entries:
            size = str(e["stored_bytes"])
            table.add_row(e["tenant"], e["upload_id"], e["verdict"], size, e["reason"])
        out.print(table)
        return EXIT_OK

    if not args.tenant or not args.upload_id:
        err.print("[red]release and delete need --tenant and an upload id")
        return EXIT_USAGE
    target = f"{base}/{args.tenant}/{args.upload_id}"
    if args.action == "release":
        response = _call(
            "POST", f"{target}/release", args, settings, what="quarantine release"
        )
    else:
        response = _call("DELETE", target, args, settings, what="quarantine delete")
    result = response.json()["result"]
    if args.json:
        _print_json(result)
    else:
        out.print(f"{args.action}d {args.upload_id}: {result['location'] or 'gone'}")
    return EXIT_OK


def cmd_staging(args: argparse.Namespace) -> int:
    settings = get_settings()
    body = {} if args.older_than is None else {"older_than_s": args.older_than}
    expired = _call(
        "POST",
        f"{settings.gateway_url}/v1/ops/staging/sweep",
        args,
        settings,
        json_body=body,
        what="staging sweep",
    ).json()["expired"]
    if args.json:
        _print_json(expired)
        return EXIT_OK
    for item in expired:
        out.print(
            f"expired {item['tenant']}/{item['upload_id']} (idle {item['idle_s']:.0f}s)"
        )
    out.print(f"{len(expired)} abandoned upload(s) removed from staging")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    settings = get_settings()
    report = _call(
        "GET", f"{settings.gateway_url}/v1/ops/health", args, settings, what="health"
    ).json()
    if args.json:
        _print_json(report)
    else:
        table = Table("component", "status", "error")
        for name, component in report["components"].items():
            table.add_row(name, component["status"], component.get("error", ""))
        out.print(table)
    return EXIT_OK if report["status"] == "ok" else EXIT_FAILED


# --- Admins: tenants and service keys -----------------------------------------


def cmd_tenants(args: argparse.Namespace) -> int:
    settings = get_settings()
    tenants = _call(
        "GET",
        f"{settings.gateway_url}/v1/admin/tenants",
        args,
        settings,
        what="tenants list",
    ).json()["tenants"]
    if args.json:
        _print_json(tenants)
        return EXIT_OK
    table = Table("tenant", "service keys", "active")
    for item in tenants:
        table.add_row(item["tenant"], str(item["keys"]), str(item["active_keys"]))
    out.print(table)
    return EXIT_OK


def _key_table(keys: list[dict[str, Any]]) -> Table:
    table = Table("key id", "tenant", "roles", "state", "expires", "description")
    for key in keys:
        table.add_row(
            key["key_id"],
            key["tenant"],
            ",".join(key["roles"]),
            key["state"],
            _when(key["expires_at"]),
            key["description"],
        )
    return table


def _print_issued(args: argparse.Namespace, issued: dict[str, Any], note: str) -> None:
    """The new key alone on stdout (or JSON); what it is on stderr."""
    if args.json:
        _print_json(issued)
        return
    print(issued["api_key"])
    err.print(_key_table([issued["key"]]))
    err.print(f"{note} The key is shown once: store it now.")


def cmd_keys(args: argparse.Namespace) -> int:
    settings = get_settings()
    base = f"{settings.gateway_url}/v1/admin/keys"
    handlers: dict[str, Callable[[], int]] = {
        "create": lambda: _keys_create(args, settings, base),
        "list": lambda: _keys_list(args, settings, base),
        "revoke": lambda: _keys_revoke(args, settings, base),
        "rotate": lambda: _keys_rotate(args, settings, base),
    }
    return handlers[args.action]()


def _keys_create(args: argparse.Namespace, settings: Settings, base: str) -> int:
    body: dict[str, Any] = {
        "tenant": args.tenant,
        "roles": args.role,
        "description": args.description,
    }
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    issued = _call(
        "POST", base, args, settings, json_body=body, what="keys create"
    ).json()
    _print_issued(args, issued, f"Created key {issued['key']['key_id']}.")
    return EXIT_OK


def _keys_list(args: argparse.Namespace, settings: Settings, base: str) -> int:
    params = {"tenant": args.tenant} if args.tenant else None
    keys = _call("GET", base, args, settings, params=params, what="keys list").json()[
        "keys"
    ]
    if args.json:
        _print_json(keys)
    else:
        out.print(_key_table(keys))
    return EXIT_OK


def _keys_revoke(args: argparse.Namespace, settings: Settings, base: str) -> int:
    key = _call(
        "POST", f"{base}/{args.key_id}/revoke", args, settings, what="keys revoke"
    ).json()["key"]
    if args.json:
        _print_json(key)
    else:
        err.print(f"revoked key {key['key_id']} of tenant {key['tenant']}")
    return EXIT_OK


def _keys_rotate(args: argparse.Namespace, settings: Settings, base: str) -> int:
    body: dict[str, Any] = {}
    if args.grace is not None:
        body["grace_s"] = args.grace
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    issued = _call(
        "POST",
        f"{base}/{args.key_id}/rotate",
        args,
        settings,
        json_body=body,
        what="keys rotate",
    ).json()
    _print_issued(
        args,
        issued,
        f"Rotated key {issued['previous']} to {issued['key']['key_id']}; the old "
        "key keeps working until its grace period ends.",
    )
    return EXIT_OK


# --- Parser -------------------------------------------------------------------


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

    topics = sub.add_parser("topics", help="create or list platform topics (operator)")
    topics.add_argument("action", choices=["apply", "list"])
    topics.set_defaults(func=cmd_topics)

    token = sub.add_parser("token", help="print a development bearer token")
    token.add_argument("--tenant", required=True)
    token.add_argument(
        "--role", action="append", required=True, help="repeat for several roles"
    )
    token.add_argument(
        "--audit-tenant",
        action="append",
        help="a tenant an auditor audits (repeat; default: its own tenant)",
    )
    token.add_argument("--subject", default="dev")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    jwks = sub.add_parser("jwks", help="show or serve the development key set")
    jwks.add_argument("action", choices=["show", "serve"])
    jwks.add_argument(
        "--listen", default="127.0.0.1:8099", help="loopback host:port to serve on"
    )
    jwks.set_defaults(func=cmd_jwks)

    upload = sub.add_parser("upload", help="upload files through the gateway (tus)")
    upload.add_argument("paths", nargs="+")
    upload.add_argument("--json", action="store_true")
    upload.add_argument("--chunk-size", type=int, default=8 * 1024 * 1024)
    upload.set_defaults(func=cmd_upload)

    produce = sub.add_parser(
        "produce", help="write files as chunk events straight to Kafka"
    )
    produce.add_argument("paths", nargs="+")
    produce.add_argument("--tenant", required=True)
    produce.add_argument("--json", action="store_true")
    produce.set_defaults(func=cmd_produce)

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

    dlq = sub.add_parser("dlq", help="list, show or replay dead letters (operator)")
    dlq.add_argument("action", choices=["list", "show", "replay"])
    dlq.add_argument(
        "ids", nargs="*", help="dead letters to show or replay (replay: default all)"
    )
    dlq.add_argument("--category", help="only this category, e.g. SCAN_UNAVAILABLE")
    dlq.add_argument("--json", action="store_true")
    dlq.set_defaults(func=cmd_dlq)

    _quarantine_parser(sub)

    health = sub.add_parser("health", help="health of Kafka, clamd, warehouse")
    health.add_argument("--json", action="store_true")
    health.set_defaults(func=cmd_health)

    tenants = sub.add_parser("tenants", help="tenants holding service keys (admin)")
    tenants.add_argument("action", choices=["list"])
    tenants.add_argument("--json", action="store_true")
    tenants.set_defaults(func=cmd_tenants)

    _keys_parser(sub)
    return parser


def _quarantine_parser(sub: Any) -> None:
    quarantined = sub.add_parser(
        "quarantine", help="list, release or delete quarantined files (operator)"
    )
    quarantined.add_argument("action", choices=["list", "release", "delete"])
    quarantined.add_argument("upload_id", nargs="?")
    quarantined.add_argument("--tenant", help="the upload's tenant (list: filter)")
    quarantined.add_argument("--json", action="store_true")
    quarantined.set_defaults(func=cmd_quarantine)

    staging = sub.add_parser(
        "staging", help="remove abandoned uploads' staging (operator)"
    )
    staging.add_argument("action", choices=["sweep"])
    staging.add_argument(
        "--older-than", type=float, help="idle seconds (default: upload expiry)"
    )
    staging.add_argument("--json", action="store_true")
    staging.set_defaults(func=cmd_staging)


def _keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="service keys for producer services (admin)")
    actions = keys.add_subparsers(dest="action", required=True)

    create = actions.add_parser("create", help="issue a key; prints it once")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--role",
        action="append",
        required=True,
        help="uploader, reader or auditor (repeat)",
    )
    create.add_argument("--ttl", type=int, help="lifetime in seconds (default 90 d)")
    create.add_argument("--description", default="", help="what the key is for")
    create.add_argument("--json", action="store_true")

    listing = actions.add_parser("list", help="keys and their state, no secrets")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true")

    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id")
    revoke.add_argument("--json", action="store_true")

    rotate = actions.add_parser("rotate", help="issue a successor; prints it once")
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace", type=int, help="seconds the old key still works (default 1 d)"
    )
    rotate.add_argument("--ttl", type=int, help="the new key's lifetime in seconds")
    rotate.add_argument("--json", action="store_true")
    keys.set_defaults(func=cmd_keys)


def main(argv: Sequence[str] | None = None) -> int:
    from streams.errors import DependencyUnavailable

    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except _Refused as refused:
        return refused.code
    except DependencyUnavailable as exc:
        # Kafka, clamd, storage or the warehouse is down: say which, no
        # traceback; a distinct exit code lets scripts retry.
        print(f"sluice: {exc}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
