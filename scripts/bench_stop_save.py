"""What a stop-save costs at the released size: the guarded save (write, fsync, verify from disk, rename) of a
checkpoint with the released model's LoRA and AdamW tensors (r=16 on the default targets: 560 tensors, 474 MB),
of the adapter-only fallback (158 MB), and of a stop-save (the adapter staged first, then the full save; what is
published when --stop_save_s passes first). The tensors are random: a save's cost depends on their sizes alone.
The device-to-host copy of the state before it is not included (it needs the GPU).

  python scripts/bench_stop_save.py      # about 30 s; prints one JSON (two tries of each)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import timed_save  # noqa: E402

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
    for kind in ("full", "fallback", "stop"):
        tries = [timed_save(adapter, optimizer, {"last_epoch": 1}, os.environ.get("BENCH_DIR"), kind)
                 for _ in range(2)]  # fmt: skip
        out[kind] = {"seconds": [round(t, 2) for t, _ in tries], "bytes": tries[0][1]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
