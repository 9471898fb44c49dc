"""The training loop: `setup` builds everything a run needs into a `Run`, `train` drives it step by step. accelerate
does mixed precision, accumulation and clipping; AdamW with warm-up and cosine decay; the checkpoint manager saves at
every `--save_steps` optimizer steps, at the last step and on a stop signal.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from higgs_train import dual_ffn
from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import read_pointer
from higgs_train.checkpoint.lock import RunLock
from higgs_train.checkpoint.manager import CheckpointManager
from higgs_train.checkpoint.preflight import check_output_dir, refuse_run_overlap
from higgs_train.checkpoint.resume import (
    check_data,
    check_lora_shape,
    move_data_position,
    read_trainer_state,
    restore_state,
    restore_weights,
)
from higgs_train.checkpoint.save import SaveResult
from higgs_train.checkpoint.state import TrainingProgress, capture_rng, restore_rng
from higgs_train.config import AUTO, TrainConfig
from higgs_train.data.batches import BatchPlan
from higgs_train.data.collate import positions
from higgs_train.data.feed import batch_plan, next_batch
from higgs_train.data.pipeline import TrainingData, build_stream_data, build_training_data, encoding_progress
from higgs_train.data.prepare import stats_warnings
from higgs_train.data.share import clean_syncs, end_share, launch_share
from higgs_train.data.stream import resume_stream
from higgs_train.distributed import (
    any_rank,
    check_same_settings,
    global_sum,
    main_only,
    make_accelerator,
    on_main,
    peer_failure,
    settings_identity,
)
from higgs_train.errors import Interrupted, PeerError
from higgs_train.files import atomic_write_text
from higgs_train.health import Collapse, NonFinite, check_finite, diverged
from higgs_train.identity import weights_fingerprint
from higgs_train.listening import make_scorer, sample_now, score_now
from higgs_train.loss import TextLoss, audio_loss_sum, evaluate, window_scale
from higgs_train.metrics import MetricsLog, StepStats
from higgs_train.model import (
    apply_lora,
    check_pair,
    compile_for_training,
    load_lm,
    load_lm_config,
    load_processor,
    pin_revisions,
    quiet_libraries,
    resumed_revisions,
    trainable_summary,
)
from higgs_train.plan import resolve_auto_batch
from higgs_train.progress import progress_bar
from higgs_train.report import refresh_report
from higgs_train.run_folder import CACHE_DIR
from higgs_train.schedule import WarmupCosine
from higgs_train.sharded import backward, check_supported, configure_deepspeed, whole_models
from higgs_train.sharded import describe as describe_sharding
from higgs_train.signals import StopSignal


@dataclass
class RunResult:
    progress: TrainingProgress
    losses: list[float] = field(default_factory=list)
    saves: list[SaveResult] = field(default_factory=list)
    resumed_from: Path | None = None
    model: torch.nn.Module | None = None  # the trained PEFT model (unwrapped), for in-process callers
    is_main: bool = True  # False on the other ranks of a multi-process run
    loop_seconds: float = 0.0  # wall time of the training loop, saves included, set-up excluded
    save_stalls: list[float] = field(default_factory=list)  # seconds the loop stood still at each save

    def summary(self) -> str:
        """The lines a finished run prints: the loss it went from and to, and where the adapter is."""
        where = self.saves[-1].path if self.saves else self.resumed_from
        if not self.losses:  # a rerun of a finished run trains nothing
            return f"adapter: {where}"
        return f"done: step {self.progress.step}, loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}\nadapter: {where}"


@dataclass
class Run:
    """Everything a training run holds, built once by `setup`."""

    cfg: TrainConfig
    accelerator: object
    say: Callable[[str], None]
    stop: StopSignal
    data: TrainingData
    processor: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    plan: BatchPlan
    max_steps: int
    checkpoints: CheckpointManager
    progress: TrainingProgress
    result: RunResult
    metrics: MetricsLog | None
    codebook_size: int
    text_loss: TextLoss | None = None
    scorer: tuple | None = None
    last_eval: float | None = None
    collapse: Collapse = field(default_factory=Collapse)


def train(cfg: TrainConfig, log: Callable[[str], None] = print, progress_bar: bool = True) -> RunResult:
    """Run (or resume) a LoRA fine-tune as configured; returns the final progress, losses and saves.

    The main process holds the run folder's lock throughout; a stop signal is honoured from the start (during
    encoding: the finished clips are kept) to the end.
    """
    refuse_run_overlap(cfg)  # before anything is written: never over the model, a manifest or a clip
    check_output_dir(Path(cfg.output_dir))  # fail fast: before the manifest is parsed or the model loads
    accelerator = make_accelerator(cfg)
    with contextlib.ExitStack() as held:
        held.callback(gc.unfreeze)  # the rows were frozen out of collections for the run (data/pipeline.py)
        main_only(accelerator, lambda: held.enter_context(RunLock(cfg.output_dir, "training", say=log)))
        stop = held.enter_context(StopSignal(log))
        run = None
        try:
            run = setup(cfg, accelerator, stop, log, progress_bar)
            if run.metrics:  # trackers finish their runs on a stop or a crash too
                held.callback(run.metrics.close)
            with contextlib.closing(run.checkpoints):
                _loop(run, progress_bar)
        except Interrupted as e:
            if accelerator.is_main_process:  # no collective here: another rank may be elsewhere
                _mark_stopped(run.cfg if run else cfg, str(e))
            raise
        except RuntimeError as e:  # gloo reports a timed-out peer as a plain RuntimeError; NCCL as a DistError
            if accelerator.num_processes == 1 or not peer_failure(e):
                raise
            raise PeerError(
                f"a collective did not finish within --dist_timeout_s {cfg.dist_timeout_s}: another process stopped "
                f"answering or died ({str(e).strip().splitlines()[-1][:160]}); the published checkpoints are "
                "intact, rerun the same command to resume (raise --dist_timeout_s for slow steps or saves)"
            ) from None
        accelerator.wait_for_everyone()
        run.result.model = accelerator.unwrap_model(run.model)
        run.result.is_main = accelerator.is_main_process
        return run.result


def _loop(run: Run, show: bool) -> None:
    start = time.perf_counter()
    enabled = run.accelerator.is_main_process and show
    with progress_bar("train", enabled, run.max_steps, run.progress.step) as bar:
        while run.progress.step < run.max_steps:
            stats = step(run)
            if stats is None:  # a stop signal between micro-batches: the window was dropped
                raise Interrupted(f"stopped by signal at step {run.progress.step}; rerun the same command to resume")
            log_step(run, stats)
            tok_s = stats.tokens_per_s(run.accelerator.num_processes)
            bar(run.progress.step, f"loss {stats.loss:.4f} lr {stats.lr:.2e} {tok_s:,.0f} tok/s")
            maybe_eval(run)
            stopping = any_rank(run.accelerator, run.stop.requested)
            maybe_save(run, stopping)
            maybe_score_and_sample(run)
            if stopping:
                raise Interrupted(f"stopped by signal at step {run.progress.step}; rerun the same command to resume")
    run.result.loop_seconds = time.perf_counter() - start


def setup(cfg: TrainConfig, accelerator, stop: StopSignal, log: Callable[[str], None], show: bool = True) -> Run:
    """Resume target, data (validated and encoded before the LM loads), model + LoRA, optimizer, schedule, batch
    plan, checkpoint manager and metrics; restores the checkpoint when resuming."""
    main = accelerator.is_main_process
    say = log if main else (lambda _msg: None)
    resume_path = _start(cfg, accelerator, say)
    if resume_path is not None:  # another LoRA shape or --quantize: refused before anything loads
        check_lora_shape(read_trainer_state(resume_path)["config"], cfg.to_dict(), resume_path)
    cfg = resumed_revisions(cfg, resume_path)
    processor, data, cfg = _data(cfg, accelerator, stop, say, main and show)
    data_change = check_data(resume_path, data.identity, cfg.to_dict(), cfg.output_dir)  # before the LM loads
    with whole_models(accelerator):
        scorer = make_scorer(cfg, accelerator, processor, data)  # before the LM: a missing ASR model fails fast
    model, fingerprint, loaded = _model(cfg, accelerator, processor, resume_path, say)
    text_loss = TextLoss(model) if cfg.text_loss_weight > 0 else None
    model, optimizer = _optimizer(cfg, accelerator, model, say)
    if cfg.batch_size == AUTO:
        cfg = resolve_auto_batch(cfg, model, data, accelerator, resume_path, say)
        on_main(accelerator, _record_config, cfg, say)  # the resolved sizes are what the checkpoints record
    plan = batch_plan(cfg, data, accelerator.process_index, accelerator.num_processes, cfg.seed)  # None: a stream
    max_steps = cfg.max_steps or plan.steps_for_epochs(cfg.num_epochs, cfg.grad_accum)
    scheduler = WarmupCosine(optimizer, cfg.warmup_steps, max_steps)
    parts = (model, optimizer, scheduler)
    plan, progress = _position(cfg, accelerator, data, plan, loaded, data_change, parts, say)
    # on rank 0 alone; a tracker that cannot start stops every rank, before training
    metrics = main_only(accelerator, MetricsLog, cfg.output_dir, progress.step, cfg.report_to, say, cfg.to_dict())
    _announce(cfg, data, plan, max_steps, accelerator.num_processes, say)
    model.train()  # from_pretrained returns eval mode: dropout and gradient checkpointing need train mode
    checkpoints = CheckpointManager(cfg, accelerator, say, fingerprint, data.stream)
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        say=say,
        stop=stop,
        data=data,
        processor=processor,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        max_steps=max_steps,
        checkpoints=checkpoints,
        progress=progress,
        result=RunResult(progress, saves=checkpoints.saves, resumed_from=resume_path),
        metrics=metrics,
        codebook_size=accelerator.unwrap_model(model).config.codebook_size,
        text_loss=text_loss,
        scorer=scorer,
    )


def _position(cfg: TrainConfig, accelerator, data: TrainingData, plan, loaded, data_change, parts, say):
    """(plan, progress) where training goes on: from the start, or the checkpoint's state put back (weights,
    optimizer, schedule, RNG, the stream's position) with its data order, moved as --on_data_change says."""
    progress = TrainingProgress(data_seed=cfg.seed, world_size=accelerator.num_processes)
    if loaded is not None:
        progress = restore_state(loaded, cfg.to_dict(), accelerator, *parts, say)
        if progress.data_seed != cfg.seed:  # the checkpoint's data order wins
            plan = batch_plan(cfg, data, accelerator.process_index, accelerator.num_processes, progress.data_seed)
        if data.stream is not None:
            resume_stream(data.stream, loaded.stream, cfg.on_data_change, say)
    move_data_position(progress, data.identity, data_change, cfg.on_data_change, plan, say)
    return plan, progress


