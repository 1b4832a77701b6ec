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
