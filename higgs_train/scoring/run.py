"""`higgs-train score RUN_DIR`: score every valid checkpoint of a run (or a chosen list) after the fact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.resume import list_checkpoints
from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.errors import CheckpointError
from higgs_train.scoring.best import ScoreRow
from higgs_train.scoring.score import Scorer, append_score, items_from_samples, mark_best, read_scores


def _rows_to_score(config: dict, score_manifest: str | None):
    from higgs_train.data.manifest import load_manifest

    manifest = score_manifest or config.get("score_manifest") or config.get("eval_manifest")
    return load_manifest(manifest or config["train_manifest"])


def score_run(
    run_dir: str | Path,
    checkpoints: list[str] | None = None,
    score_manifest: str | None = None,
    asr_model: str | None = None,
    by: str = "combined",
    samples: int = 4,
    max_frames: int = 250,
    say: Callable[[str], None] = print,
) -> tuple[list[ScoreRow], ScoreRow | None]:
    """Score the checkpoints (newest first listing, scored in step order); append to scores.jsonl; move `best`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from higgs_train.generate import load_with_adapter

    run_dir = Path(run_dir)
    paths = [Path(c) for c in checkpoints] if checkpoints else list_checkpoints(run_dir)
    valid = []
    for path in paths:
        result = verify_checkpoint(path)
        if result.ok:
            valid.append(path)
        else:
            say(f"skipping {path}: {'; '.join(result.problems)}")
    if not valid:
        raise CheckpointError(f"{run_dir}: no valid checkpoint to score; see `higgs-train checkpoints {run_dir}`")
    valid.sort(key=lambda p: layout.parse_step(p.name) or 0)
    config = json.loads((valid[-1] / layout.TRAINER_STATE).read_text())["config"]
    model, processor = load_with_adapter(config["model"], str(valid[-1]), audio_tokenizer=config.get("audio_tokenizer"))
    report = run_dir / "data_report.json"
    rate = json.loads(report.read_text()).get("chars_per_second", 15.0) if report.exists() else 15.0
    asr = asr_model or config.get("asr_model", "openai/whisper-small")
    scorer = Scorer(processor, asr, rate, max_frames, config.get("speaker_model", "resemblyzer"))
    items = items_from_samples(_rows_to_score(config, score_manifest), samples)
    eval_losses = _eval_losses(run_dir)
    rows = []
    for path in valid:
        set_peft_model_state_dict(model, load_file(str(path / layout.ADAPTER_WEIGHTS)))
        step = layout.parse_step(path.name) or 0
        row = scorer.score(model, items, step, eval_losses.get(step))
        row.checkpoint = path.name
        append_score(run_dir, row)
        rows.append(row)
        say(f"scored {path.name}")
    return rows, mark_best(run_dir, by)


def _eval_losses(run_dir: Path) -> dict[int, float]:
    from higgs_train.metrics import METRICS_FILE, read_metrics

    if not (run_dir / METRICS_FILE).exists():
        return {}
    return {r["step"]: r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r}


def plot_scores(run_dir: str | Path) -> Path:
    """scores.png: WER, similarity, duration ratio and trailing share against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_scores(run_dir)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        ("wer", "WER"),
        ("similarity", "speaker similarity"),
        ("duration_ratio", "duration ratio"),
        ("trailing_share", "trailing non-speech share"),
    ]
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        points = [(r.step, getattr(r, key)) for r in rows if getattr(r, key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "scores.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def score_table(rows: list[ScoreRow], best: ScoreRow | None):
    """The rich table `higgs-train score` prints, the best row marked."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for name in ("checkpoint", "step", "WER", "CER", "sim", "dur", "trail", "eval", "best"):
        table.add_column(name, no_wrap=True)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for r in rows:
        mark = "*" if best and r.step == best.step else ""
        table.add_row(
            r.checkpoint,
            str(r.step),
            fmt(r.wer),
            fmt(r.cer),
            fmt(r.similarity),
            fmt(r.duration_ratio),
            fmt(r.trailing_share),
            fmt(r.eval_loss),
            mark,
        )
    return table