def _announce(cfg: TrainConfig, data: TrainingData, plan, max_steps: int, world: int, say) -> None:
    """What the run is about to do, and what in its data or settings deserves a warning."""
    for warning in stats_warnings(data.stats, cfg.batch_size * cfg.grad_accum * world, max_steps):
        say(f"warning: {warning}")
    if cfg.packing and cfg.attn_implementation in ("sdpa", "eager"):
        say(
            f"note: --packing with {cfg.attn_implementation}: rows are kept apart by a dense block-diagonal mask "
            "(memory grows with the square of the packed length); flex_attention or flash_attention_2 keep it sparse"
        )
    if data.eval:
        say(f"eval set: {len(data.eval)} rows")
    if data.stream is not None:
        say(f"streaming {cfg.train_manifest} for {max_steps} steps (shuffle buffer: {cfg.shuffle_buffer} rows each)")
    else:
        say(f"training {len(data.train)} samples for {max_steps} steps ({plan.batches_per_epoch} batches per epoch)")


def _start(cfg: TrainConfig, accelerator, say) -> Path | None:
    """Every rank runs the same settings; the config is recorded; the checkpoint to resume from (or None)."""
    check_same_settings(accelerator, settings_identity(cfg))
    check_supported(accelerator, cfg)
    on_main(accelerator, _record_config, cfg, say)
    say(f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value} on {accelerator.device.type})")
    return CheckpointManager.resume_target(cfg, accelerator, say)


