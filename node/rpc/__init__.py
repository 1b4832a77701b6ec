"""The node's gRPC edge helpers: refusal statuses, malformed-request guard, limits."""
