"""A synthetic federation with planted anomalies, for the demo and tests."""
