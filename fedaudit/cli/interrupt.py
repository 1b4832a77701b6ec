"""Ctrl-C during an audit: stop promptly, say what was done and how to finish at no cost.

Python delivers Ctrl-C to the main thread only, while the audit's calls wait in worker
threads (up to their deadline, many seconds for an unresponsive node); the thread pool
then waits for them before the command can exit. `interruptible` closes the audit's
channels on the first Ctrl-C, which cancels every call in flight, so the workers end at
once. It also raises the log threshold: the errors the cancelled calls then raise are
consequences of the interruption, not news for the operator. A second Ctrl-C is Python's
ordinary KeyboardInterrupt.

`AnswerCounter` wraps the audit's per-answer hook and counts what arrived, so the
command can tell the operator what the nodes have charged for.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import structlog


class _Closable(Protocol):
    def close(self) -> None: ...


class AnswerCounter:
    """Counts answers (charged and replayed) per node, then calls the wrapped hook."""

    def __init__(self, inner: Callable[..., None] | None = None) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.charged = 0
        self.replayed = 0
        self.nodes: set[str] = set()

    def __call__(self, node: str, request_id: str, query_key: str, answer: Any) -> None:
        with self._lock:
            self.nodes.add(node)
            if getattr(answer, "replayed", False):
                self.replayed += 1
            else:
                self.charged += 1
        if self._inner is not None:
            self._inner(node, request_id, query_key, answer)

    @property
    def received(self) -> int:
        return self.charged + self.replayed


@contextmanager
def interruptible(closables: Iterable[_Closable]) -> Iterator[None]:
    """On the first SIGINT, cancel every call by closing `closables`, then KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    targets = list(closables)
    interrupted = threading.Event()

    def on_sigint(_signum: int, _frame: Any) -> None:
        interrupted.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: plain
        _quiet_logs()
        for target in targets:
            with contextlib.suppress(Exception):  # best effort: the process is about to stop
                target.close()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        # Clean-up code (say, a ring's Finish call) that then meets a closed channel raises
        # its own error; after Ctrl-C it is a consequence, and the command reports Ctrl-C.
        if interrupted.is_set():
            raise KeyboardInterrupt from exc
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_logs() -> None:
    """Only critical log events from here on (the cancelled calls' errors are expected)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
