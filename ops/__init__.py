"""Operator tooling for Sluice: local stack, demo, runbooks."""
