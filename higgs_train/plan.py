"""How much GPU memory a run needs, by part, and the largest batch that fits a given card: before anything loads
(the model is built on the meta device from its config.json alone, so the released 3B shape plans on a laptop).

The activation model counts the tensors a decoder layer keeps for the backward pass, per token: the attention block
(the normed input, q, k, v after rotary, the attention output), ONE feed-forward block (each token runs the
text or the audio FFN: the normed input, gate, up, the activation and the product), the copies the DualFFN layer
makes when it gathers and scatters tokens by kind, and what LoRA keeps (a dropout copy of each adapted input and
its rank-r projection). With gradient checkpointing each layer's input is kept, one layer's activations are rebuilt
at a time, and the gradients of that layer's input and output are alive. The audio head runs only at labelled
positions: its logits (in the compute dtype), their float32 copy and its gradient. Against measured allocations
(scripts/plan_check.py, BENCHMARKS.md: the released widths, 2 layers, on the CPU) the count is within 2%, 5% with
gradient checkpointing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from higgs_train.checkpoint.resume import read_trainer_state
from higgs_train.config import AUTO
from higgs_train.data.collate import collate
from higgs_train.errors import ConfigError
from higgs_train.loss import audio_loss_sum
from higgs_train.model import load_lm_config, meta_counts, quiet_libraries

GIB = 1024**3
CARDS_GB = (24, 40, 48, 80, 141)  # common cards: 4090/L4-class, A100-40, L40S/A6000, A100/H100-80, H200
CUDA_CONTEXT = 1.0 * GIB  # CUDA context, cuBLAS workspaces and kernels
ALLOCATOR_SLACK = 0.10  # fragmentation in PyTorch's caching allocator
LABELLED_SHARE = 0.5  # share of a row's tokens whose next audio frame is labelled (the target clip)
DTYPE_BYTES = {"no": 4, "bf16": 2, "fp16": 2}
# --quantize: bytes per quantized weight. 4-bit: half a byte, an 8-bit absmax per block of 64 and a float32 one per
# 256 blocks (double quantization); int8: a byte and a float32 scale per row (counted per weight: small)
QUANTIZED_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "fp4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0 + 0.001}
SMALL_CARDS_GB = (8, 12, 16, 24)  # consumer cards, in the table with --quantize


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes by part for one process; `total(batch, gc)` adds them up for a batch at `seq_len`."""

    seq_len: int
    base_weights: float
    lora_state: float  # LoRA weights, their gradients and AdamW's two moments, all float32
    act_per_token: float  # activations per token, whole depth, no gradient checkpointing
    act_per_token_gc: float  # with gradient checkpointing (layer inputs + one layer rebuilt)
    head_per_token: float  # the audio head at labelled positions, per token of the row
    packed_mask: float = 0.0  # --packing with sdpa/eager: the dense block-diagonal mask of one packed sequence

    def activations(self, batch: int, gc: bool) -> float:
        tokens = batch * self.seq_len
        return tokens * ((self.act_per_token_gc if gc else self.act_per_token) + self.head_per_token)

    def total(self, batch: int, gc: bool) -> float:
        used = self.base_weights + self.lora_state + self.activations(batch, gc) + self.packed_mask
        return used * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT

    def largest_batch(self, capacity: float, gc: bool) -> int:
        """The largest batch whose total fits `capacity` bytes (0 when not even one row fits)."""
        fixed = (self.base_weights + self.lora_state + self.packed_mask) * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT
        per_row = self.activations(1, gc) * (1 + ALLOCATOR_SLACK)
        return max(0, math.floor((capacity - fixed) / per_row))

    def parts(self, batch: int, gc: bool) -> dict[str, float]:
        used = self.base_weights + self.lora_state + self.activations(batch, gc) + self.packed_mask
        mask = {"packed attention mask (dense)": self.packed_mask} if self.packed_mask else {}
        return mask | {
            "frozen base weights": self.base_weights,
            "LoRA weights + grads + AdamW": self.lora_state,
            "activations" + (" (checkpointed)" if gc else ""): batch
            * self.seq_len
            * (self.act_per_token_gc if gc else self.act_per_token),
            "audio head at labelled positions": batch * self.seq_len * self.head_per_token,
            "CUDA context + allocator slack": used * ALLOCATOR_SLACK + CUDA_CONTEXT,
        }


