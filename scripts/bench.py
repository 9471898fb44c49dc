"""Training-step benchmark, fair by construction: two ways of training (--sides A,B) built in ONE process and run
interleaved (A B B A ...), each step's process CPU time and wall time recorded, on rows whose lengths follow a named
corpus distribution (--lengths). Prints one JSON object.

  OMP_NUM_THREADS=1 python scripts/bench.py --preset slice --threads 1 --lengths librittsr --batch_size 8
  python scripts/bench.py --preset full --mixed_precision bf16 --batch_size 8 --seq_len 2048   # on one GPU
  python scripts/bench.py --sides ours:dropout=0,ours:dropout=0.05                             # any A/B of ours

The baseline is what a user gets by default: transformers' sdpa attention and DualFFN, the processor's padded
batches in data order (no grouping), the native loss. `full` is the released 3B-base architecture with random
weights, `slice` its widths with 2 layers (runs on a CPU). MFU counts model FLOPs only: per real token 4 per
touched weight (2 forward, 2 backward: frozen weights need input gradients only; ONE of the two FFNs per layer),
the audio head at the labelled half, and causal attention; HFU adds checkpointing's recomputed forward. Both
against --peak_tflops (989 = H100/H200 bf16 dense).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from higgs_train.checkpoint.save import save_checkpoint  # noqa: E402
from higgs_train.checkpoint.state import Snapshot, TrainingProgress, capture_rng  # noqa: E402
from higgs_train.config import build_config  # noqa: E402
from higgs_train.data.batches import BatchPlan, TokenBudgetPlan  # noqa: E402
from higgs_train.data.collate import IGNORE, Example, TokenLayout, collate, delay_pattern, target_labels  # noqa: E402
from higgs_train.distributed import make_accelerator  # noqa: E402
from higgs_train.layouts import released_lm_config  # noqa: E402
from higgs_train.model import COMPILE_BUCKET, apply_lora, compile_for_training, quiet_libraries  # noqa: E402
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


LENGTHS = ("ljspeech", "librittsr", "cloning", "uniform")
TOKENS_PER_SECOND = 29  # 25 audio frames a second, ~4 text tokens of the transcript


def row_lengths(dist: str, n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Row lengths in tokens as real corpora have them, capped at seq_len (what --max_duration would drop):
    ljspeech: one reader, 1-10 s clips (mean 6.6 s); librittsr: many readers, 0.5-35 s, long right tail;
    cloning: a 3-10 s reference clip plus a 1-20 s target; uniform: [seq_len / 2, seq_len] (the old benchmark's)."""
    if dist == "uniform":
        return rng.integers(seq_len // 2, seq_len + 1, n)
    if dist == "ljspeech":
        seconds, overhead = np.clip(rng.normal(6.6, 2.2, n), 1.1, 10.1), 30
    elif dist == "librittsr":
        seconds, overhead = np.clip(rng.lognormal(np.log(4.3), 0.8, n), 0.5, 35.0), 30
    else:
        seconds = rng.uniform(3, 10, n) + np.clip(rng.lognormal(np.log(5.0), 0.6, n), 1.0, 20.0)
        overhead = 60
    return np.minimum(seq_len, (seconds * TOKENS_PER_SECOND + overhead).astype(np.int64))


def synthetic_examples(cfg, n: int, seq_len: int, rng: np.random.Generator, dist: str = "uniform") -> list[Example]:
    """Voice-cloning-shaped rows with lengths from `dist` (row_lengths): ~15% text, ~35% reference audio, ~50%
    target audio (labelled)."""
    k, codes_max = cfg.num_codebooks, cfg.audio_stream_bos_id
    out = []
    for length in row_lengths(dist, n, seq_len, rng).tolist():
        length = max(length, 6 * (k + 1))
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


@dataclass
class Side:
    """One way of training, built in this process: baseline (what a user gets by default: transformers' sdpa and
    DualFFN, the processor's padded batches in data order, the native loss) or ours (the sync-free DualFFN, length
    grouping or --packing, our loss and step)."""

    name: str
    step: object  # () -> (real tokens, computed tokens, attention FLOPs) of one training step
    cpu_s: list = field(default_factory=list)
    wall_s: list = field(default_factory=list)
    tokens: int = 0
    computed: int = 0
    attention_flops: float = 0.0
    data_s: float = 0.0
    warmup_s: float = 0.0  # the two warm-up steps (with :compile, the compilation)
    model: object = None  # the side's prepared model, for the save-stall figure


def build_side(args, spec: str, examples, layout, cfg) -> Side:
    """`spec`: baseline or ours, with optional modifiers, e.g. ours:packing, ours:dropout=0.05."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_train import dual_ffn
    from higgs_train.data.collate import pack, positions

    name, *mods = spec.split(":")
    opts = dict(m.split("=") if "=" in m else (m, "1") for m in mods)
    baseline = name == "baseline"
    tcfg = build_config(
        {
            "train_manifest": "-",
            "output_dir": "-",
            "lora_r": args.lora_r,
            "batch_size": args.batch_size,
            "mixed_precision": args.mixed_precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "lora_dropout": float(opts.get("dropout", args.lora_dropout)),
        }
    )
    accelerator = make_accelerator(tcfg)
    torch.manual_seed(0)
    lm = HiggsAudioV2ForConditionalGeneration(cfg).to(
        {"no": torch.float32, "bf16": torch.bfloat16}[args.mixed_precision]
    )
    if "quantize" in opts:  # QLoRA: through a folder, as a run loads it (from_pretrained quantizes on load)
        lm = quantized_copy(lm, opts["quantize"], args)
    lm.config._attn_implementation = args.attn_implementation
    if args.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not baseline:
        dual_ffn.install(lm, lambda _m: None)
    model = apply_lora(lm, tcfg)
    if "compile" in opts:
        compile_for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=accelerator.device.type == "cuda")
    scheduler = WarmupCosine(optimizer, 0, 10**6)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    lengths = np.array([len(e.input_ids) for e in examples])
    packing = "packing" in opts
    if baseline:
        plan = BatchPlan(len(examples), args.batch_size, 0)
    elif packing and args.max_tokens_per_batch:
        plan = TokenBudgetPlan(lengths, args.max_tokens_per_batch, 0)
    else:
        plan = BatchPlan(len(examples), args.batch_size, 0, lengths=lengths)
    index = [0]
    device = accelerator.device
    side = Side(spec, None)

    def one_step():
        t0 = time.perf_counter()
        rows = [examples[i] for i in plan.micro_batch(index[0])[1]]
        index[0] += 1
        batch = pack(rows, layout) if packing else collate(rows, layout, COMPILE_BUCKET if "compile" in opts else 1)
        side.data_s += time.perf_counter() - t0
        if baseline:
            native_step(model, optimizer, accelerator, batch, layout)
        else:
            optimizer_step(model, optimizer, scheduler, accelerator, [batch], tcfg, cfg.codebook_size)
        sync(device)
        real, computed = positions(batch)
        attention = (
            sum(len(r.input_ids) ** 2 for r in rows) if packing else len(rows) * batch["input_ids"].shape[1] ** 2
        )
        return real, computed, attention

    side.step = one_step
    side.model = model
    return side


def quantized_copy(lm, quantize: str, args):
    """The same random weights saved to a temporary folder and loaded back by the run's own load_lm, quantized."""
    from higgs_train.model import load_lm

    with tempfile.TemporaryDirectory() as folder:
        lm.save_pretrained(folder)
        del lm
        return load_lm(folder, args.mixed_precision, args.attn_implementation, quantize=quantize)


def interleaved(sides: list[Side], steps: int) -> None:
    """Two warm-up steps each, then A B B A ... so that drifts of a shared machine fall on both sides alike; each
    step's process CPU time and wall time recorded."""
    for side in sides:
        start = time.perf_counter()
        for _ in range(2):
            side.step()
        side.data_s, side.warmup_s = 0.0, time.perf_counter() - start
    order = [0, 1, 1, 0] if len(sides) == 2 else [0]
    for r in range(steps * len(sides)):
        side = sides[order[r % len(order)]]
        c0, w0 = time.process_time(), time.perf_counter()
        real, computed, attention = side.step()
        side.cpu_s.append(time.process_time() - c0)
        side.wall_s.append(time.perf_counter() - w0)
        side.tokens, side.computed = side.tokens + real, side.computed + computed
        side.attention_flops += attention


def summary(side: Side, cfg, args) -> dict:
    decoder, head = touched_weights(cfg)
    wall, cpu = sum(side.wall_s), sum(side.cpu_s)
    tok_s = side.tokens / wall
    # model FLOPs: per real token 2 per weight forward and 2 backward (frozen weights: input gradients only), the
    # audio head at the ~50% labelled positions, and attention (QK and AV, causal: half the square) x 3
    per_token = 4 * (decoder + 0.5 * head)
    attention = 3 * 2 * side.attention_flops * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
    model_flops = (per_token * side.tokens + attention) / wall
    hardware_flops = model_flops * (1.5 if args.gradient_checkpointing else 1.0)  # + the recomputed forward
    return {
        "tokens_per_s": round(tok_s, 1),
        "step_s": round(wall / len(side.wall_s), 4),
        "cpu_s_per_step": round(cpu / len(side.cpu_s), 4),
        "padding_share": round(1 - side.tokens / side.computed, 4),
        "data_wait_share": round(side.data_s / wall, 4),
        "model_tflops": round(model_flops / 1e12, 4),
        "mfu": round(model_flops / 1e12 / args.peak_tflops, 5),
        "hfu": round(hardware_flops / 1e12 / args.peak_tflops, 5),
        "warmup_s": round(side.warmup_s, 2),
    }


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


def save_stall(model) -> float:
    """Seconds the loop stands still for a synchronous save: the adapter's copy to the CPU, then the guarded save
    (with an AdamW state of the adapter's size)."""
    from peft import get_peft_model_state_dict

    start = time.perf_counter()
    adapter = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
    copy_s = time.perf_counter() - start
    state = {i: {"step": torch.tensor(1.0), "exp_avg": t, "exp_avg_sq": t} for i, t in enumerate(adapter.values())}
    optimizer = {"state": state, "param_groups": [{"lr": 1e-4, "params": list(state)}]}
    return copy_s + timed_save(adapter, optimizer, {"last_epoch": 1})[0]


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
    p.add_argument("--steps", type=int, default=10, help="measured steps per side (after 2 warm-up steps)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512, help="the longest row (longer ones are capped)")
    p.add_argument("--lengths", choices=LENGTHS, default="librittsr", help="row length distribution")
    p.add_argument(
        "--sides", default="baseline,ours", help="A,B: baseline | ours[:packing][:compile][:dropout=P][:quantize=nf4]"
    )
    p.add_argument("--max_tokens_per_batch", type=int, default=None, help="with ours:packing")
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--lora_dropout", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU); compare with 1")
    p.add_argument("--mixed_precision", choices=["no", "bf16"], default="no")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--attn_implementation", default="sdpa")
    p.add_argument("--save_steps", type=int, default=50)
    p.add_argument("--peak_tflops", type=float, default=989.0)
    p.add_argument("--no_baseline", action="store_true", help="measure the B side alone")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    cfg = model_config(args.preset)
    layout = synthetic_layout(cfg)
    n = args.batch_size * (args.steps + 2) * 4
    examples = synthetic_examples(cfg, n, args.seq_len, np.random.default_rng(0), args.lengths)
    specs = args.sides.split(",")[-1:] if args.no_baseline else args.sides.split(",")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sides = [build_side(args, spec, examples, layout, cfg) for spec in specs]
    interleaved(sides, args.steps)
    ours = sides[-1]
    measured = matmul_tflops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "lengths": args.lengths,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "attention": args.attn_implementation,
        "lora_r": args.lora_r,
        "sides": specs,
        **summary(ours, cfg, args),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
        "measured_matmul_tflops": round(measured, 2),
    }
    result["ratio_to_measured_matmul"] = round(result["model_tflops"] / measured, 4)
    save_s = save_stall(sides[-1].model.module if hasattr(sides[-1].model, "module") else sides[-1].model)
    result["checkpoint_save_s"] = round(save_s, 4)
    result["checkpoint_stall_share"] = round(save_s / (args.save_steps * result["step_s"] + save_s), 5)
    if len(sides) == 2:
        base = summary(sides[0], cfg, args)
        result.update({f"baseline_{k}": v for k, v in base.items()})
        # per real token: the sides may train other rows per step (grouping, a token budget)
        a, b = sides[0], ours
        result["speedup_vs_baseline"] = round((b.tokens / sum(b.wall_s)) / (a.tokens / sum(a.wall_s)), 3)
        result["cpu_speedup_vs_baseline"] = round((b.tokens / sum(b.cpu_s)) / (a.tokens / sum(a.cpu_s)), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
