"""Sluice's shared platform code: settings, events, topics, storage, warehouse.

Agents (``agents/``) and the ingest gateway (``ingest_gateway/``) build on the
modules here; nothing here imports them.
"""
