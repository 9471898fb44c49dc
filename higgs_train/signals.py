"""Stop requests: SIGTERM, SIGINT and SIGHUP ask the run to stop at the next micro-batch, save, and exit 130."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the SSH session or terminal went away


class StopSignal:
    """First signal: finish the micro-batch, save, stop. Second: exit at once (published checkpoints are safe)."""

    def __init__(self, log: Callable[[str], None]):
        self.requested = False
        self.log = log
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        name = signal.Signals(signum).name
        self.log(f"{name}: finishing this micro-batch, saving, then stopping (again to quit now)")
