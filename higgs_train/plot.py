"""`higgs-train plot RUN_DIR`: loss, eval loss, learning rate and gradient-norm curves to one PNG; and the one 2x2
figure every curve of the project is drawn in."""

from __future__ import annotations

from pathlib import Path

from higgs_train.errors import HiggsTrainError
from higgs_train.metrics import METRICS_FILE, read_metrics
from higgs_train.run_folder import CURVES_PNG


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise HiggsTrainError(f"{run_dir}: no {METRICS_FILE}; pass the --output_dir of a run")
    out = Path(out) if out else run_dir / CURVES_PNG
    return plot_panels(training_panels(read_metrics(run_dir)), out, title=str(run_dir))


def training_panels(rows: list[dict]) -> dict[str, list[tuple[float, float | None]]]:
    """Loss, eval loss, learning rate and gradient norm against the step, from metrics rows."""
    titles = {"loss": "loss", "eval_loss": "eval loss", "lr": "learning rate", "grad_norm": "gradient norm"}
    return {title: [(r["step"], r.get(key)) for r in rows] for key, title in titles.items()}


def score_panels(rows: list) -> dict[str, list[tuple[float, float | None]]]:
    """The headline error rate (WER, or CER for scripts without spaces), similarity, duration ratio and trailing
    share against the step."""
    error = "/".join(dict.fromkeys(r.headline_name for r in rows)) or "WER"
    panels = {f"{error} (headline error)": [(r.step, r.headline) for r in rows]}
    titles = {"similarity": "speaker similarity", "duration_ratio": "duration ratio"}
    titles["trailing_share"] = "trailing non-speech share"
    return panels | {title: [(r.step, getattr(r, key)) for r in rows] for key, title in titles.items()}


def plot_panels(panels: dict[str, list[tuple[float, float | None]]], out, title: str | None = None):
    """Four (title -> [(step, value)]) panels in a 2x2 PNG written to `out` (a path or a binary file); None values
    are left out, an empty panel says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, points) in zip(axes.flat, panels.items(), strict=True):
        points = [(x, y) for x, y in points if y is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return out
