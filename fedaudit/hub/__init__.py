"""The hub: nodes behind a firewall dial out to it; auditors reach them through it by name."""
