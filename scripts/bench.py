"""Training-step benchmark: our step against the plain baseline a user would write, on synthetic batches with a
realistic text / reference-audio / target-audio mix. Prints one JSON object.

  python scripts/bench.py --preset tiny                      # CPU smoke run (CI checks the fields)
  python scripts/bench.py --preset full --mixed_precision bf16 --batch_size 8 --seq_len 2048   # on one GPU

`full` is the released 3B-base architecture with random weights. MFU counts what a token really runs: attention
and ONE of the two FFNs per layer, plus the audio head at labelled positions; LoRA training costs about 4 FLOPs
per touched weight per token (6 with gradient checkpointing), against --peak_tflops (989 = H100/H200 bf16 dense).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from higgs_train.checkpoint.save import save_checkpoint  # noqa: E402
from higgs_train.checkpoint.state import Snapshot, TrainingProgress, capture_rng  # noqa: E402
from higgs_train.config import build_config  # noqa: E402
from higgs_train.data.batches import BatchPlan  # noqa: E402
from higgs_train.data.collate import IGNORE, Example, TokenLayout, collate, delay_pattern, target_labels  # noqa: E402
from higgs_train.distributed import make_accelerator  # noqa: E402
from higgs_train.layouts import released_lm_config  # noqa: E402
from higgs_train.model import apply_lora, quiet_libraries  # noqa: E402
from higgs_train.schedule import WarmupCosine  # noqa: E402
from higgs_train.tiny import tiny_lm_config  # noqa: E402
from higgs_train.train import optimizer_step  # noqa: E402


def model_config(preset: str):
    if preset == "full":
        return released_lm_config()
    if preset == "slice":  # the released widths (head and vocabulary included), 2 layers: runs on a CPU
        return released_lm_config(num_hidden_layers=2)
    return tiny_lm_config(
        vocab_size=512, audio_token_id=300, audio_bos_token_id=301, audio_delay_token_id=302, pad_token_id=303
    )


def synthetic_examples(cfg, n: int, seq_len: int, rng: np.random.Generator) -> list[Example]:
    """Voice-cloning-shaped rows of random length in [seq_len / 2, seq_len]: ~15% text, ~35% reference audio,
    ~50% target audio (labelled)."""
    k, codes_max = cfg.num_codebooks, cfg.audio_stream_bos_id
    out = []
    for _ in range(n):
        length = int(rng.integers(seq_len // 2, seq_len + 1))
        text, ref_t = int(length * 0.15), int(length * 0.35) - k - 1
        tgt_t = length - text - ref_t - 2 * (k + 1)
        ids, frames, labels = [], [], []
        for t, is_target in ((ref_t, False), (tgt_t, True)):
            ids += rng.integers(0, 256, text // 2).tolist()
            labels.append(np.full((text // 2, k), IGNORE))
            codes = rng.integers(0, codes_max, (k, t))
            f = delay_pattern(codes, cfg.audio_stream_bos_id, cfg.audio_stream_eos_id)
            ids += [cfg.audio_token_id] * (len(f) - k + 1) + [cfg.audio_delay_token_id] * (k - 1)
            frames.append(f)
            labels.append(target_labels(codes, cfg.audio_stream_eos_id) if is_target else np.full(f.shape, IGNORE))
        out.append(Example(np.asarray(ids), np.concatenate(frames), np.concatenate(labels), np.full(len(ids), IGNORE)))
    return out


def synthetic_layout(cfg) -> TokenLayout:
    """The token layout of `synthetic_examples` rows (no tokenizer or chat template: the rows are built by hand)."""
    return TokenLayout(
        None,
        "",
        "",
        cfg.audio_token_id,
        cfg.audio_delay_token_id,
        cfg.pad_token_id,
        cfg.audio_stream_bos_id,
        cfg.audio_stream_eos_id,
        cfg.num_codebooks,
    )


def touched_weights(cfg) -> tuple[int, int]:
    """(weights a token runs through in the decoder, audio-head weights)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    attn = h * cfg.num_attention_heads * hd * 2 + h * cfg.num_key_value_heads * hd * 2
    ffn = 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * (attn + ffn), h * cfg.num_codebooks * cfg.codebook_size


def matmul_tflops(device, dtype) -> float:
    n = 8192 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return psutil.Process().memory_info().rss / 1e9


