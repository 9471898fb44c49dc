"""What a checkpoint holds, as Python objects: the progress counters and the full snapshot handed to save()."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class TrainingProgress:
    """Everything about where the run is; anything outside it cannot be resumed."""

    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed per rank (the data position)
    epoch: int = 0
    samples_seen: int = 0  # across all ranks
    data_seed: int = 0  # the seed of the batch order; on resume the checkpoint's wins
    world_size: int = 1
    data_digest: str = ""  # the training rows the position counts in (data/rows.py); "" in older checkpoints
    data_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def problems(cls, data: object) -> list[str]:
        """What makes a saved progress unusable: a field of the wrong type, or a counter below its minimum."""
        if not isinstance(data, dict):
            return ["progress is not an object"]
        out = []
        for name, f in cls.__dataclass_fields__.items():
            if name not in data:
                continue  # older checkpoints lack the newer fields: their defaults apply
            value, kind = data[name], type(f.default)
            if type(value) is not kind:  # bool is not an int here, nor "5" a number
                out.append(f"progress.{name} is {value!r}, not {'an integer' if kind is int else 'a string'}")
            elif kind is int and value < (1 if name == "world_size" else 0):
                out.append(f"progress.{name} is {value}, below {1 if name == 'world_size' else 0}")
        return out

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
    streams: dict[int, tuple] = field(default_factory=dict)  # rank -> --streaming state (data/stream.py)
    memory: dict[str, Any] = field(default_factory=dict)
    model_fingerprint: str | None = None  # of the base weights (model.weights_fingerprint)


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


def rng_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """RNG states as plain tensors plus JSON text (safetensors' tensors and metadata): nothing to unpickle."""
    import json

    version, words, gauss = state["python"]
    algorithm, keys, pos, has_gauss, cached = state["numpy"]
    tensors = {
        "python": torch.tensor(words, dtype=torch.int64),
        "numpy": torch.from_numpy(keys.astype("int64")),
        "torch": state["torch"].clone(),
    }
    for i, s in enumerate(state.get("cuda", [])):
        tensors[f"cuda_{i}"] = s.clone()
    meta = {
        "python_version": version,
        "python_gauss": None if gauss is None else float(gauss).hex(),
        "numpy_algorithm": algorithm,
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached).hex(),
        "cuda_devices": len(state.get("cuda", [])),
    }
    return tensors, {"rng": json.dumps(meta)}


def rng_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    """The inverse of `rng_to_tensors`.

    Raises:
        ValueError: a field is missing or of the wrong kind (a damaged or foreign file).
    """
    import json

    import numpy as np

    try:
        meta = json.loads(metadata["rng"])
        gauss = meta["python_gauss"]
        state = {
            "python": (
                int(meta["python_version"]),
                tuple(int(w) for w in tensors["python"].tolist()),
                None if gauss is None else float.fromhex(gauss),
            ),
            "numpy": (
                str(meta["numpy_algorithm"]),
                tensors["numpy"].numpy().astype(np.uint32),
                int(meta["numpy_pos"]),
                int(meta["numpy_has_gauss"]),
                float.fromhex(meta["numpy_cached_gaussian"]),
            ),
            "torch": tensors["torch"].to(torch.uint8),
        }
        if meta["cuda_devices"]:
            state["cuda"] = [tensors[f"cuda_{i}"].to(torch.uint8) for i in range(meta["cuda_devices"])]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an RNG state ({type(e).__name__}: {e})") from e
    return state


def read_rng(file: str | Path) -> dict[str, Any]:
    """One rank's RNG states from a checkpoint file, never running code from it.

    `.safetensors` (this version) holds tensors and JSON; a `.pt` from before is read with
    `torch.load(weights_only=True)` and an allow-list of the numpy types an RNG state holds.

    Raises:
        ValueError / RuntimeError / OSError: the file is damaged, foreign, or holds anything else.
    """
    file = Path(file)
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
        return rng_from_tensors(tensors, metadata)
    state = load_weights_only(file, allow=_numpy_rng_globals())
    if not isinstance(state, dict) or not {"python", "numpy", "torch"} <= set(state):
        raise ValueError("not an RNG state")
    return state


STREAM_TENSORS = ("piece_ids", "piece_lengths", "pieces_per_row", "codes", "clip_frames", "clips_per_row")


def stream_bytes(state: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> bytes:
    """One process's --streaming state (data/stream.py: buffer tensors, position as JSON) as safetensors bytes."""
    import json

    from safetensors.torch import save

    tensors, meta = state
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={"stream": json.dumps(meta)})


def read_stream(file: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The inverse of `stream_bytes`, never running code from the file.

    Raises:
        ValueError / OSError: a damaged or foreign file.
    """
    import json

    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata() or {}
    try:
        meta = json.loads(metadata["stream"])
        if not isinstance(meta, dict) or not isinstance(meta.get("reader"), dict) or set(STREAM_TENSORS) - set(tensors):
            raise ValueError("fields missing")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a stream state ({type(e).__name__}: {e})") from e
    return tensors, meta


def load_weights_only(file: str | Path, allow: list | None = None) -> Any:
    """`torch.load` that unpickles tensors and plain containers only (plus the `allow` list); never code."""
    with torch.serialization.safe_globals(allow or []):
        return torch.load(file, map_location="cpu", weights_only=True)


def _numpy_rng_globals() -> list:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
