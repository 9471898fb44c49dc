"""`higgs-train plot RUN_DIR`: loss, eval loss, learning rate and gradient-norm curves to one PNG."""

from __future__ import annotations

from pathlib import Path

from higgs_train.errors import HiggsTrainError
from higgs_train.metrics import METRICS_FILE, read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise HiggsTrainError(f"{run_dir}: no {METRICS_FILE}; pass the --output_dir of a run")
    rows = read_metrics(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    panels = [("loss", "loss"), ("eval_loss", "eval loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm")]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