def memory_plan(config, cfg, seq_len: int | None = None) -> MemoryPlan:
    """The plan for a model config (a `HiggsAudioV2Config`) under a TrainConfig, at `seq_len` tokens per row
    (default: the model's max_position_embeddings, the longest row `prepare` lets through)."""

    base_params, lora_params, quantized, largest = meta_counts(config, cfg)
    lora_rank, act = cfg.lora_r, DTYPE_BYTES[cfg.mixed_precision]
    base_weights = base_params * act
    if cfg.quantize != "none":  # quantized linear layers, the rest as loaded, one weight dequantized at a time
        base_weights = (base_params - quantized) * act + quantized * QUANTIZED_BYTES[cfg.quantize] + 2 * largest * act
    seq_len = seq_len or config.max_position_embeddings
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    attention = 2 * h + 2 * q + 2 * kv + q  # norm in/out, q and k after rotary, v, attention output
    ffn = 2 * h + 4 * i  # norm in/out, gate, up, activation, product
    routing = 4 * h  # the DualFFN layer gathers and scatters the hidden state by token kind: copies of it
    lora = 7 * h + lora_rank * 7  # dropout copies of the adapted inputs and their rank-r projections, float32
    per_layer = (attention + ffn + routing) * act + lora * 4
    per_token = layers * per_layer + 2 * h * act  # + embeddings and the final norm
    # checkpointed: each layer's input, one layer rebuilt, and the gradients of its input and output
    per_token_gc = layers * h * act + per_layer + 2 * h * act + 2 * h * act
    head = LABELLED_SHARE * config.num_codebooks * config.codebook_size * (act + 4 + 4)
    return MemoryPlan(
        seq_len=seq_len,
        base_weights=base_weights,
        lora_state=lora_params * 16,
        act_per_token=per_token,
        act_per_token_gc=per_token_gc,
        head_per_token=head,
        packed_mask=seq_len**2 if cfg.packing and cfg.attn_implementation in ("sdpa", "eager") else 0.0,
    )


def plan_lines(plan: MemoryPlan, batch: int, gc: bool, cards_gb=CARDS_GB) -> list[str]:
    """The table `higgs-train plan` prints: parts at this batch, then the largest batch per card (with --quantize,
    the consumer cards first)."""
    lines = [f"estimated peak GPU memory at batch {batch} x {plan.seq_len} tokens per process:"]
    for name, size in plan.parts(batch, gc).items():
        lines.append(f"  {name:<36} {size / GIB:8.2f} GiB")
    lines.append(f"  {'total':<36} {plan.total(batch, gc) / GIB:8.2f} GiB")
    lines.append(f"largest batch at {plan.seq_len} tokens:        plain    checkpointed")
    for gb in cards_gb:
        plain, ckpt = plan.largest_batch(gb * 1e9, False), plan.largest_batch(gb * 1e9, True)
        need = "fits" if plain >= batch else ("needs --gradient_checkpointing" if ckpt >= batch else "does not fit")
        lines.append(f"  {gb:>4} GB card                    {plain:>6} {ckpt:>14}   batch {batch}: {need}")
    return lines


def plan_table(cfg) -> str:
    """What `higgs-train plan` prints for the run's settings: --batch_size auto plans one row (and the largest that
    fits), a token budget one micro-batch of that many tokens."""
    batch = 1 if cfg.batch_size == AUTO or cfg.max_tokens_per_batch else cfg.batch_size
    return "\n".join(plan_lines(plan_for(cfg), batch, cfg.gradient_checkpointing, cards_for(cfg)))


