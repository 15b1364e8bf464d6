"""Shutdown signals that arrive before a service can drain are held and replayed, not fatal."""

import os
import signal

from agentrl.common import shutdown


def test_a_signal_before_the_handler_is_replayed_to_it():
    original = {s: signal.getsignal(s) for s in shutdown.SHUTDOWN_SIGNALS}
    received = []
    try:
        shutdown.hold_shutdown_signals()
        os.kill(os.getpid(), signal.SIGTERM)  # would kill the process with the default action
        assert received == []
        previous = shutdown.install_shutdown_handler(lambda signum, _frame: received.append(signum))
        assert received == [signal.SIGTERM]
        # The holding handler is never handed back: restoring gives the default behaviour.
        assert previous[signal.SIGTERM] is signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGINT)
        assert received == [signal.SIGTERM, signal.SIGINT]
    finally:
        for signum, handler in original.items():
            signal.signal(signum, handler)
