"""The training loop: accelerate (mixed precision, accumulation, clipping), AdamW with warm-up and cosine decay,
and the checkpoint hook at every `--save_steps` optimizer steps, at the last step and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from higgs_train.checkpoint.hook import CheckpointHook, enforce_save_policy
from higgs_train.checkpoint.lock import RunLock
from higgs_train.checkpoint.preflight import check_output_dir
from higgs_train.checkpoint.resume import (
    check_compatible,
    check_same_base,
    clean_stale,
    find_resume_point,
    load_checkpoint,
)
from higgs_train.checkpoint.save import SaveResult
from higgs_train.checkpoint.state import TrainingProgress, capture_rng, restore_rng
from higgs_train.config import TrainConfig
from higgs_train.data.batches import BatchPlan
from higgs_train.data.collate import IGNORE, collate
from higgs_train.data.pipeline import build_training_data, encoding_progress
from higgs_train.data.prepare import stats_warnings
from higgs_train.distributed import (
    any_rank,
    global_sum,
    make_accelerator,
    on_main,
)
from higgs_train.errors import CheckpointError, Interrupted
from higgs_train.identity import weights_fingerprint
from higgs_train.metrics import MetricsLog
from higgs_train.model import (
    TextLoss,
    apply_lora,
    check_pair,
    load_lm,
    load_lm_config,
    load_processor,
    quiet_libraries,
    trainable_summary,
)


@dataclass
class RunResult:
    progress: TrainingProgress
    losses: list[float] = field(default_factory=list)
    saves: list[SaveResult] = field(default_factory=list)
    resumed_from: Path | None = None
    model: torch.nn.Module | None = None  # the trained PEFT model (unwrapped), for in-process callers
    is_main: bool = True  # False on the other ranks of a multi-process run
    loop_seconds: float = 0.0
    save_stalls: list[float] = field(
        default_factory=list
    )  # seconds the loop stood still at each save  # wall time of the training loop, saves included, set-up excluded


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the SSH session or terminal went away


class StopSignal:
    """First SIGTERM/SIGINT/SIGHUP: finish the micro-batch, save, stop. Second: exit at once (published checkpoints
    are safe)."""

    def __init__(self, log: Callable[[str], None]):
        self.requested = False
        self.log = log
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        self.log(
            f"{signal.Signals(signum).name}: finishing this micro-batch, saving, then stopping (again to quit now)"
        )


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def audio_loss_sum(model, batch: dict[str, torch.Tensor], codebook_size: int) -> torch.Tensor:
    """Summed cross-entropy over every labelled code; logits at t predict the frame at t + 1.

    The audio head runs only at the positions whose next frame is labelled (`logits_to_keep` as a mask): the native
    forward would compute num_codebooks x codebook_size logits at every position, text and context audio included.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "text_labels")}
    targets = labels[:, 1:]
    keep = torch.zeros(labels.shape[:2], dtype=torch.bool, device=labels.device)
    keep[:, :-1] = (targets != IGNORE).any(-1)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (kept positions, K * codebook_size)
    picked = logits.float().reshape(-1, codebook_size)
    return F.cross_entropy(picked, targets[keep[:, :-1]].reshape(-1), ignore_index=IGNORE, reduction="sum")


def train(cfg: TrainConfig, log: Callable[[str], None] = print, progress_bar: bool = True) -> RunResult:
    """Run (or resume) a LoRA fine-tune as configured; returns the final progress, losses and saves.

    The main process holds the run folder's lock throughout; a stop signal is honoured from the start (during
    encoding: the finished clips are kept) to the end.
    """
    out = Path(cfg.output_dir)
    check_output_dir(out)  # fail fast: before the manifest is parsed or the model loads
    accelerator = make_accelerator(cfg)
    with contextlib.ExitStack() as held:
        on_main(accelerator, lambda: held.enter_context(RunLock(out, "training", say=log)) and None)
        stop = held.enter_context(StopSignal(log))
        return _train(cfg, accelerator, stop, log, progress_bar)


