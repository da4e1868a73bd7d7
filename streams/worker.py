"""Entry point of ``sluice worker``: the Faust app with every agent registered."""

from __future__ import annotations

import sys

import faust
from prometheus_client import start_http_server

from agents import assemble, cleanup, dedupe, route, scan, typecheck
from streams import logs
from streams.app import get_app
from streams.config import get_settings
from streams.pipeline import Sender

AGENTS = (assemble, scan, typecheck, dedupe, route, cleanup)


def build() -> faust.App:
    settings = get_settings()
    app = get_app()
    sender = Sender(app, settings)
    for module in AGENTS:
        module.register(app, sender, settings)
    return app


def run() -> None:
    settings = get_settings()
    logs.configure(settings.log_level, component="worker")
    start_http_server(settings.worker_metrics_port, addr="127.0.0.1")
    app = build()
    # Faust's own command line runs the worker; it reads sys.argv.
    sys.argv = ["sluice-worker", "worker", "--loglevel", settings.log_level.lower()]
    app.main()