def cards_for(cfg) -> tuple[int, ...]:
    """The cards the table lists: with --quantize the consumer cards it is for, then the larger ones."""
    return SMALL_CARDS_GB + CARDS_GB[1:] if cfg.quantize != "none" else CARDS_GB


SETTINGS_TO_TRY = (  # from the fastest to the smallest: what `doctor` suggests for a card
    ("bf16", False, "none"),
    ("bf16", True, "none"),
    ("bf16", True, "nf4"),
)


def setting_that_fits(cfg, capacity: float, batch: int = 1) -> str | None:
    """The first of SETTINGS_TO_TRY under which `batch` rows of the model's longest length fit `capacity` bytes, as
    flags ("" for bf16 as it is); None when none does."""
    from dataclasses import replace

    for precision, gc, quantize in SETTINGS_TO_TRY:
        plan = plan_for(replace(cfg, mixed_precision=precision, gradient_checkpointing=gc, quantize=quantize))
        if plan.total(batch, gc) <= capacity:
            flags = [f"--mixed_precision {precision}"] + ["--gradient_checkpointing"] * gc
            return " ".join(flags + ([f"--quantize {quantize}"] if quantize != "none" else []))
    return None


def plan_for(cfg, seq_len: int | None = None) -> MemoryPlan:
    """The plan of a run's settings: --model's config.json alone is read (a folder holding only it is enough). With
    --max_tokens_per_batch a micro-batch is one row of that many tokens (packed: as many rows as fill it)."""
    seq_len = seq_len or cfg.max_tokens_per_batch

    quiet_libraries()
    return memory_plan(load_lm_config(cfg.model, cfg.model_revision), cfg, seq_len)


def gpu_verdicts(plan: MemoryPlan, batch: int, gc: bool, cfg=None) -> list[tuple[str, bool, str]]:
    """(name, fits, detail) for each GPU this machine has, by its free memory now; with the run's `cfg`, a setting
    that fits a GPU the plan does not."""
    import torch

    out = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(i)
        need = plan.total(batch, gc)
        best = plan.largest_batch(free, gc)
        detail = f"batch {batch} x {plan.seq_len} needs {need / GIB:.1f} GiB of {free / GIB:.1f} free; largest {best}"
        detail += "" if gc else " (more with --gradient_checkpointing)"
        if need > free and cfg is not None and (fits := setting_that_fits(cfg, free, batch)):
            detail += f"; fits with {fits}"
        out.append((f"plan gpu {i}", need <= free, detail))
    return out


def probe_batch(trial: Callable[[int], None], start: int, say: Callable[[str], None] = print) -> int:
    """The largest batch from `start` down that `trial(batch)` (one real forward and backward) runs without
    running out of memory; each failure steps down by a quarter, and nothing of the failed try is kept alive.

    Raises:
        ConfigError: not even a batch of 1 fits.
    """
    import gc

    import torch

    batch = start
    while batch >= 1:
        try:
            trial(batch)
            return batch
        except torch.OutOfMemoryError as e:
            e.__traceback__ = None  # the traceback's frames hold the failed try's tensors
            say(f"--batch_size auto: batch {batch} ran out of memory; trying {batch * 3 // 4 or 0}")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        batch = batch * 3 // 4
    raise ConfigError(
        "--batch_size auto: not even one row of the longest length fits; use --gradient_checkpointing, "
        "--mixed_precision bf16 or a lower --max_duration"
    )


def auto_batch(plan: MemoryPlan, capacity: float, gc: bool, rows: int, grad_accum: int, trial=None, say=print):
    """(batch per process, grad_accum) for --batch_size auto: the plan's largest batch for `capacity` bytes (never
    more than the rows each process gets), tried for real when `trial` is given (on a GPU); when the tried batch
    is smaller than planned, --grad_accum grows so that the global batch stays the planned one."""
    planned = min(plan.largest_batch(capacity, gc), rows)
    if planned < 1:
        raise ConfigError(
            f"--batch_size auto: one row of {plan.seq_len} tokens needs {plan.total(1, gc) / GIB:.1f} GiB, more than "
            f"the {capacity / GIB:.1f} GiB here; use --gradient_checkpointing or --mixed_precision bf16"
        )
    batch = probe_batch(trial, planned, say) if trial else planned
    return batch, math.ceil(planned * grad_accum / batch)