def _train(cfg: TrainConfig, accelerator, stop: StopSignal, log, progress_bar: bool) -> RunResult:
    out = Path(cfg.output_dir)
    main = accelerator.is_main_process
    say = log if main else (lambda _msg: None)
    say(f"config: {cfg.to_json()}")
    say(f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value} on {accelerator.device.type})")
    roots = [out] + ([Path(cfg.fallback_dir)] if cfg.fallback_dir else [])
    resume_path = on_main(accelerator, _resume_target, cfg, roots, say)

    quiet_libraries()
    lm_config = load_lm_config(cfg.model)  # a folder that is not Higgs Audio v2 stops here, before anything loads
    processor = load_processor(cfg.model, cfg.audio_tokenizer)  # small: the data is validated before the LM loads
    processor.audio_tokenizer.to(accelerator.device)
    with accelerator.main_process_first(), encoding_progress(main and progress_bar) as encoding:
        # rank 0 fills the code cache, the others then read it
        data = build_training_data(
            cfg,
            processor,
            processor.audio_tokenizer.config.num_quantizers,
            say,
            encoding,
            lambda: stop.requested,
            lm_config.max_position_embeddings,
        )
    processor.audio_tokenizer.to("cpu")
    scorer = _make_scorer(cfg, accelerator, processor, data)  # before the LM: a missing ASR model fails fast
    lm = load_lm(cfg.model, cfg.mixed_precision, cfg.attn_implementation, use_text_head=cfg.text_loss_weight > 0)
    check_pair(lm, processor, cfg.model)
    fingerprint = weights_fingerprint(lm)  # what the adapter is trained on, whatever path or hub id named it
    examples, layout = data.train, data.layout

    torch.manual_seed(cfg.seed)
    model = apply_lora(lm, cfg)
    text_loss = TextLoss(model) if cfg.text_loss_weight > 0 else None
    trainable, total = trainable_summary(model)
    say(
        f"LoRA r={cfg.lora_r} on {cfg.lora_targets}: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=torch.cuda.is_available())
    lengths = [len(e.input_ids) for e in examples] if cfg.group_by_length else None
    rank, world = accelerator.process_index, accelerator.num_processes
    plan = BatchPlan(len(examples), cfg.batch_size, cfg.seed, rank, world, lengths)
    max_steps = cfg.max_steps or plan.steps_for_epochs(cfg.num_epochs, cfg.grad_accum)
    scheduler = make_scheduler(optimizer, cfg.warmup_steps, max_steps)
    for warning in stats_warnings(data.stats, cfg.batch_size * cfg.grad_accum * world, max_steps):
        say(f"warning: {warning}")
    if cfg.compile:  # in place (nn.Module.compile): parameter and state-dict names stay those of the PEFT model
        model.compile(dynamic=True)  # sequence lengths vary batch to batch
    model, optimizer = accelerator.prepare(model, optimizer)

    progress = TrainingProgress(data_seed=cfg.seed, world_size=accelerator.num_processes)
    result = RunResult(progress)
    if resume_path is not None:
        progress = _restore(resume_path, cfg, accelerator, model, optimizer, scheduler, say, fingerprint)
        result = RunResult(progress, resumed_from=resume_path)
    metrics = MetricsLog(out, progress.step, cfg.report_to, say) if main else None
    if data.eval:
        say(f"eval set: {len(data.eval)} rows")
    codebook_size = accelerator.unwrap_model(model).config.codebook_size
    say(f"training {len(examples)} samples for {max_steps} steps ({plan.batches_per_epoch} batches per epoch)")

    eval_steps = cfg.eval_steps or cfg.save_steps
    last_eval = None
    hook = CheckpointHook(cfg, accelerator, say, fingerprint)
    loop_start = time.perf_counter()
    model.train()  # from_pretrained returns eval mode: dropout and gradient checkpointing need train mode
    with (
        contextlib.closing(hook),
        _progress_display(main and progress_bar, max_steps, progress.step) as bar,
    ):
        while progress.step < max_steps:
            t0 = time.perf_counter()
            window = TrainingProgress(**progress.to_dict()), capture_rng()  # to rewind a window cut by a signal
            batches = [_next_batch(plan, progress, examples, layout, cfg) for _ in range(cfg.grad_accum)]
            data_s = time.perf_counter() - t0
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            stepped = _optimizer_step(
                model, optimizer, scheduler, accelerator, batches, cfg, codebook_size, text_loss, stop
            )
            if stepped is None:  # a stop signal between micro-batches: the window is dropped, redone on resume
                result.saves += _stop_mid_window(hook, model, optimizer, scheduler, progress, window, result)
                raise Interrupted(f"stopped by signal at step {progress.step}; rerun the same command to resume")
            loss, grad_norm, tokens, text = stepped
            progress.step += 1
            result.losses.append(loss)
            tok_s = tokens * accelerator.num_processes / (time.perf_counter() - t0)
            if progress.step % cfg.log_steps == 0:
                padded = sum(b["attention_mask"].numel() for b in batches)
                row = {
                    "step": progress.step,
                    "epoch": progress.epoch,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": round(tok_s, 1),
                    "padding_share": round(1 - tokens / padded, 4),
                    "data_s": round(data_s, 5),
                    "step_s": round(time.perf_counter() - t0, 5),
                }
                if text is not None:
                    row["text_loss"] = text
                if metrics:
                    metrics.log(row)
            if data.eval and (progress.step % eval_steps == 0 or progress.step == max_steps):
                eval_loss = last_eval = evaluate(model, accelerator, data.eval, layout, cfg.batch_size, codebook_size)
                if metrics:
                    metrics.log({"step": progress.step, "eval_loss": eval_loss})
                say(f"step {progress.step}: eval loss {eval_loss:.4f}")
            bar(progress.step, loss, lr, tok_s)
            stopping = any_rank(accelerator, stop.requested)
            if progress.step % cfg.save_steps == 0 or progress.step == max_steps or stopping:
                final = progress.step == max_steps or stopping
                t_save = time.perf_counter()
                result.saves += hook(model, optimizer, scheduler, progress, final)
                result.save_stalls.append(time.perf_counter() - t_save)
                enforce_save_policy(cfg, result.saves)
            if cfg.score_steps and progress.step % cfg.score_steps == 0:
                result.saves += hook.finish()  # the score may name this step's checkpoint: it must exist
                if main:
                    _score(cfg, scorer, accelerator.unwrap_model(model), progress, last_eval, metrics, say)
            if main and cfg.sample_steps and progress.step % cfg.sample_steps == 0:
                _sample(cfg, accelerator.unwrap_model(model), processor, progress.step, metrics, say)
            if stopping:
                raise Interrupted(f"stopped by signal at step {progress.step}; rerun the same command to resume")
    if metrics:
        metrics.close()  # note: on an exception the file is closed by the interpreter; every row is flushed
    result.loop_seconds = time.perf_counter() - loop_start
    accelerator.wait_for_everyone()
    result.model = accelerator.unwrap_model(model)
    result.is_main = main
    return result


def _make_scorer(cfg: TrainConfig, accelerator, processor, data):
    """The main process's Scorer and the rows it scores, or None when scoring is off."""
    if not cfg.score_steps:
        return None
    from higgs_train.data.manifest import load_manifest
    from higgs_train.scoring.score import Scorer, items_from_samples

    box = {}

    def make() -> None:
        samples = load_manifest(cfg.score_manifest) if cfg.score_manifest else data.eval_samples
        box["items"] = items_from_samples(samples, cfg.score_samples)
        box["scorer"] = Scorer(
            processor, cfg.asr_model, data.chars_per_second, cfg.sample_max_frames, cfg.speaker_model
        )

    on_main(accelerator, make)  # an ASR model that fails to load stops every rank, before training
    return (box["scorer"], box["items"]) if box else None


def _score(cfg: TrainConfig, scorer, model, progress, eval_loss, metrics, say) -> None:
    """Score the current adapter, log it, move the `best` pointer; a failure is logged and training goes on."""
    from higgs_train.checkpoint.layout import checkpoint_name
    from higgs_train.scoring.best import badness
    from higgs_train.scoring.score import append_score, mark_best

    saved = capture_rng()
    try:
        row = scorer[0].score(model, scorer[1], progress.step, eval_loss)
        row.checkpoint = checkpoint_name(progress.step)
        append_score(cfg.output_dir, row)
        if metrics:
            metrics.log(
                {
                    "step": row.step,
                    **{
                        f"score_{k}": v
                        for k, v in row.to_dict().items()
                        if k not in ("step", "checkpoint", "eval_loss") and v is not None
                    },
                }
            )
        best = mark_best(cfg.output_dir, cfg.select_best_by)
        if best is not None:
            progress.best_metric, progress.best_step = badness(best, cfg.select_best_by), best.step
        say(
            f"score at step {row.step}: WER {row.wer:.3f}, similarity {row.similarity:.3f}, "
            f"duration ratio {row.duration_ratio:.2f}; best: {best.checkpoint if best else '-'}"
        )
    except Exception as e:  # scoring informs the choice of checkpoint; it never stops training or a save
        say(f"warning: scoring at step {progress.step} failed ({type(e).__name__}: {e}); training goes on")
    finally:
        restore_rng(saved)


def _sample(cfg: TrainConfig, model, processor, step: int, metrics, say) -> None:
    """Write OUTPUT_DIR/samples/step-N.wav; a failure is logged and never stops the run or touches a save."""
    from higgs_train.generate import generate_speech, write_wav

    try:
        speech = generate_speech(
            model,
            processor,
            cfg.sample_text,
            cfg.sample_ref_audio,
            cfg.sample_ref_text,
            max_new_frames=cfg.sample_max_frames,
            seed=cfg.seed,
        )
        path = write_wav(speech, Path(cfg.output_dir) / "samples" / f"step-{step}.wav")
        if metrics:
            metrics.audio("sample", speech.wave, speech.sample_rate, step)
        say(f"sample: {path} ({len(speech.wave) / speech.sample_rate:.2f}s)")
    except Exception as e:  # a sample is a convenience: report it, keep training
        say(f"warning: sample at step {step} failed ({type(e).__name__}: {e}); training goes on")


@torch.no_grad()
def evaluate(model, accelerator, examples, layout, batch_size: int, codebook_size: int) -> float:
    """Mean loss per labelled code over the eval set, sharded across ranks (every rank runs as many batches)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(examples), world))
    per_rank = math.ceil(len(examples) / world)
    mine += [None] * (per_rank - len(mine))  # padding batches keep ranks in step and count for nothing
    model.eval()
    ce, codes = 0.0, 0
    for start in range(0, per_rank, batch_size):
        chunk = mine[start : start + batch_size]
        real = [i for i in chunk if i is not None]
        batch = collate([examples[i] for i in real or [0]], layout)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss = audio_loss_sum(model, batch, codebook_size)
        if real:
            ce += loss.item()
            codes += int((batch["labels"] != IGNORE).sum())
    model.train()
    return global_sum(accelerator, ce) / max(1.0, global_sum(accelerator, codes))


def _optimizer_step(model, optimizer, scheduler, accelerator, batches, cfg, codebook_size, text_loss=None, stop=None):
    """One optimizer step over `grad_accum` micro-batches; gradients sync across ranks on the last one only.

    Returns:
        (mean audio loss per labelled code over all ranks, gradient norm, tokens on this rank, mean text loss per
        labelled text token or None without --text_loss_weight); None when `stop` was requested on any rank
        between two micro-batches (the gradients so far are dropped, no step is taken).
    """
    # Normalise by the labelled codes of the whole window on all ranks, so every code weighs the same whatever its
    # micro-batch or rank; DDP averages gradients, hence the factor num_processes.
    window_codes = max(1.0, global_sum(accelerator, sum(int((b["labels"] != IGNORE).sum()) for b in batches)))
    scale = accelerator.num_processes / window_codes
    if text_loss is not None:
        window_text = max(
            1.0, global_sum(accelerator, sum(int((b["text_labels"][:, 1:] != IGNORE).sum()) for b in batches))
        )
        text_scale = accelerator.num_processes * cfg.text_loss_weight / window_text
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    loss_sum = text_sum = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(batches):
        if i and stop is not None and any_rank(accelerator, stop.requested):
            optimizer.zero_grad(set_to_none=True)
            return None
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            ce_sum = audio_loss_sum(model, batch, codebook_size)
            total = ce_sum * scale
            if text_loss is not None:
                text_ce = text_loss(batch["text_labels"])
                total = total + text_ce * text_scale
                text_sum = text_sum + text_ce.detach()
            accelerator.backward(total)
        loss_sum = loss_sum + ce_sum.detach()  # summed on the device: no sync per micro-batch
    grad_norm = None
    if cfg.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    text = global_sum(accelerator, text_sum.item()) / window_text if text_loss is not None else None
    return global_sum(accelerator, loss_sum.item()) / window_codes, grad_norm, tokens, text  # note: the step's sync


def _stop_mid_window(hook, model, optimizer, scheduler, progress, window, result) -> list[SaveResult]:
    """Rewind the data position and RNG to the start of the dropped window, then save (unless that step is saved)."""
    start, rng = window
    for name in ("micro_batches", "epoch", "samples_seen"):
        setattr(progress, name, getattr(start, name))
    restore_rng(rng)
    resumed = result.resumed_from is not None and not result.losses  # the resumed checkpoint is this step
    if hook.last_step == progress.step or resumed or progress.step == 0:
        return hook.finish()  # this step is saved (or being saved) already
    return hook(model, optimizer, scheduler, progress, final=True)


def _next_batch(plan: BatchPlan, progress: TrainingProgress, examples, layout, cfg):
    epoch, indices = plan.micro_batch(progress.micro_batches)
    progress.micro_batches += 1
    progress.epoch = epoch
    progress.samples_seen += len(indices) * plan.world_size
    batch = collate([examples[i] for i in indices], layout)
    if torch.cuda.is_available():  # pinned host memory lets the copy to the GPU run asynchronously
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def _resume_target(cfg: TrainConfig, roots: list[Path], say) -> Path | None:
    """Main process only: clean leftovers of interrupted saves, then pick the checkpoint to resume from."""
    from higgs_train.checkpoint.resume import list_checkpoints
    from higgs_train.checkpoint.verify import verify_checkpoint

    for root in roots:
        clean_stale(root, say)
    if cfg.resume == "never":
        existing = [p for root in roots for p in list_checkpoints(root)]
        if existing:
            raise CheckpointError(
                f"--resume never, but {cfg.output_dir} already holds {existing[0].name}; "
                "choose another --output_dir or use --resume auto"
            )
        return None
    if cfg.resume == "auto":
        chosen, _ = find_resume_point(roots, say)
        return chosen.path if chosen else None
    result = verify_checkpoint(cfg.resume)
    if not result.ok:
        raise CheckpointError(f"--resume {cfg.resume}: {'; '.join(result.problems)}")
    return result.path


def _restore(path: Path, cfg, accelerator, model, optimizer, scheduler, say, fingerprint: str) -> TrainingProgress:
    from peft import set_peft_model_state_dict

    loaded = load_checkpoint(path, accelerator.process_index)
    check_same_base(loaded, cfg.model, fingerprint)
    for warning in check_compatible(loaded.config, cfg.to_dict(), path):
        say(f"warning: resuming with a changed setting: {warning}")
    unwrapped = accelerator.unwrap_model(model)
    outcome = set_peft_model_state_dict(unwrapped, loaded.adapter)
    missing = [k for k in outcome.missing_keys if "lora_" in k]
    if missing:
        raise CheckpointError(f"{path}: adapter lacks {len(missing)} LoRA tensors, e.g. {missing[0]}")
    progress = loaded.progress
    if loaded.optimizer is not None:
        optimizer.load_state_dict(loaded.optimizer)
        if loaded.scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(loaded.scaler)
    else:
        say(f"warning: {path.name} is an adapter-only fallback: resuming with a fresh optimizer state")
    lr = set_schedule(optimizer, scheduler, cfg.lr, progress.step)
    say(
        f"schedule: peak --lr {cfg.lr:g}, --warmup_steps {cfg.warmup_steps}, cosine to step {scheduler.total_steps} "
        f"(this run's settings); step {progress.step + 1} runs at lr {lr:.3e}"
    )
    if progress.world_size != accelerator.num_processes:
        say(f"warning: saved with {progress.world_size} processes, resuming with {accelerator.num_processes}")
        progress.micro_batches = progress.samples_seen // (cfg.batch_size * accelerator.num_processes)
        progress.world_size = accelerator.num_processes
    elif loaded.rng is not None:
        restore_rng(loaded.rng)  # last, so nothing after it draws from the restored generators
    say(f"resumed from {path} at step {progress.step}")
    return progress


def make_scheduler(optimizer, warmup: int, total: int):
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total))
    scheduler.total_steps = total
    return scheduler


def set_schedule(optimizer, scheduler, peak_lr: float, step: int) -> float:
    """Put the schedule (built from this run's --lr, --warmup_steps and step count) at `step`, whatever a checkpoint
    held: a resume with another --lr or a longer --max_steps runs the new schedule, never the saved one.

    Returns:
        The learning rate of the next optimizer step.
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = peak_lr
    scheduler.base_lrs = [peak_lr] * len(optimizer.param_groups)
    scheduler.last_epoch = step
    lrs = [peak_lr * factor(step) for factor in scheduler.lr_lambdas]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next scheduler.step()
    return lrs[0]


@contextlib.contextmanager
def _progress_display(enabled: bool, total: int, done: int):
    if not enabled:
        yield lambda *a: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=total, completed=done, info="")

        def update(step, loss, lr, tok_s):
            bar.update(task, completed=step, info=f"loss {loss:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s")

        yield update
