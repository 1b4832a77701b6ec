"""Audit reports: the machine-readable report.json (with its JSON Schema) and report.html."""
