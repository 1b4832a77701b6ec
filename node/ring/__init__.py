"""The node's side of the blinding ring for duplicate detection."""
