"""Where the run's numbers go: OUTPUT_DIR/metrics.jsonl always, TensorBoard with --report_to tensorboard."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from higgs_train.checkpoint.io import atomic_write_text

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Main process only. On resume, rows past the resumed step are dropped first (those steps are redone), and so
    is a line torn by a crash or a full disk.

    Each row is written whole with one `write` call; a write that fails (a full disk between saves) is cut back
    to the last whole row and reported once as a warning: metrics never stop training, and the next save deals
    with the disk.
    """

    def __init__(
        self,
        output_dir: str | Path,
        resumed_step: int,
        report_to: str = "none",
        say: Callable[[str], None] = print,
    ):
        path = Path(output_dir) / METRICS_FILE
        if path.exists():
            keep = [row for row in parse_rows(path.read_text(errors="replace")) if row.get("step", 0) <= resumed_step]
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in keep))
        self.path, self.say = path, say
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._failing = False
        self._tb = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(output_dir) / TENSORBOARD_DIR), purge_step=resumed_step + 1)

    def log(self, row: dict) -> None:
        self._append((json.dumps({**row, "time": time.time()}) + "\n").encode())
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{key}" if key != "eval_loss" else "eval/loss", value, row["step"])

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

    def audio(self, tag: str, wave, sample_rate: int, step: int) -> None:
        if self._tb is not None:
            self._tb.add_audio(tag, wave, step, sample_rate=sample_rate)

    def close(self) -> None:
        os.close(self._fd)
        if self._tb is not None:
            self._tb.close()


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
