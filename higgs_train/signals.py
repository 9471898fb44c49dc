"""Stop requests: SIGTERM, SIGINT and SIGHUP ask the run to stop at the next micro-batch, save, and exit 130."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the SSH session or terminal went away


class StopSignal:
    """First signal: finish the micro-batch, save, stop. The same request again (a scheduler signals every process
    and the launcher forwards it too; a dropped SSH session sends SIGHUP after SIGTERM) changes nothing: the save
    goes on. Only a deliberate second Ctrl-C, a second or more after the first signal, exits at once (published
    checkpoints are safe)."""

    QUIT_AFTER_S = 1.0

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self._requested = False
        self._previous = {}
        self._first_at = 0.0
        self._repeats = 0
        self._notes: list[str] = []  # written by the next reader of `requested`, never inside the handler

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for; also writes what the handler noted (a handler must not do I/O: it can
        interrupt any code, an import of the very module the logger needs included)."""
        while self._notes:
            self.log(self._notes.pop(0))
        return self._requested

    def deadline(self, seconds: float) -> float | None:
        """When a stop-save must be published (time.monotonic()): `seconds` after this process's first stop signal,
        or from now when the stop came from another rank; None when `seconds` is 0 (wait for the full save)."""
        if seconds <= 0:
            return None
        return (self._first_at if self._requested else time.monotonic()) + seconds

    def __enter__(self) -> StopSignal:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        _ = self.requested  # write what is left
        if self._requested:
            # Late copies of the request (a launcher forwards them) must not turn a clean stop into a kill while the
            # process exits; Python's shutdown resets Python-level handlers to the default, so ignore them instead.
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._requested:
            if signum == signal.SIGINT and time.monotonic() - self._first_at >= self.QUIT_AFTER_S:
                os._exit(128 + signum)
            self._repeats += 1
            if self._repeats == 1:  # say it once: a launcher may forward many copies
                self._notes.append(f"{name} again: the same stop request; the save goes on (Ctrl-C again to quit now)")
            return
        self._requested, self._first_at = True, time.monotonic()
        self._notes.append(f"{name}: finishing this micro-batch, saving, then stopping (Ctrl-C again to quit now)")
