"""HTTP hygiene: security headers, CORS for browser tus clients, OpenAPI.

CORS is off unless ``SLUICE_GATEWAY_CORS_ORIGINS`` lists origins; then the
tus request headers are allowed and the tus response headers exposed, so
tus-js-client and Uppy work from those origins.
"""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_gateway import tus
from streams.config import Settings

TUS_REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Tus-Resumable",
    "Upload-Checksum",
    "Upload-Concat",
    "Upload-Defer-Length",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "X-Correlation-ID",
    "X-HTTP-Method-Override",
    "X-Requested-With",
]

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-site"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class SecurityHeaders:
    """Adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp, *, tls: bool) -> None:
        self.app = app
        self.headers = SECURITY_HEADERS + ([HSTS] if tls else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def middleware(settings: Settings) -> list[Middleware]:
    """The gateway's middleware stack, outermost first."""
    return [
        Middleware(SecurityHeaders, tls=settings.gateway_tls_cert is not None),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.gateway_cors_origins,
            allow_methods=["POST", "GET", "HEAD", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=TUS_REQUEST_HEADERS,
            expose_headers=[h.strip() for h in tus.EXPOSED_HEADERS.split(",")],
            max_age=86400,
        ),
    ]


def _header(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


_TUS = _header("Tus-Resumable", "Must be 1.0.0.", required=True)
_ID = {
    "name": "upload_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_ERROR = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {"type": "string", "description": "stable code"},
                    "message": {"type": "string"},
                },
            }
        }
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ERROR for code in codes}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Sluice ingest gateway",
        "version": "1.0.0",
        "description": (
            "tus 1.0.0 resumable uploads (core, creation, creation-with-upload, "
            "creation-defer-length, expiration, checksum, termination, "
            "concatenation) and live progress. Every request carries a bearer "
            "token; see docs/gateway.md."
        ),
    },
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/files": {
            "options": {
                "summary": "Server capabilities (Tus-Version, Tus-Extension, ...)",
                "security": [],
                "responses": {"204": {"description": "Capabilities"}},
            },
            "post": {
                "summary": "Create an upload (optionally with its first bytes)",
                "parameters": [
                    _TUS,
                    _header("Upload-Length", "Total size in bytes."),
                    _header("Upload-Defer-Length", "1 to declare the size later."),
                    _header("Upload-Metadata", "filename and other pairs, base64."),
                    _header("Upload-Concat", "partial, or final;URL URL..."),
                    _header("Idempotency-Key", "Retries return the same upload."),
                ],
                "responses": {
                    "201": {"description": "Created; Location names the upload"},
                    **_errors(400, 401, 403, 404, 408, 410, 412, 413, 422, 423, 429),
                    **_errors(460, 503),
                },
            },
        },
        "/files/{upload_id}": {
            "head": {
                "summary": "Offset durably stored, length, metadata, expiry",
                "parameters": [_ID, _TUS],
                "responses": {
                    "200": {"description": "Upload-Offset and friends"},
                    **_errors(404, 410, 412, 503),
                },
            },
            "patch": {
                "summary": "Append bytes at Upload-Offset",
                "parameters": [
                    _ID,
                    _TUS,
                    _header("Upload-Offset", "Must equal HEAD's.", required=True),
                    _header("Upload-Checksum", "sha256|sha1|md5|crc32 base64."),
                    _header("Upload-Length", "Once, when the length was deferred."),
                ],
                "requestBody": {
                    "content": {"application/offset+octet-stream": {}},
                },
                "responses": {
                    "204": {"description": "Upload-Offset after the append"},
                    **_errors(400, 403, 404, 408, 409, 410, 412, 413, 415, 423),
                    **_errors(429, 460, 503),
                },
            },
            "delete": {
                "summary": "Terminate the upload",
                "parameters": [_ID, _TUS],
                "responses": {
                    "204": {"description": "Terminated"},
                    **_errors(404, 410, 412, 423),
                },
            },
        },
        "/v1/uploads/{upload_id}": {
            "get": {
                "summary": "Receipt state of an upload",
                "parameters": [_ID],
                "responses": {"200": {"description": "JSON"}, **_errors(404)},
            }
        },
        "/v1/uploads/{upload_id}/events": {
            "get": {
                "summary": "Stage changes as Server-Sent Events",
                "parameters": [_ID],
                "responses": {
                    "200": {"content": {"text/event-stream": {}}, "description": ""},
                    **_errors(404),
                },
            }
        },
        "/v1/uploads/{upload_id}/ws": {
            "get": {
                "summary": "Stage changes over WebSocket (JSON text frames)",
                "parameters": [_ID],
                "responses": {"101": {"description": "Switching protocols"}},
            }
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)
