"""Where the run's numbers go: OUTPUT_DIR/metrics.jsonl always, and the trackers --report_to names (TensorBoard,
Weights & Biases, MLflow, through accelerate's tracker classes): the same rows, the run's config, sample audio. A
resumed run continues the same tracker run (ids in OUTPUT_DIR/trackers.json)."""

from __future__ import annotations

import errno
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from higgs_train.config import report_to_names
from higgs_train.errors import ConfigError
from higgs_train.files import atomic_write_text
from higgs_train.run_folder import METRICS_FILE, TENSORBOARD_DIR, TRACKER_IDS  # noqa: F401 - the names this module writes

PROJECT = "higgs-train"  # the W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say


@dataclass
class StepStats:
    """One optimizer step's figures, as the loop measured them."""

    loss: float  # mean audio loss per labelled code, all ranks
    grad_norm: float | None
    tokens: int  # real tokens on this rank
    padded: int  # tokens including padding on this rank
    text_loss: float | None
    lr: float
    data_s: float
    step_s: float

    def tokens_per_s(self, world: int) -> float:
        return self.tokens * world / max(self.step_s, 1e-9)

    def row(self, step: int, epoch: int, world: int) -> dict:
        """The step's metrics.jsonl row."""
        row = {
            "step": step,
            "epoch": epoch,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "tokens_per_s": round(self.tokens_per_s(world), 1),
            "padding_share": round(1 - self.tokens / self.padded, 4),
            "data_s": round(self.data_s, 5),
            "step_s": round(self.step_s, 5),
        }
        if self.text_loss is not None:
            row["text_loss"] = self.text_loss
        return row


class MetricsLog:
    """Main process only. On resume, rows past the resumed step are dropped first (those steps are redone), and so
    is a line torn by a crash or a full disk.

    Each row is written whole with one `write` call; a write that fails (a full disk between saves) is cut back
    to the last whole row and reported once as a warning: metrics never stop training, and the next save deals
    with the disk. A tracker that fails to start stops the run before training (it was asked for); one that fails
    later is reported once and training goes on.
    """

    def __init__(
        self,
        output_dir: str | Path,
        resumed_step: int,
        report_to: str = "none",
        say: Callable[[str], None] = print,
        config: dict | None = None,
    ):
        path = Path(output_dir) / METRICS_FILE
        if path.exists():
            keep = [row for row in parse_rows(path.read_text(errors="replace")) if row.get("step", 0) <= resumed_step]
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in keep))
        self.path, self.say = path, say
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._failing = False
        self._broken: set[str] = set()  # trackers that failed once (said once)
        self.trackers = open_trackers(report_to_names(report_to), Path(output_dir), resumed_step, config or {})

    def log(self, row: dict) -> None:
        self._append((json.dumps({**row, "time": time.time()}) + "\n").encode())
        if not self.trackers:
            return
        values = {_tag(k): v for k, v in row.items() if k != "step" and isinstance(v, int | float)}
        for tracker in self.trackers:
            self._guard(tracker.name, lambda t=tracker: t.log(values, step=row["step"]))

    def audio(self, tag: str, wave, sample_rate: int, step: int, path: Path | None = None) -> None:
        """A clip to every tracker: TensorBoard and W&B take the wave, MLflow the WAV file as an artifact."""
        for tracker in self.trackers:
            self._guard(tracker.name, lambda t=tracker: _log_audio(t, tag, wave, sample_rate, step, path))

    def close(self) -> None:
        os.close(self._fd)
        for tracker in self.trackers:
            self._guard(tracker.name, tracker.finish)

    def _guard(self, name: str, call) -> None:
        try:
            call()
        except Exception as e:  # a tracker informs; it never stops training
            if name not in self._broken:
                self.say(f"warning: --report_to {name} failed ({type(e).__name__}: {e}); training goes on")
            self._broken.add(name)

    def _append(self, line: bytes) -> None:
        size = os.fstat(self._fd).st_size
        try:
            if os.write(self._fd, line) != len(line):
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)")
            self._failing = False
        except OSError as e:
            try:
                os.ftruncate(self._fd, size)  # never leave half a row
            except OSError:
                pass  # readers skip a torn line anyway
            if not self._failing:
                self.say(f"warning: cannot write {self.path} ({e.strerror or e}); rows are lost until it works again")
            self._failing = True


def parse_rows(text: str) -> list[dict]:
    """The JSON rows of a metrics file; a torn line (a crash or a full disk mid-write) is skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict]:
    return parse_rows((Path(run_dir) / METRICS_FILE).read_text(errors="replace"))


def _tag(key: str) -> str:
    return "eval/loss" if key == "eval_loss" else f"train/{key}"


def _log_audio(tracker, tag: str, wave, sample_rate: int, step: int, path: Path | None) -> None:
    if tracker.name == "tensorboard":
        tracker.writer.add_audio(tag, wave, step, sample_rate=sample_rate)
    elif tracker.name == "wandb":
        import wandb

        tracker.run.log({tag: wandb.Audio(wave, sample_rate=sample_rate)}, step=step)
    elif tracker.name == "mlflow" and path is not None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=f"samples/step-{step}")


def open_trackers(names: list[str], output_dir: Path, resumed_step: int, config: dict) -> list:
    """Start each tracker (main process), continuing the tracker runs of an earlier start of this run.

    Raises:
        ConfigError: a tracker that cannot start (no server, no login), naming what to set.
    """
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    ids_path = output_dir / TRACKER_IDS
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    trackers = []
    for name in names:
        new = name not in ids
        try:
            if name == "tensorboard":
                tracker = TensorBoardTracker("", output_dir / TENSORBOARD_DIR, purge_step=resumed_step + 1)
            elif name == "wandb":
                ids.setdefault("wandb", secrets.token_hex(4))
                where = {} if os.environ.get("WANDB_DIR") else {"dir": str(output_dir)}
                project = os.environ.get("WANDB_PROJECT", PROJECT)
                tracker = WandBTracker(project, id=ids["wandb"], resume="allow", name=output_dir.name, **where)
            else:
                tracker = MLflowTracker(PROJECT, run_id=ids.get("mlflow"), run_name=output_dir.name)
            tracker.start()
            if name == "mlflow":
                ids["mlflow"] = tracker.active_run.info.run_id
            if new:
                tracker.store_init_configuration({k: _plain(v) for k, v in config.items()})
        except Exception as e:
            for started in trackers:
                started.finish()
            raise ConfigError(f"--report_to {name}: cannot start the tracker ({type(e).__name__}: {e})") from e
        trackers.append(tracker)
    if ids:
        atomic_write_text(ids_path, json.dumps(ids, indent=2) + "\n")
    return trackers


def _plain(value):
    """Config values every tracker accepts (TensorBoard's hparams take no None or lists)."""
    return value if isinstance(value, bool | int | float | str) else str(value)
