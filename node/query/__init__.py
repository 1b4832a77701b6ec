"""The query path: closed catalogue, per-person bounding in SQL, the query service."""
