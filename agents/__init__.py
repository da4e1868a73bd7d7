"""The worker's Faust agents, one module per agent, in pipeline order.

chunks ─assemble→ files.assembled ─scan→ files.scanned ─typecheck→
files.typed ─dedupe→ files.deduplicated ─route→ results + audit

Each module defines a pure step function (``handle``) and registers it as a
Faust agent in :func:`register`. Side effects are idempotent: object keys and
event ids are deterministic, so a replay after a crash rewrites the same
objects and restates the same events.
"""
