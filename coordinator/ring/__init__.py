"""The coordinator's side of the blinding ring: relay, counting, release."""
