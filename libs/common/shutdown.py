"""SIGTERM/SIGINT that arrive while a service is still starting are held, not fatal.

A service becomes reachable (health SERVING) a moment before its entrypoint installs its
shutdown handler; a SIGTERM in that window would kill it with the default action, skipping the
drain. `agentrl serve` therefore calls `hold_shutdown_signals()` first: signals are recorded
until the service calls `install_shutdown_handler(handler)`, which installs the real handler and
replays what was held, in order.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, Any], None]

_held: list[int] = []


def _hold(signum: int, _frame: Any) -> None:
    _held.append(signum)


def hold_shutdown_signals() -> None:
    """Record shutdown signals from now on until a service installs its handler (main thread)."""
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, _hold)


def install_shutdown_handler(handler: Handler) -> dict[int, Any]:
    """Install `handler` for SIGTERM/SIGINT, replay held signals to it; return the old handlers.

    The returned handlers never include the holding one: restoring them gives the process back
    its original behaviour.
    """
    previous = {}
    for signum in SHUTDOWN_SIGNALS:
        old = signal.signal(signum, handler)
        previous[signum] = signal.SIG_DFL if old is _hold else old
    while _held:
        handler(_held.pop(0), None)
    return previous
