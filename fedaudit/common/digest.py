"""The one definition of an answer's digest, shared by the node's query log and the coordinator.

Both sides hash the same canonical text (`answer_to_json`, which every released
answer round-trips through exactly, wire included), so a digest in the node's log
and one in the coordinator's record agree exactly when the same numbers were released.
"""

from __future__ import annotations

import hashlib

from fedaudit.node.domain import Answer, answer_to_json


def answer_digest(answer: Answer) -> str:
    """sha256 (hex) of the answer's canonical JSON; the request id is part of it."""
    return hashlib.sha256(answer_to_json(answer).encode("utf-8")).hexdigest()


LOG_HEAD_FORMAT = "fedaudit-loghead-v1"


def log_head_statement(node: str, seq: int, row_hash: str) -> bytes:
    """What a node signs when it states its query-log head (seq and chain hash of a row).

    The node's name is in it, so a head signed by one node cannot pass as another's.
    """
    return f"{LOG_HEAD_FORMAT}\x00{node}\x00{int(seq)}\x00{row_hash}".encode()
