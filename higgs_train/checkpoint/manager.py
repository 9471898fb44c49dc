"""The run's checkpoint manager (orbax's CheckpointManager is the model): every decision about checkpoints during a
run is made here. Which checkpoint a start resumes from; when to save (every --save_steps, the last step, a stop);
the save itself, which every process calls (memory check, replica check, a CPU snapshot, the guarded save on the
main process, in a background thread with --async_save, rotation) and whose outcome reaches every rank; and the
failure policy (--on_save_error, --max_save_failures). The best pointer is a score's verdict (scoring/score.py)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.memory import memory_report, relieve_if_low
from higgs_train.checkpoint.resume import choose_resume
from higgs_train.checkpoint.rotate import rotate
from higgs_train.checkpoint.save import SaveResult, save_checkpoint
from higgs_train.checkpoint.state import Snapshot, TrainingProgress, capture_rng
from higgs_train.config import TrainConfig
from higgs_train.distributed import adapter_digest, check_replicas, on_main
from higgs_train.errors import CheckpointError
from higgs_train.sharded import PLAIN, ZERO2, full_adapter, full_optimizer_state, sharding


def cpu_copy(obj):
    """A deep copy with every tensor on the CPU: later optimizer steps must not change a snapshot being written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class CheckpointManager:
    def __init__(
        self,
        cfg: TrainConfig,
        accelerator,
        say: Callable[[str], None],
        model_fingerprint: str | None = None,
        stream=None,
    ):
        self.cfg, self.accelerator, self.say = cfg, accelerator, say
        self.stream = stream  # --streaming: each process's position and buffer go into the checkpoint
        self.model_fingerprint = model_fingerprint
        self.out = Path(cfg.output_dir)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="save") if cfg.async_save else None
        self._pending: Future | None = None
        self.last_step: int | None = None  # the step of the last save asked for
        self.saves: list[SaveResult] = []  # every finished save of this run, in order, the same on every rank

    @staticmethod
    def resume_target(cfg: TrainConfig, accelerator, say: Callable[[str], None]) -> Path | None:
        """The checkpoint this start continues (--resume auto, never or PATH), chosen on the main process after
        leftovers of interrupted saves are cleaned; None for a fresh start."""

        roots = [Path(cfg.output_dir)] + ([Path(cfg.fallback_dir)] if cfg.fallback_dir else [])
        return on_main(accelerator, choose_resume, cfg.resume, roots, say)

    def due(self, step: int, max_steps: int, stopping: bool) -> bool:
        """Save at this step: every --save_steps, at the last step and when stopping."""
        return step % self.cfg.save_steps == 0 or step == max_steps or stopping

    def save(self, model, optimizer, scheduler, progress: TrainingProgress, final: bool, deadline=None) -> None:
        """Save this step (see `__call__`), then apply the failure policy to every save so far.

        Raises:
            CheckpointError: a save failed and --on_save_error stop, or --max_save_failures in a row failed.
        """
        self.saves += self(model, optimizer, scheduler, progress, final, deadline)
        enforce_save_policy(self.cfg, self.saves)

    def save_at_stop(self, model, optimizer, scheduler, progress: TrainingProgress, resumed: bool, deadline) -> None:
        """A stop signal cut a step's window (rewound to the last finished step): save that step unless it is saved
        or being saved already (`resumed`: it is the checkpoint this start resumed from)."""
        if self.last_step == progress.step or resumed or progress.step == 0:
            self.finish()
        else:
            self.saves += self(model, optimizer, scheduler, progress, final=True, deadline=deadline)

    def __call__(
        self, model, optimizer, scheduler, progress: TrainingProgress, final: bool, deadline: float | None = None
    ) -> list[SaveResult]:
        """Save at this step. Returns the saves that completed during this call (with --async_save, the previous
        one; the current one too when `final`), the same list on every rank. `deadline` (a stop-save): see
        save_checkpoint."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        self.last_step = progress.step
        memory = memory_report()
        if relieve_if_low(memory):
            self.say("memory is low: collected garbage and emptied the CUDA cache before the save")
        unwrapped = acc.unwrap_model(model)
        adapter = full_adapter(acc, model)  # FSDP2 / ZeRO-3: gathered by every rank (the adapter alone)
        if acc.num_processes > 1 and sharding(acc) in (PLAIN, ZERO2):  # replicated weights: they must agree
            check_replicas(gather_object([adapter_digest(adapter)]), progress.step)
        gathered_optimizer = full_optimizer_state(acc, model, optimizer, progress.step)  # None when not sharded
        stream = self.stream.state_dict() if self.stream is not None else None
        ranks = gather_object([(acc.process_index, capture_rng(), stream)])

        def snapshot() -> Snapshot:
            config = unwrapped.peft_config["default"].to_dict()
            config["base_model_name_or_path"] = self.cfg.model
            return Snapshot(
                progress=TrainingProgress(**progress.to_dict()),
                adapter=adapter,
                adapter_config=config,
                config=self.cfg.to_dict(),
                optimizer=gathered_optimizer if gathered_optimizer is not None else cpu_copy(optimizer.state_dict()),
                scheduler=scheduler.state_dict(),
                scaler=acc.scaler.state_dict() if acc.scaler is not None else None,
                rng={rank: rng for rank, rng, _ in ranks},
                streams={rank: state for rank, _, state in ranks if state is not None},
                memory=memory,
                model_fingerprint=self.model_fingerprint,
            )

        def on_writer() -> list[SaveResult]:
            done = self._wait()
            snap = snapshot()
            if self._pool is None or final:
                done.append(self._save(snap, deadline))
            else:
                self._pending = self._pool.submit(self._save, snap)
            return done

        return on_main(acc, on_writer)

    def finish(self) -> list[SaveResult]:
        """Wait for a save still being written (every rank calls it; the outcome reaches all, and `saves`)."""
        done = on_main(self.accelerator, self._wait)
        self.saves += done
        return done

    def close(self) -> None:
        """Local, no collective: let a save still being written finish (e.g. when the run stops on an error)."""
        if self._pending is not None:
            self._wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _wait(self) -> list[SaveResult]:
        if self._pending is None:
            return []
        future, self._pending = self._pending, None
        return [future.result()]

    def _save(self, snap: Snapshot, deadline: float | None = None) -> SaveResult:
        cfg = self.cfg
        result = save_checkpoint(
            self.out, snap, fallback_dir=cfg.fallback_dir, min_free_disk_gb=cfg.min_free_disk_gb, deadline=deadline
        )
        report_save(result, self.say)
        if result.ok and cfg.save_total_limit and result.path.parent == self.out:
            rotate(self.out, cfg.save_total_limit, result.path, self.say)
        return result


def report_save(result: SaveResult, say) -> None:
    if result.kind == layout.KIND_FULL:
        say(f"saved {result.path} in {result.seconds:.2f}s")
    elif result.ok:
        say(f"warning: full save failed ({result.error}); wrote adapter-only fallback {result.path}")
    else:
        say(f"error: save at step {result.step} failed: {result.error}")


def enforce_save_policy(cfg: TrainConfig, saves: list[SaveResult]) -> None:
    """Stop on a failed save (--on_save_error stop), or after --max_save_failures failures in a row.

    With --async_save a failure is learnt at the next save, so the whole history is checked, not only its end.
    """
    run = longest = 0
    for s in saves:
        run = 0 if s.ok else run + 1
        longest = max(longest, run)
    failed = [s for s in saves if not s.ok]
    if failed and (cfg.on_save_error == "stop" or longest >= cfg.max_save_failures):
        last = failed[-1]
        raise CheckpointError(
            f"save at step {last.step} failed ({last.error}); the last good checkpoint is untouched. "
            "Free disk space or fix permissions, then rerun the same command to resume"
        )
