"""What the node allows and what it has spent: policy and the privacy ledger."""
