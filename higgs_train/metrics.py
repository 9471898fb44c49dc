"""Where the run's numbers go: OUTPUT_DIR/metrics.jsonl always, TensorBoard with --report_to tensorboard."""

from __future__ import annotations

import json
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Main process only. On resume, rows past the resumed step are dropped first (those steps are redone)."""

    def __init__(self, output_dir: str | Path, resumed_step: int, report_to: str = "none"):
        path = Path(output_dir) / METRICS_FILE
        if path.exists():
            lines = path.read_text().splitlines()
            keep = [line for line in lines if line and json.loads(line)["step"] <= resumed_step]
            path.write_text("".join(line + "\n" for line in keep))
        self._file = open(path, "a")
        self._tb = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(output_dir) / TENSORBOARD_DIR), purge_step=resumed_step + 1)

    def log(self, row: dict) -> None:
        self._file.write(json.dumps({**row, "time": time.time()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{key}" if key != "eval_loss" else "eval/loss", value, row["step"])

    def audio(self, tag: str, wave, sample_rate: int, step: int) -> None:
        if self._tb is not None:
            self._tb.add_audio(tag, wave, step, sample_rate=sample_rate)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
