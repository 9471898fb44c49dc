"""Command line: flags to settings (see options.py), one call per command, typed errors to exit codes."""

from __future__ import annotations

import contextlib

import typer
from rich.console import Console

from higgs_train import config as config_module
from higgs_train import settings
from higgs_train.errors import HiggsTrainError
from higgs_train.options import commands, training_options

HELP = "LoRA fine-tuning of Higgs Audio v2. Run with training flags to train; rerun the same command to resume."
HELP_FLAGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, rich_markup_mode="rich", context_settings=HELP_FLAGS, help=HELP)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def say(msg: str, to: Console = err) -> None:
    to.print(msg, highlight=False, markup=False)


def show(msg: str) -> None:  # results go to stdout, progress and warnings to stderr
    say(msg, out)


@contextlib.contextmanager
def boundary():
    """The one place a user error becomes a message and an exit code (2 input, 3 checkpoint, 130 signal)."""
    try:
        yield
    except HiggsTrainError as e:
        err.print(f"error: {e}", style="red", highlight=False, markup=False)
        raise typer.Exit(e.exit_code) from None


command = commands(app, boundary)  # @command(NAME, *settings classes): one option per field, errors to exit codes
train_options = training_options(boundary)  # one option per TrainConfig field, plus --config


@app.callback(invoke_without_command=True)
@train_options
def train_command(ctx: typer.Context, config: str | None = None, **flags) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if config is None and all(v is None for v in flags.values()):
        out.print(ctx.get_help())
        raise typer.Exit(0)
    from higgs_train.train import train

    result = train(config_module.build_config(flags, config), log=say)
    if result.is_main:
        show(result.summary())


@app.command("prepare")
@train_options
def prepare_command(ctx: typer.Context, config: str | None = None, **flags) -> None:
    """Validate every row and encode the audio to codes once, into --output_dir's cache; print the report."""
    from higgs_train.data.pipeline import run_prepare

    run_prepare(config_module.build_config(flags, config), say=say)


@app.command("plan")
@train_options
def plan_command(ctx: typer.Context, config: str | None = None, **flags) -> None:
    """Estimated peak GPU memory by part, and the largest batch per common card (from --model's config.json)."""
    from higgs_train.plan import plan_table

    show(plan_table(config_module.build_config(flags, config, require_data=False)))


@command("init-tiny", settings.TinySettings)
def init_tiny(s: settings.TinySettings) -> None:
    """Write a tiny random-weight Higgs Audio v2 model folder (LM, tokenizers, processor) for offline runs."""
    from higgs_train.tiny import build_tiny_model

    show(f"model written to {build_tiny_model(s.directory, s.seed, s.full_shape)}; train with --model {s.directory}")


@command("convert", settings.ConvertSettings)
def convert_command(s: settings.ConvertSettings) -> None:
    """Convert Boson's original release layout into a folder that transformers' from_pretrained loads."""
    from higgs_train.convert import convert

    done = convert(s.src, s.output, s.audio_tokenizer, s.tokenizer_config, say=say)
    show(f"converted {s.src} -> {done}; train with --model {done}")


@command("checkpoints", settings.RunFolder)
def checkpoints(r: settings.RunFolder) -> None:
    """List a run's checkpoints: step, size, time, valid or why not, and which one a resume would take."""
    from higgs_train.checkpoint.report import checkpoints_listing
    from higgs_train.scoring.score import read_scores

    for part in checkpoints_listing(r.run_dir, {s.step: s for s in read_scores(r.run_dir)}):
        out.print(part, highlight=False, markup=False)


@command("verify", settings.CheckpointFolder)
def verify(c: settings.CheckpointFolder) -> None:
    """Exit 0 when the checkpoint is complete and intact, otherwise print why and exit 1."""
    from higgs_train.checkpoint.verify import verify_checkpoint

    result = verify_checkpoint(c.checkpoint)
    say(result.summary(), out if result.ok else err)
    raise typer.Exit(0 if result.ok else 1)


@command("generate", settings.GenerateSettings)
def generate(s: settings.GenerateSettings) -> None:
    """Speak TEXT with the base model plus an adapter; writes a 24 kHz WAV."""
    from higgs_train.generate import speak

    path, speech = speak(s)
    show(f"wrote {path}: {speech.frames} frames, {len(speech.wave) / speech.sample_rate:.2f}s")


@command("merge", settings.MergeSettings)
def merge(s: settings.MergeSettings) -> None:
    """Fold the adapter into the base weights; the folder loads with from_pretrained (checked against the adapter)."""
    from higgs_train.merge import merge_adapter

    diff = merge_adapter(s.model, s.adapter, s.output, say=say)
    show(f"merged model in {s.output} (max logit difference vs base + adapter: {diff:.2e})")


@command("plot", settings.RunFolder)
def plot(r: settings.RunFolder) -> None:
    """Draw loss, eval loss, learning rate and gradient norm from metrics.jsonl to RUN_DIR/curves.png."""
    from higgs_train.plot import plot_run

    show(f"wrote {plot_run(r.run_dir)}")


@command("report", settings.RunFolder)
def report(r: settings.RunFolder) -> None:
    """Write RUN_DIR/report.html: data, curves, scores with the best marked, and players to compare steps by ear."""
    from higgs_train.report import write_report

    show(f"wrote {write_report(r.run_dir)}")


@command("export", settings.ExportSettings)
def export(s: settings.ExportSettings) -> None:
    """Copy the best (else newest valid) adapter out of RUN_DIR with a model card and its samples; --push_to_hub."""
    from higgs_train.export import export_adapter

    out, _ = export_adapter(s, say=say)
    show(f"wrote {out}")


@command("doctor", settings.DoctorSettings)
def doctor(s: settings.DoctorSettings) -> None:
    """Versions, GPUs and free memory, disk and a write test, local model cache: each line ok or the fix."""
    from higgs_train.doctor import run_checks

    checks = run_checks(s.output_dir, s.model)
    show("\n".join(c.line() for c in checks))
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@command("prep", settings.PrepPaths, settings.PrepSettings)
def prep_command(paths: settings.PrepPaths, s: settings.PrepSettings) -> None:
    """Raw recordings to clean clips and a manifest: trim, split at pauses, normalise, report every drop."""
    from higgs_train.data.prep import prep

    prep(paths.src, paths.output_dir, s, say=show)


@command("score", settings.ScoreSettings)
def score(s: settings.ScoreSettings) -> None:
    """Score every valid checkpoint by listening; print the table with the best marked; write scores.png."""
    from higgs_train.scoring.run import score_run, score_summary

    for part in score_summary(s, *score_run(s, say=say)):
        out.print(part)


def main() -> None:
    app(prog_name="higgs-train")
