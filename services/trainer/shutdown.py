"""How the trainer stops on SIGTERM/SIGINT: `stop_on_shutdown_signal` around the whole run,
`uninterrupted` around each checkpoint write. Both entry points (main.py) and library code
(checkpoint.py) import from here; nothing here imports the trainer's heavy libraries.

A signal (a pod evicted, `kill`, Ctrl-C) stops the trainer where it is, within a second plus
the clean-up (clients closed, status servers and process group stopped): it holds nothing
another process needs, since groups are acked only after the checkpoint that trained them
(rl_loop.py step 5). The groups read since the last checkpoint stay pending to the run's
consumer, and the next start resumes from that checkpoint and trains them again. The exit code
is 128 + the signal (143 for SIGTERM), as if the signal had killed it: not 0, which would mark
the trainer's Kubernetes Job complete instead of restarting its pod to resume the run. A signal
during a checkpoint write stops it once the checkpoint is written (`uninterrupted`). A second
signal during the clean-up (or the write) ends the process at once.

Not covered: threads other than the main one (Python delivers signals there only), and
signals held before start-up, which `agentrl.common.shutdown` replays into the handler here.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agentrl.common.logging import get_logger
from agentrl.common.shutdown import SHUTDOWN_SIGNALS, install_shutdown_handler

log = get_logger(__name__)


class TrainingInterrupted(SystemExit):
    """A shutdown signal stopped the run; exit code 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class _Shield:
    """How many `uninterrupted` blocks are open, and the signal that arrived inside one."""

    depth = 0
    pending: int | None = None


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A shutdown signal arriving inside the block stops the trainer when the block ends, not
    in the middle: a checkpoint's files are written whole (torch.save interrupted mid-write
    raises an error of its own in place of `TrainingInterrupted`, and the exit code is lost)."""
    _Shield.depth += 1
    try:
        yield
    finally:
        _Shield.depth -= 1
    if not _Shield.depth and _Shield.pending is not None:
        signum, _Shield.pending = _Shield.pending, None
        raise TrainingInterrupted(signum)


@contextmanager
def stop_on_shutdown_signal() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into `TrainingInterrupted` raised in the main thread (elsewhere
    signal handlers cannot be installed: nothing changes); inside `uninterrupted`, at its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: Any) -> None:
        for each in SHUTDOWN_SIGNALS:  # a second signal: the default action, at once
            signal.signal(each, signal.SIG_DFL)
        if _Shield.depth:
            _Shield.pending = signum
            return
        raise TrainingInterrupted(signum)

    previous: dict = {}
    try:
        previous = install_shutdown_handler(on_signal)  # replays one held since start-up
        yield
    except TrainingInterrupted as stop:
        log.warning(
            "%s: training stopped; the groups read since the last checkpoint stay unacked and "
            "the next start resumes from that checkpoint",
            signal.Signals(stop.signum).name,
        )
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