def _data(cfg: TrainConfig, accelerator, stop: StopSignal, say, show: bool) -> tuple[object, TrainingData, TrainConfig]:
    """The processor (small: data is validated before the LM loads), the run's data (every process preparing its
    part of what is not cached yet) and the config with the hub revisions pinned to the commits they resolved to
    (recorded, so every checkpoint names them)."""
    quiet_libraries()
    pinned = pin_revisions(cfg, say)  # every load of this run reads the same commits
    if pinned != cfg:
        cfg = pinned
        on_main(accelerator, _record_config, cfg, say)
    # a folder that is not Higgs Audio v2 stops here, before anything loads
    lm_config = load_lm_config(cfg.model, cfg.model_revision)
    with whole_models(accelerator):
        processor = load_processor(cfg.model, cfg.audio_tokenizer, cfg.model_revision, cfg.audio_tokenizer_revision)
    processor.audio_tokenizer.to(accelerator.device)
    share = launch_share(accelerator, cfg.output_dir)
    if accelerator.is_main_process:
        clean_syncs(Path(cfg.output_dir) / CACHE_DIR, share.folder)  # markers of launches that were killed
    codebooks, positions = processor.audio_tokenizer.config.num_quantizers, lm_config.max_position_embeddings
    with encoding_progress(show) as encoding:
        parts = (cfg, processor, codebooks, say, encoding, lambda: stop.requested, positions, share)
        if cfg.streaming:  # the audio tokenizer stays on the device: rows are encoded as they arrive
            data = build_stream_data(*parts, accelerator.device)
        else:
            data = build_training_data(*parts)
    end_share(accelerator, share)
    if not cfg.streaming:
        processor.audio_tokenizer.to("cpu")
    return processor, data, cfg


