"""`higgs-train score RUN_DIR`: score every valid checkpoint of a run (or a chosen list) after the fact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.resume import list_checkpoints, load_adapter_weights, read_trainer_state, valid_checkpoints
from higgs_train.config import DEFAULT_ASR_MODEL, SELECT_BEST_BY
from higgs_train.data.formats import Columns
from higgs_train.data.manifest import load_manifest
from higgs_train.data.prepare import DEFAULT_CHARS_PER_SECOND, REPORT_FILE
from higgs_train.errors import CheckpointError, ConfigError
from higgs_train.generate import load_with_adapter
from higgs_train.language import parse_languages
from higgs_train.metrics import METRICS_FILE, read_metrics
from higgs_train.plot import plot_panels, score_panels
from higgs_train.report import refresh_report
from higgs_train.run_folder import SCORES_PNG
from higgs_train.scoring.best import ScoreRow
from higgs_train.scoring.score import (
    Scorer,
    append_score,
    items_from_samples,
    mark_best,
    read_scores,
    scored_clips_dir,
)
from higgs_train.settings import ScoreSettings


def _rows_to_score(config: dict, score_manifest: str | None):

    manifest = score_manifest or config.get("score_manifest") or config.get("eval_manifest")
    columns = Columns(config.get("text_column"), config.get("audio_column"))
    languages = parse_languages(config.get("language"))
    return load_manifest(manifest or config["train_manifest"], columns=columns, languages=languages)


def score_run(settings: ScoreSettings, say: Callable[[str], None] = print) -> tuple[list[ScoreRow], ScoreRow | None]:
    """Score the valid checkpoints (in step order); append to scores.jsonl; move `best`.

    Raises:
        ConfigError: an unknown --select_best_by.
        CheckpointError: no valid checkpoint to score.
    """
    from safetensors.torch import load_file

    if settings.select_best_by not in SELECT_BEST_BY:
        raise ConfigError(f"--select_best_by must be {', '.join(SELECT_BEST_BY)}, got {settings.select_best_by!r}")
    run_dir = Path(settings.run_dir)
    paths = [Path(c) for c in settings.checkpoint] if settings.checkpoint else list_checkpoints(run_dir)
    valid = sorted((r.path for r in valid_checkpoints(paths, say)), key=lambda p: layout.parse_step(p.name) or 0)
    if not valid:
        raise CheckpointError(f"{run_dir}: no valid checkpoint to score; see `higgs-train checkpoints {run_dir}`")
    model, processor, config = _load_newest(valid, say)
    report = run_dir / REPORT_FILE
    data = json.loads(report.read_text()) if report.exists() else {}
    asr = settings.asr_model or config.get("asr_model", DEFAULT_ASR_MODEL)
    frames = config.get("sample_max_frames", 250)
    items = items_from_samples(_rows_to_score(config, settings.score_manifest), settings.score_samples)
    scorer = Scorer(
        processor,
        asr,
        data.get("chars_per_second") or DEFAULT_CHARS_PER_SECOND,
        frames,
        config.get("speaker_model", "resemblyzer"),
        data.get("rates_by_language"),
        {item.language for item in items},
    )
    eval_losses = _eval_losses(run_dir)
    rows = []
    for path in valid:
        try:
            load_adapter_weights(model, load_file(str(path / layout.ADAPTER_WEIGHTS)), path)
        except OSError:
            if path.exists():
                raise
            say(f"skipped {path.name}: removed while scoring (rotated away by the training run)")
            continue
        step = layout.parse_step(path.name) or 0
        row = scorer.score(model, items, step, eval_losses.get(step), keep=scored_clips_dir(run_dir, step))
        row.checkpoint = path.name
        append_score(run_dir, row)
        rows.append(row)
        say(f"scored {path.name}")
    best = mark_best(run_dir, settings.select_best_by)
    refresh_report(run_dir, say)
    return rows, best


def _load_newest(valid: list[Path], say):
    """The base with the newest checkpoint's adapter (its run's model and audio tokenizer); a checkpoint that a
    running training rotated away since it was listed is skipped, saying so.

    Raises:
        CheckpointError: every checkpoint listed is gone.
    """

    for path in reversed(valid):
        try:
            config = read_trainer_state(path)["config"]
            model, processor = load_with_adapter(
                config["model"], str(path), audio_tokenizer=config.get("audio_tokenizer"), flag="checkpoint"
            )
            return model, processor, config
        except (OSError, CheckpointError):
            if path.exists():
                raise
            say(f"skipped {path.name}: removed while scoring (rotated away by the training run)")
    raise CheckpointError(f"{valid[0].parent}: every checkpoint listed was removed while scoring; run score again")


def _eval_losses(run_dir: Path) -> dict[int, float]:

    if not (run_dir / METRICS_FILE).exists():
        return {}
    return {r["step"]: r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r}


def score_summary(settings: ScoreSettings, rows: list[ScoreRow], best: ScoreRow | None):
    """What `higgs-train score` prints: the table with the best marked, and one line naming it and the curves."""
    error = f" (error = {best.headline_name})" if best and settings.select_best_by in ("combined", "error") else ""
    chosen = best.checkpoint if best else "-"
    return score_table(
        rows, best
    ), f"best by {settings.select_best_by}{error}: {chosen}; curves: {plot_scores(settings.run_dir)}"


def plot_scores(run_dir: str | Path) -> Path:
    """scores.png: WER, similarity, duration ratio and trailing share against the step."""

    return plot_panels(score_panels(read_scores(run_dir)), Path(run_dir) / SCORES_PNG)


def score_table(rows: list[ScoreRow], best: ScoreRow | None):
    """The rich table `higgs-train score` prints, the best row marked."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for name in ("checkpoint", "step", "error", "metric", "WER", "CER", "sim", "dur", "trail", "eval", "best"):
        table.add_column(name, no_wrap=True)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for r in rows:
        mark = "*" if best and r.step == best.step else ""
        table.add_row(
            r.checkpoint,
            str(r.step),
            fmt(r.headline),
            r.metric or "wer",
            fmt(r.wer),
            fmt(r.cer),
            fmt(r.similarity),
            fmt(r.duration_ratio),
            fmt(r.trailing_share),
            fmt(r.eval_loss),
            mark,
        )
    return table
