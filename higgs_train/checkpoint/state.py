"""What a checkpoint holds, as Python objects: the progress counters and the full snapshot handed to save()."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class TrainingProgress:
    """Everything about where the run is; anything outside it cannot be resumed."""

    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed per rank (the data position)
    epoch: int = 0
    samples_seen: int = 0  # across all ranks
    data_seed: int = 0
    world_size: int = 1
    best_metric: float | None = None  # the best checkpoint's score by --select_best_by (lower is better)
    best_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingProgress:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Snapshot:
    """A consistent copy of the training state at one step, on the CPU, ready to be written."""

    progress: TrainingProgress
    adapter: dict[str, torch.Tensor]  # PEFT state-dict names -> CPU tensors
    adapter_config: dict[str, Any]
    config: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[int, dict[str, Any]] = field(default_factory=dict)  # rank -> RNG states
    memory: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