def _model(cfg: TrainConfig, accelerator, processor, resume_path: Path | None, say):
    """The base model with LoRA, its weights' fingerprint, and a resume's checkpoint with its adapter put in
    (before accelerate wraps or shards the model)."""
    with whole_models(accelerator):
        precision, attention, text_head = cfg.mixed_precision, cfg.attn_implementation, cfg.text_loss_weight > 0
        lm = load_lm(cfg.model, precision, attention, text_head, cfg.model_revision, cfg.quantize)
    check_pair(lm, processor, cfg.model)
    dual_ffn.install(lm, say)  # bitwise the native layer, without its host sync per layer
    fingerprint = weights_fingerprint(lm)  # what the adapter is trained on, whatever path or hub id named it
    check_same_settings(accelerator, {"base model weights": fingerprint}, "base models")
    torch.manual_seed(cfg.seed)
    model = apply_lora(lm, cfg)
    loaded = None
    if resume_path is not None:
        loaded = restore_weights(resume_path, cfg.to_dict(), model, fingerprint, say, accelerator.process_index)
    trainable, total = trainable_summary(model)
    say(
        f"LoRA r={cfg.lora_r} on {cfg.lora_targets}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )
    return model, fingerprint, loaded


def _optimizer(cfg: TrainConfig, accelerator, model, say):
    """AdamW over the adapter; the model compiled if asked; both prepared (wrapped or sharded) by accelerate."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=torch.cuda.is_available())
    if cfg.compile:  # in place (nn.Module.compile): parameter and state-dict names stay those of the PEFT model
        compile_for_training(model)
    configure_deepspeed(accelerator, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    if line := describe_sharding(accelerator, model):
        say(line)
    return model, optimizer


def step(run: Run) -> StepStats | None:
    """One optimizer step over --grad_accum micro-batches; None (nothing stepped, the window rewound and the last
    finished step saved) when a stop signal arrives between micro-batches."""
    t0 = time.perf_counter()
    stream = run.data.stream
    # to rewind a window cut by a signal
    window = TrainingProgress(**run.progress.to_dict()), capture_rng(), stream.mark() if stream else None
    feed = run.cfg, run.data, run.plan, run.progress, run.accelerator.num_processes
    batches = [next_batch(*feed) for _ in range(run.cfg.grad_accum)]
    data_s = time.perf_counter() - t0
    lr = run.scheduler.get_last_lr()[0]  # the rate this step uses
    parts = (run.model, run.optimizer, run.scheduler, run.accelerator)
    try:
        out = optimizer_step(*parts, batches, run.cfg, run.codebook_size, run.text_loss, run.stop)
    except NonFinite as e:
        run.checkpoints.finish()  # a save of an earlier, good step still being written: the last good checkpoint
        latest = read_pointer(Path(run.cfg.output_dir), layout.LATEST)
        last_good = str(Path(run.cfg.output_dir) / latest) if latest else None
        raise diverged(e, run.progress.step + 1, lr, last_good) from None
    if out is None:
        _stop_mid_window(run, window)
        return None
    loss, grad_norm, tokens, text = out
    run.progress.step += 1
    run.result.losses.append(loss)
    if warning := run.collapse.observe(run.progress.step, loss, grad_norm):
        run.say(warning)
    padded = sum(positions(b)[1] for b in batches)
    return StepStats(loss, grad_norm, tokens, padded, text, lr, data_s, time.perf_counter() - t0)


def log_step(run: Run, s: StepStats) -> None:
    if run.metrics and not run.progress.step % run.cfg.log_steps:
        run.metrics.log(s.row(run.progress.step, run.progress.epoch, run.accelerator.num_processes))


def maybe_eval(run: Run) -> None:
    step_no, every = run.progress.step, run.cfg.eval_steps or run.cfg.save_steps
    if not run.data.eval or (step_no % every and step_no != run.max_steps):
        return
    run.last_eval = evaluate(
        run.model, run.accelerator, run.data.eval, run.data.layout, run.cfg.batch_size, run.codebook_size
    )
    if run.metrics:
        run.metrics.log({"step": step_no, "eval_loss": run.last_eval})
    run.say(f"step {step_no}: eval loss {run.last_eval:.4f}")


def maybe_save(run: Run, stopping: bool) -> None:
    step_no = run.progress.step
    if not run.checkpoints.due(step_no, run.max_steps, stopping):
        return
    t0 = time.perf_counter()
    deadline = run.stop.deadline(run.cfg.stop_save_s) if stopping else None
    final = step_no == run.max_steps or stopping
    run.checkpoints.save(run.model, run.optimizer, run.scheduler, run.progress, final, deadline)
    run.result.save_stalls.append(time.perf_counter() - t0)


def maybe_score_and_sample(run: Run) -> None:
    cfg, step_no, main = run.cfg, run.progress.step, run.accelerator.is_main_process
    model = run.accelerator.unwrap_model(run.model)
    scored = cfg.score_steps and step_no % cfg.score_steps == 0
    sampled = cfg.sample_steps and step_no % cfg.sample_steps == 0
    if scored:
        run.checkpoints.finish()  # the score may name this step's checkpoint: it must exist
        if main:
            score_now(cfg, run.scorer, model, step_no, run.last_eval, run.metrics, run.say)
    if main and sampled:
        sample_now(cfg, model, run.processor, step_no, run.metrics, run.say)
    if main and (scored or sampled):
        refresh_report(cfg.output_dir, run.say)


def _mark_stopped(cfg: TrainConfig, reason: str) -> None:
    """OUTPUT_DIR/STOPPED: a clean stop after a save, for job scripts (`accelerate launch` returns 1 whatever the
    ranks' exit codes); removed when the run starts again."""

    note = {"reason": reason, "latest": read_pointer(Path(cfg.output_dir), layout.LATEST), "time": time.time()}
    atomic_write_text(Path(cfg.output_dir) / layout.STOPPED, json.dumps(note) + "\n")


def _record_config(cfg: TrainConfig, say) -> None:
    """Write the resolved config to the run folder and print only what differs from the defaults; a STOPPED marker
    of an earlier stop goes (this start continues that run)."""
    (Path(cfg.output_dir) / layout.STOPPED).unlink(missing_ok=True)
    atomic_write_text(Path(cfg.output_dir) / layout.CONFIG_FILE, cfg.to_json() + "\n")
    changed = ", ".join(f"--{k} {v}" for k, v in cfg.changed().items() if k not in ("train_manifest", "output_dir"))
    say(f"config: {cfg.train_manifest} -> {cfg.output_dir}; {changed or 'defaults'} (all: {layout.CONFIG_FILE})")


def _stop_mid_window(run: Run, window) -> None:
    """Rewind the data position and RNG to the start of the dropped window, then save (unless that step is saved)."""
    start, rng, stream = window
    for name in ("micro_batches", "epoch", "samples_seen"):
        setattr(run.progress, name, getattr(start, name))
    restore_rng(rng)
    if stream is not None:
        run.data.stream.rewind(stream)
    resumed = run.result.resumed_from is not None and not run.result.losses  # the resumed checkpoint is this step
    deadline = run.stop.deadline(run.cfg.stop_save_s)
    run.checkpoints.save_at_stop(run.model, run.optimizer, run.scheduler, run.progress, resumed, deadline)


def optimizer_step(model, optimizer, scheduler, accelerator, batches, cfg, codebook_size, text_loss=None, stop=None):
    """One optimizer step over `grad_accum` micro-batches; gradients sync across ranks on the last one only.

    Returns:
        (mean audio loss per labelled code over all ranks, gradient norm, tokens on this rank, mean text loss per
        labelled text token or None without --text_loss_weight); None when `stop` was requested on any rank
        between two micro-batches (the gradients so far are dropped, no step is taken).
    """
    # every code weighs the same whatever its micro-batch or rank (loss.py)
    window = window_scale(accelerator, batches, cfg.text_loss_weight if text_loss is not None else 0.0)
    tokens = sum(positions(b)[0] for b in batches)
    loss_sum = text_sum = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(batches):
        if i and stop is not None and any_rank(accelerator, stop.requested):
            optimizer.zero_grad(set_to_none=True)
            return None
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            ce_sum = audio_loss_sum(model, batch, codebook_size)
            total = ce_sum * window.audio
            if text_loss is not None:
                text_ce = text_loss(batch["text_labels"])
                total = total + text_ce * window.text
                text_sum = text_sum + text_ce.detach()
            backward(accelerator, total, last)
        loss_sum = loss_sum + ce_sum.detach()  # summed on the device: no sync per micro-batch
    grad_norm = None
    if cfg.max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)  # DeepSpeed: clipped inside
        grad_norm = None if norm is None else float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    text = global_sum(accelerator, text_sum.item()) / window.text_tokens if text_loss is not None else None
    loss = global_sum(accelerator, loss_sum.item()) / window.codes  # note: the step's sync
    check_finite(loss, grad_norm, text)  # the same values on every rank: all stop before the weights change
    try:
        optimizer.step()
    except RuntimeError as e:  # an update too large for the weights' dtype (AdamW's step size overflows)
        if "overflow" not in str(e):
            raise
        raise NonFinite("the update overflows float32: the learning rate is", scheduler.get_last_lr()[0]) from e
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, tokens, text
