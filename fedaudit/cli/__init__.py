"""The `fedaudit` command line."""
