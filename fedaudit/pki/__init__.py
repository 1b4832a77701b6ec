"""The federation's PKI and the TLS credentials built from it."""
