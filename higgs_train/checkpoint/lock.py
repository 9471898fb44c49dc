"""One run per folder: an OS lock on OUTPUT_DIR/.higgs-train.lock, held by training, prepare and merge.

The kernel releases a `flock` when its process dies, SIGKILL included, so a lock is never stale; the file itself
stays (removing it would let a third run lock a new file while the second still holds the old one). The file's
text names the holder, for the message a second run prints. On network file systems `flock` works where the
server supports locks (NFSv4, and NFSv3 with a lock daemon, through the client's emulation); where it does not,
the run warns and goes on unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from higgs_train.errors import OutputDirError
from higgs_train.run_folder import LOCK_FILE  # noqa: F401 - the names this module writes


class RunLock:
    """`with RunLock(folder, "training"):` holds the folder for this process; a second holder is refused.

    Raises:
        OutputDirError: another process holds the folder (its pid, host and command named), or the lock file
            cannot be created.
    """

    def __init__(
        self,
        folder: str | Path,
        what: str,
        flag: str = "--output_dir",
        say: Callable[[str], None] = print,
        name: str = LOCK_FILE,
    ):
        self.folder, self.what, self.flag, self.say, self.name = Path(folder), what, flag, say, name
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputDirError(
                f"{self.flag} {self.folder}: cannot create the lock file {self.name} ({e.strerror}); "
                "check the folder's permissions or choose another folder"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputDirError(
                    f"{self.flag} {self.folder} is in use by another higgs-train process ({holder}); wait for it "
                    "to finish or stop it, or choose another folder"
                ) from None
            self.say(
                f"warning: cannot lock {path} ({e.strerror}): this file system has no locks; make sure no other "
                "run uses this folder"
            )
            return self
        os.ftruncate(fd, 0)
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "what": self.what,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300],
        }
        os.write(fd, (json.dumps(note) + "\n").encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        note = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {note['pid']} on {note['host']}, {note['what']} since {note['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
