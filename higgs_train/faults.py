"""Fault points for the fault tests: HIGGS_TRAIN_FAILPOINT=NAME@N acts when the point NAME is reached with its
counter at N (any N when "@N" is left out). By default it sends this process a real SIGKILL; NAME@N:enospc raises a
disk-full OSError instead, NAME@N:sigterm sends a real SIGTERM (a stop request) and goes on, NAME@N:sleep waits two
seconds (a slow disk), NAME@N:hang stops answering (a hung peer). NAME@N:MODE:R acts only in the process of rank R.

Each point counts in its own scope, set by the code that owns it:
- save (the step being saved): before_write (tmp folder made, nothing written), mid_file (half of a file
  written), before_rename (everything written and verified), after_rename (published, `latest` not yet updated);
- cache (shards written so far): after_shard;
- clip (clips encoded so far): encoded;
- data (micro-batches taken so far): micro_batch;
- publish (convert and merge, their whole folder written, not yet renamed into place): before_publish.
Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "HIGGS_TRAIN_FAILPOINT"
SCOPES = {
    "before_write": "save",
    "mid_file": "save",
    "before_rename": "save",
    "after_rename": "save",
    "after_shard": "cache",
    "encoded": "clip",
    "micro_batch": "data",
    "before_publish": "publish",
}
_counters: dict[str, int] = {}


def count(scope: str, n: int) -> None:
    """Set the counter that the points of `scope` compare with their @N."""
    _counters[scope] = n


def failpoint(name: str, fd: int | None = None, half: memoryview | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, mode = spec.partition(":")  # NAME[@N][:MODE[:RANK]]
    want, _, at = point.partition("@")
    mode, _, rank = mode.partition(":")
    if want != name or (at and int(at) != _counters.get(SCOPES[name], -1)):
        return
    if rank and rank != os.environ.get("RANK", "0"):
        return
    if mode == "sleep":
        time.sleep(2.0)
        return
    if mode == "hang":
        while True:
            time.sleep(60)
    if mode == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    if mode == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if fd is not None and half is not None:
        os.write(fd, half)  # leave a torn file behind
    os.kill(os.getpid(), signal.SIGKILL)
