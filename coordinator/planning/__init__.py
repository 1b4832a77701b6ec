"""Audit plans and the queries they ask."""
