"""A municipality's node: imports its registry bundle and answers DP queries over it."""