def run(args, baseline: bool) -> dict:
    from transformers import HiggsAudioV2ForConditionalGeneration

    cfg = model_config(args.preset)
    tcfg = build_config(
        {
            "train_manifest": "-",
            "output_dir": "-",
            "lora_r": args.lora_r,
            "batch_size": args.batch_size,
            "mixed_precision": args.mixed_precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "lora_dropout": 0.0,
        }
    )
    accelerator = make_accelerator(tcfg)
    device = accelerator.device
    torch.manual_seed(0)
    dtype = {"no": torch.float32, "bf16": torch.bfloat16}[args.mixed_precision]
    attn = "eager" if baseline else args.attn_implementation
    lm = HiggsAudioV2ForConditionalGeneration(cfg).to(dtype)
    lm.config._attn_implementation = attn
    model = apply_lora(lm, tcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=(device.type == "cuda" and not baseline))
    scheduler = WarmupCosine(optimizer, 0, 10**6)
    model, optimizer = accelerator.prepare(model, optimizer)
    layout = synthetic_layout(cfg)
    examples = synthetic_examples(cfg, args.batch_size * (args.steps + 2), args.seq_len, np.random.default_rng(0))
    lengths = None if baseline else [len(e.input_ids) for e in examples]
    plan = BatchPlan(len(examples), args.batch_size, 0, lengths=lengths)
    step_times, data_times, tokens = [], [], 0
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        batch = collate([examples[i] for i in plan.micro_batch(step)[1]], layout)
        if device.type == "cuda" and not baseline:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        t1 = time.perf_counter()
        if baseline:
            native_step(model, optimizer, accelerator, batch, layout)
        else:
            optimizer_step(model, optimizer, scheduler, accelerator, [batch], tcfg, cfg.codebook_size)
        sync(device)
        if step >= 2:  # warm-up steps excluded
            step_times.append(time.perf_counter() - t0)
            data_times.append(t1 - t0)
            tokens += int(batch["attention_mask"].sum())
    total = sum(step_times)
    out = {
        "tokens_per_s": tokens / total,
        "step_s": total / len(step_times),
        "peak_memory_gb": peak_memory_gb(device),
        "data_wait_share": sum(data_times) / total,
        "attention": attn,
    }
    if not baseline:
        out["save_s"] = save_stall(accelerator.unwrap_model(model), optimizer, scheduler)
    return out


def native_step(model, optimizer, accelerator, batch, layout) -> None:
    """What a user would write: the processor-shaped batch into the native forward and its (summed) loss."""
    positions = torch.isin(batch["input_ids"], torch.tensor([layout.audio_token_id, layout.delay_token_id]))
    audio_labels = torch.full_like(batch["audio_input_ids"], IGNORE)
    audio_labels[batch["audio_input_ids_mask"]] = batch["labels"][positions]
    inputs = {k: v.to(accelerator.device) for k, v in batch.items() if k != "labels"}
    loss = model(**inputs, audio_labels=audio_labels.to(accelerator.device)).loss
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def save_stall(model, optimizer, scheduler) -> float:
    """Seconds the loop stands still for a synchronous save: the adapter's copy to the CPU, then the guarded save."""
    from peft import get_peft_model_state_dict

    start = time.perf_counter()
    adapter = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
    copy_s = time.perf_counter() - start
    return copy_s + timed_save(adapter, optimizer.state_dict(), scheduler.state_dict())[0]


def _rank(adapter) -> int:
    """The LoRA rank the adapter's tensors have (verify checks adapter_config.json against them)."""
    return next((t.shape[0] for name, t in adapter.items() if ".lora_A" in name), 1)


def timed_save(adapter, optimizer_state, scheduler_state, folder=None, kind: str = "full") -> tuple[float, int]:
    """(seconds, bytes) of one guarded save of this state (write, fsync, verify from disk, rename) into a temporary
    folder under `folder`. `kind`: full, fallback (the adapter-only writer alone) or stop (a stop-save: the adapter
    staged first, then the full save, published within a 60 s deadline)."""
    from higgs_train.checkpoint import layout
    from higgs_train.checkpoint.save import _fallback_files, _publish

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        snap = Snapshot(
            TrainingProgress(step=1),
            adapter,
            {"r": _rank(adapter)},
            {},
            optimizer_state,
            scheduler_state,
            rng={0: capture_rng()},
        )
        start = time.perf_counter()
        if kind == "fallback":
            _publish(Path(tmp), snap, layout.KIND_FALLBACK, _fallback_files)
        else:
            result = save_checkpoint(tmp, snap, deadline=time.monotonic() + 60 if kind == "stop" else None)
            assert result.kind == "full", result.error
        seconds = time.perf_counter() - start
        return seconds, sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "slice", "full"], default="tiny")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--mixed_precision", choices=["no", "bf16"], default="no")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--attn_implementation", default="sdpa")
    p.add_argument("--save_steps", type=int, default=50)
    p.add_argument("--peak_tflops", type=float, default=989.0)
    p.add_argument("--no_baseline", action="store_true")
    args = p.parse_args()
    quiet_libraries()
    cfg = model_config(args.preset)
    ours = run(args, baseline=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    measured = matmul_tflops(device, dtype)
    decoder, head = touched_weights(cfg)
    flops_per_weight = 6 if args.gradient_checkpointing else 4
    flops_per_token = flops_per_weight * (decoder + 0.5 * head)  # the head runs at the ~50% labelled positions
    achieved = ours["tokens_per_s"] * flops_per_token / 1e12
    step_s = ours["step_s"]
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "lora_r": args.lora_r,
        "tokens_per_s": round(ours["tokens_per_s"], 1),
        "step_s": round(step_s, 4),
        "peak_memory_gb": round(ours["peak_memory_gb"], 2),
        "touched_weights": decoder + head,
        "achieved_tflops": round(achieved, 3),
        "mfu": round(achieved / args.peak_tflops, 4),
        "measured_matmul_tflops": round(measured, 2),
        "ratio_to_measured_matmul": round(achieved / measured, 4),
        "data_wait_share": round(ours["data_wait_share"], 4),
        "checkpoint_save_s": round(ours["save_s"], 4),
        "checkpoint_stall_share": round(ours["save_s"] / (args.save_steps * step_s + ours["save_s"]), 5),
    }
    if not args.no_baseline:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base = run(args, baseline=True)
        result.update(
            baseline_tokens_per_s=round(base["tokens_per_s"], 1),
            baseline_peak_memory_gb=round(base["peak_memory_gb"], 2),
            speedup_vs_baseline=round(ours["tokens_per_s"] / base["tokens_per_s"], 3),
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
