"""Evidence of what the node answered: the hash-chained query log."""
