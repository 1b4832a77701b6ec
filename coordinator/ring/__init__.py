"""The coordinator's side of the blinding ring: config, relay, counting, release, findings, run."""
