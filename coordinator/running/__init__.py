"""Running an audit: fan-out over node transports, the answer record."""
