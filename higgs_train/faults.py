"""Crash points for the fault tests: HIGGS_TRAIN_FAILPOINT=NAME@N sends this process a real SIGKILL there;
NAME@N:enospc raises a disk-full OSError there instead.

Checkpoint saves (N = the step being saved): before_write (tmp folder made, nothing written), mid_file (half
of a file written), before_rename (everything written and verified), after_rename (published, `latest` not yet
updated). Code cache (N = shards written so far): after_shard. Unset, it costs one dictionary lookup per call.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "HIGGS_TRAIN_FAILPOINT"
_step: list[int] = [-1]  # the step being saved, set by save_checkpoint


def set_step(step: int) -> None:
    _step[0] = step


def failpoint(name: str, fd: int | None = None, half: memoryview | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, rest = spec.partition("@")
    step, _, mode = rest.partition(":")
    if want == name and (not step or int(step) == _step[0]):
        if mode == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if fd is not None and half is not None:
            os.write(fd, half)  # leave a torn file behind
        os.kill(os.getpid(), signal.SIGKILL)
