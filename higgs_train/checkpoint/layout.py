"""Names of everything a checkpoint holds, in one place."""

from __future__ import annotations

import re

from higgs_train.files import TMP_MARK  # checkpoint-N.tmp-XXXX: a save in progress, never read, removed at start-up
from higgs_train.run_folder import BEST, CONFIG_FILE, FAILED_DIR, LATEST, STOPPED  # noqa: F401 - the names this module writes

PREFIX = "checkpoint-"


ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
SCALER = "scaler.pt"
TRAINER_STATE = "trainer_state.json"
INTEGRITY = "integrity.json"  # the commit marker: sizes and sha256 of every other file, written last
ERROR_NOTE = "error.txt"

KIND_FULL = "full"
KIND_FALLBACK = "fallback"  # adapter weights only: resumes with a fresh optimizer


def rng_file(rank: int) -> str:
    """Tensors and JSON (safetensors): RNG states are read back without unpickling anything."""
    return f"rng_state_{rank}.safetensors"


def legacy_rng_file(rank: int) -> str:
    """Checkpoints written before 0.2 pickled RNG states; they are read only through an allow-list."""
    return f"rng_state_{rank}.pt"


_RNG = re.compile(r"^rng_state_(\d+)\.(safetensors|pt)$")


def is_rng_file(name: str) -> bool:
    return bool(_RNG.match(name))


def stream_file(rank: int) -> str:
    """--streaming: one process's stream position and shuffle buffer (data/stream.py), tensors and JSON."""
    return f"stream_state_{rank}.safetensors"


def is_stream_file(name: str) -> bool:
    return bool(re.match(r"^stream_state_\d+\.safetensors$", name))


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step}"


_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)$")


def parse_step(name: str) -> int | None:
    """The step of a published checkpoint folder name, or None for anything else (tmp folders included)."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def is_tmp(name: str) -> bool:
    return name.startswith(PREFIX) and TMP_MARK in name
