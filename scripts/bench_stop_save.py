"""What a stop-save costs at the released size: the guarded save (write, fsync, verify from disk, rename) of a
checkpoint with the released model's LoRA and AdamW tensors (r=16 on the default targets: 560 tensors, 474 MB),
and of the adapter-only fallback (158 MB). The tensors are random: a save's cost depends on their sizes alone.
The device-to-host copy of the state before it is not included (it needs the GPU).

  python scripts/bench_stop_save.py      # about 20 s; prints one JSON (two tries of each)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from higgs_train.checkpoint import layout  # noqa: E402
from higgs_train.checkpoint.save import _fallback_files, _publish, save_checkpoint  # noqa: E402
from higgs_train.checkpoint.state import Snapshot, TrainingProgress, capture_rng  # noqa: E402
from higgs_train.config import build_config  # noqa: E402
from higgs_train.layouts import released_lm_config  # noqa: E402
from higgs_train.model import apply_lora  # noqa: E402


def main() -> None:
    from peft import get_peft_model_state_dict
    from transformers import HiggsAudioV2ForConditionalGeneration

    cfg = build_config({}, require_data=False)
    with torch.device("meta"):
        model = apply_lora(HiggsAudioV2ForConditionalGeneration(released_lm_config()), cfg)
    shapes = {k: v.shape for k, v in get_peft_model_state_dict(model).items()}
    adapter = {k: torch.randn(s) * 0.01 for k, s in shapes.items()}
    state = {i: {"step": torch.tensor(1.0), "exp_avg": torch.randn(s), "exp_avg_sq": torch.rand(s)}
             for i, s in enumerate(shapes.values())}  # fmt: skip
    optimizer = {"state": state, "param_groups": [{"lr": 1e-4, "params": list(state)}]}
    out = {"lora_tensors": len(adapter)}
    for kind in ("full", "fallback"):
        seconds, size = [], 0
        for attempt in range(2):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
                snap = Snapshot(TrainingProgress(step=attempt + 1), adapter, {"r": cfg.lora_r}, cfg.to_dict(),
                                optimizer, {"last_epoch": 1}, rng={0: capture_rng()})  # fmt: skip
                start = time.perf_counter()
                if kind == "full":
                    result = save_checkpoint(tmp, snap)
                    assert result.kind == "full", result.error
                else:
                    _publish(Path(tmp), snap, layout.KIND_FALLBACK, _fallback_files)
                seconds.append(round(time.perf_counter() - start, 2))
                size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        out[kind] = {"seconds": seconds, "bytes": size}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
