"""Data work shared by every process of a launch: each process tokenizes its share of the rows and encodes its
share of the clips not cached yet (on its own device), writing its own cache shards, and the caches are complete
when all have finished. A kill loses at most the shard each process was writing.

The processes meet at a file barrier in the run folder, not at a collective: encoding 800 hours can take longer
than --dist_timeout_s. What each process found (the clips it could not encode, how fast it went) is written
beside its marker, so every process ends with the same view. A process that dies ends the launch through the
launcher, so nobody waits forever; a stop signal reaches every process, each stops at its next poll.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from higgs_train.distributed import from_main
from higgs_train.errors import Interrupted
from higgs_train.run_folder import CACHE_DIR, SYNC_PREFIX  # noqa: F401 - the names this module writes


class Share:
    """This process's part of the work: items [rank::world] of a list every process builds the same way."""

    def __init__(self, rank: int = 0, world: int = 1, folder: Path | None = None, poll_s: float = 0.2):
        self.rank, self.world, self.folder, self.poll_s = rank, world, folder, poll_s
        self._phases = 0

    def mine(self, items: list) -> list:
        return items[self.rank :: self.world]

    def gather(self, what: str, mine: dict, should_stop: Callable[[], bool] = lambda: False) -> list[dict]:
        """Publish `mine` (JSON) and wait until every process has published its own for this phase; returns all
        of them, in rank order (a single process: [mine] at once).

        Raises:
            Interrupted: `should_stop` turned true while waiting.
        """
        if self.world == 1:
            return [mine]
        self._phases += 1
        phase = f"{self._phases}-{what}"
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{phase}.{self.rank}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(mine))
        os.replace(tmp, path)
        paths = [self.folder / f"{phase}.{r}.json" for r in range(self.world)]
        while not all(p.exists() for p in paths):
            if should_stop():
                raise Interrupted(
                    f"stopped by signal while waiting for the other processes' {what}; the work finished so far is "
                    "cached: rerun the same command to go on"
                )
            time.sleep(self.poll_s)
        return [json.loads(p.read_text()) for p in paths]

    def agree(self, what: str, items: list, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Before anyone writes: every process must have planned the same work (the same `items`), else the
        shares would overlap or leave gaps.

        Raises:
            RuntimeError: the processes planned different work (a bug, or data that differs between hosts).
        """
        import hashlib

        digest = hashlib.sha256(repr(items).encode()).hexdigest()
        plans = self.gather(f"{what}-plan", {"digest": digest, "items": len(items)}, should_stop)
        if any(p["digest"] != digest for p in plans):
            counts = ", ".join(f"process {r}: {p['items']}" for r, p in enumerate(plans))
            raise RuntimeError(f"the processes of this launch planned different {what} work ({counts})")


ALONE = Share()


def clean_syncs(cache_dir: Path, keep: Path | None) -> None:
    """Main process, holding the run lock: remove the markers of launches other than `keep`'s."""
    import shutil

    if cache_dir.is_dir():
        for p in cache_dir.iterdir():
            if p.name.startswith(SYNC_PREFIX) and p != keep:
                shutil.rmtree(p, ignore_errors=True)


def launch_share(state, output_dir: str | Path) -> Share:
    """This process's Share of a launch (an accelerate Accelerator or PartialState); ALONE for one process. The
    launch's marker folder is named by rank 0, so two launches never mix markers."""
    if state.num_processes == 1:
        return ALONE
    import secrets

    launch = from_main(state, secrets.token_hex(4))
    return Share(state.process_index, state.num_processes, Path(output_dir) / CACHE_DIR / f"{SYNC_PREFIX}{launch}")


def end_share(state, share: Share) -> None:
    """Every process is past the last barrier: rank 0 removes the launch's markers."""
    if share.world > 1:
        state.wait_for_everyone()
        if state.is_main_process:
            clean_syncs(share.folder.parent, None)