def _capacity(accelerator) -> float:
    """The bytes a run may use: the GPU's free memory plus what this process holds there; on the CPU host memory."""
    import psutil
    import torch

    if accelerator.device.type == "cuda":
        return torch.cuda.mem_get_info()[0] + torch.cuda.memory_allocated()
    return psutil.virtual_memory().available + psutil.Process().memory_info().rss


def check_budget(mem: MemoryPlan, capacity: float, cfg, say):
    """--batch_size auto with --max_tokens_per_batch: one micro-batch of the budget must fit `capacity`.

    Raises:
        ConfigError: it does not, naming what it needs and the largest budget (a multiple of 256) that fits.
    """
    from dataclasses import replace

    gc = cfg.gradient_checkpointing
    if mem.total(1, gc) > capacity:
        fits = [
            n
            for n in range(256, mem.seq_len, 256)
            if replace(mem, seq_len=n, packed_mask=mem.packed_mask and n * n).total(1, gc) <= capacity
        ]
        raise ConfigError(
            f"--max_tokens_per_batch {mem.seq_len} needs {mem.total(1, gc) / GIB:.1f} GiB, more than the "
            f"{capacity / GIB:.1f} GiB here; " + (f"{fits[-1]} tokens fit" if fits else "not even 256 tokens fit")
        )
    say(f"--batch_size auto: micro-batches of {mem.seq_len} tokens fit ({mem.total(1, gc) / GIB:.1f} GiB planned)")
    return replace(cfg, batch_size=1)


def resolve_auto_batch(cfg, model, data, accelerator, resume_path, say):
    """--batch_size auto: a resume takes the checkpoint's sizes; otherwise the memory plan at the longest row for
    this device's free memory (host memory on the CPU), tried for real on a GPU with the training loss; every
    process takes the smallest. Returns the TrainConfig with the sizes resolved."""
    from dataclasses import replace

    from accelerate.utils import gather_object

    saved = read_trainer_state(resume_path)["config"] if resume_path is not None else {}
    if saved.get("batch_size") not in (AUTO, 0, None):  # 0: how versions before 2026-12-01 wrote auto
        say(f"--batch_size auto: the checkpoint's batch {saved['batch_size']} x --grad_accum {saved['grad_accum']}")
        return replace(cfg, batch_size=saved["batch_size"], grad_accum=saved["grad_accum"])
    config = accelerator.unwrap_model(model).config
    if cfg.max_tokens_per_batch:  # the micro-batch is the budget: it fits, or the largest budget that does is named
        return check_budget(
            memory_plan(config, cfg, seq_len=cfg.max_tokens_per_batch), _capacity(accelerator), cfg, say
        )
    longest = data.train[int(data.train.lengths.argmax())]
    mem = memory_plan(config, cfg, seq_len=len(longest.input_ids))
    rows, trial = len(data.train) // accelerator.num_processes, None
    capacity = _capacity(accelerator)
    if accelerator.device.type == "cuda":

        def trial(batch: int) -> None:  # one forward and backward at the longest row, no gradient sync
            tensors = {k: v.to(accelerator.device) for k, v in collate([longest] * batch, data.layout).items()}
            with accelerator.no_sync(model):
                audio_loss_sum(model, tensors, config.codebook_size).backward()
            model.zero_grad(set_to_none=True)

    batch, accum = auto_batch(mem, capacity, cfg.gradient_checkpointing, rows, cfg.grad_accum, trial, say)
    batch, accum = min(gather_object([batch])), max(gather_object([accum]))
    say(
        f"--batch_size auto: {batch} rows of up to {mem.seq_len} tokens per process x --grad_accum {accum} "
        f"(plan for {capacity / GIB:.1f} GiB on {accelerator.device.type})"
    )
    return replace(cfg, batch_size=batch, grad_accum=accum)
