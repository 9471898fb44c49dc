"""Command line: flags to a TrainConfig, one call per command, typed errors to exit codes. Nothing else."""

from __future__ import annotations

import inspect
import sys
from dataclasses import fields
from pathlib import Path

import typer
from rich.console import Console

from higgs_train.config import BASE_MODEL, TrainConfig, build_config
from higgs_train.errors import HiggsTrainError

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="LoRA fine-tuning of Higgs Audio v2. Run with training flags to train; rerun the same command to resume.",
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(e: HiggsTrainError) -> typer.Exit:
    err.print(f"error: {e}", style="red", highlight=False, markup=False)
    return typer.Exit(e.exit_code)


def _option(f) -> inspect.Parameter:
    """A typer option for one TrainConfig field: --name and --dashed-name, default None (= not given)."""
    names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
    kind = str(f.type).replace(" | None", "")
    if kind == "bool":
        names = [f"{n}/--no-{n[2:]}" for n in names]
    annotation = {"int": int | None, "float": float | None, "bool": bool | None}.get(kind, str | None)
    default = typer.Option(
        None,
        *names,
        help=f.metadata["help"],
        rich_help_panel=f.metadata["group"],
        show_default=str(f.default) if f.default is not None else False,
    )
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def train_command(ctx: typer.Context, config: str | None = None, **flags) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if config is None and all(v is None for v in flags.values()):
        out.print(ctx.get_help())
        raise typer.Exit(0)
    from higgs_train.train import train

    try:
        cfg = build_config(flags, config)
        result = train(cfg, log=lambda msg: err.print(msg, highlight=False, markup=False))
    except HiggsTrainError as e:
        raise _fail(e) from None
    if not result.is_main:
        return
    last = result.saves[-1].path if result.saves else result.resumed_from
    losses = result.losses
    if losses:
        out.print(f"done: step {result.progress.step}, loss {losses[0]:.4f} -> {losses[-1]:.4f}", highlight=False)
    out.print(f"adapter: {last}", highlight=False)


def _with_train_options(fn):
    """Give `fn(ctx, config, **flags)` one typer option per TrainConfig field, plus --config."""
    config = inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=str | None,
        default=typer.Option(None, "--config", help="YAML preset (see configs/); flags given here win."),
    )
    ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    fn.__signature__ = inspect.Signature([ctx, config, *[_option(f) for f in fields(TrainConfig)]])
    return fn


app.callback(invoke_without_command=True)(_with_train_options(train_command))


def prepare_command(ctx: typer.Context, config: str | None = None, **flags) -> None:
    """Validate every row and encode the audio to codes once, into --output_dir's cache; print the report."""
    from higgs_train.data.pipeline import run_prepare

    try:
        run_prepare(build_config(flags, config), say=lambda msg: err.print(msg, highlight=False, markup=False))
    except HiggsTrainError as e:
        raise _fail(e) from None


app.command("prepare")(_with_train_options(prepare_command))


@app.command("init-tiny")
def init_tiny(
    directory: Path = typer.Argument(..., help="Folder to write the tiny random-weight model into."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Write a tiny random-weight Higgs Audio v2 model folder (LM, tokenizers, processor) for offline runs."""
    from higgs_train.tiny import build_tiny_model

    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        err.print(f"error: {directory} exists and is not an empty folder; choose a new one", style="red", markup=False)
        raise typer.Exit(2)
    build_tiny_model(directory, seed=seed)
    out.print(f"tiny model written to {directory}; train with --model {directory}", highlight=False)


@app.command("convert")
def convert_command(
    src: Path = typer.Argument(..., help="Boson's original LM folder, or its original audio tokenizer folder."),
    output: Path = typer.Argument(..., help="New folder for the transformers layout (pass it as --model)."),
    audio_tokenizer: str | None = typer.Option(
        None, "--audio_tokenizer", "--audio-tokenizer", help="The LM's audio tokenizer [default: SRC/audio_tokenizer]."
    ),
    tokenizer_config: str | None = typer.Option(
        None, "--tokenizer_config", "--tokenizer-config", help="HiggsAudioV2TokenizerConfig JSON for model.pth."
    ),
) -> None:
    """Convert Boson's original release layout into a folder that transformers' from_pretrained loads."""
    from higgs_train.convert import convert

    try:
        done = convert(src, output, audio_tokenizer, tokenizer_config, say=lambda m: err.print(m, markup=False))
    except HiggsTrainError as e:
        raise _fail(e) from None
    out.print(f"converted {src} -> {done}; train with --model {done}", highlight=False)


@app.command("checkpoints")
def checkpoints(run_dir: Path = typer.Argument(..., help="A run's --output_dir.")) -> None:
    """List a run's checkpoints: step, size, time, valid or why not, and which one a resume would take."""
    from higgs_train.checkpoint.report import checkpoint_rows, checkpoint_table

    if not run_dir.is_dir():
        err.print(f"error: {run_dir}: no such run folder; pass a run's --output_dir", style="red", markup=False)
        raise typer.Exit(2)
    rows = checkpoint_rows(run_dir)
    if not rows:
        out.print(f"{run_dir}: no checkpoints", highlight=False)
        return
    table = checkpoint_table(rows)
    out.print(table)
    for r in rows:
        if r.best:
            out.print(f"best (*): {r.name}", highlight=False)
        if not r.valid:
            out.print(f"{r.name}: {r.reason}", highlight=False, markup=False)


@app.command("verify")
def verify(checkpoint: Path = typer.Argument(..., help="A checkpoint folder.")) -> None:
    """Exit 0 when the checkpoint is complete and intact, otherwise print why and exit 1."""
    from higgs_train.checkpoint.verify import verify_checkpoint

    result = verify_checkpoint(checkpoint)
    (out if result.ok else err).print(result.summary(), highlight=False, markup=False)
    raise typer.Exit(0 if result.ok else 1)


@app.command("generate")
def generate(
    text: str = typer.Option(..., "--text", help="What to say."),
    out_path: Path = typer.Option(Path("sample.wav"), "--out", help="WAV file to write."),
    model: str = typer.Option(BASE_MODEL, "--model", help="Base model: hub id or folder."),
    adapter: str | None = typer.Option(None, "--adapter", help="Checkpoint folder of a LoRA adapter."),
    ref_audio: str | None = typer.Option(None, "--ref_audio", "--ref-audio", help="Reference clip to clone."),
    ref_text: str | None = typer.Option(None, "--ref_text", "--ref-text", help="Transcript of the reference clip."),
    max_frames: int = typer.Option(500, "--max_frames", "--max-frames", help="Longest output (25 frames/s)."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0 = greedy)."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Speak TEXT with the base model plus an adapter; writes a 24 kHz WAV."""
    from higgs_train.generate import check_request, generate_speech, load_with_adapter, write_wav

    try:
        check_request(text, out_path, ref_audio)
        lm, processor = load_with_adapter(model, adapter)
        speech = generate_speech(lm, processor, text, ref_audio, ref_text, max_frames, temperature, seed)
        path = write_wav(speech, out_path)
    except HiggsTrainError as e:
        raise _fail(e) from None
    out.print(f"wrote {path}: {speech.frames} frames, {len(speech.wave) / speech.sample_rate:.2f}s", highlight=False)


@app.command("merge")
def merge(
    model: str = typer.Option(BASE_MODEL, "--model", help="Base model: hub id or folder."),
    adapter: str = typer.Option(..., "--adapter", help="Checkpoint folder of a LoRA adapter."),
    output: Path = typer.Option(..., "--output", help="Folder for the merged model."),
) -> None:
    """Fold the adapter into the base weights; the folder loads with from_pretrained (checked against the adapter)."""
    from higgs_train.merge import merge_adapter

    try:
        diff = merge_adapter(model, adapter, output)
    except HiggsTrainError as e:
        raise _fail(e) from None
    out.print(f"merged model in {output} (max logit difference vs base + adapter: {diff:.2e})", highlight=False)


@app.command("plot")
def plot(run_dir: Path = typer.Argument(..., help="A run's --output_dir.")) -> None:
    """Draw loss, eval loss, learning rate and gradient norm from metrics.jsonl to RUN_DIR/curves.png."""
    from higgs_train.plot import plot_run

    try:
        out.print(f"wrote {plot_run(run_dir)}", highlight=False)
    except HiggsTrainError as e:
        raise _fail(e) from None


@app.command("doctor")
def doctor(
    output_dir: str | None = typer.Option(None, "--output_dir", "--output-dir", help="Check this run folder too."),
    model: str = typer.Option(BASE_MODEL, "--model", help="Model to look for in the local cache."),
) -> None:
    """Versions, GPUs and free memory, disk and a write test, local model cache: each line ok or the fix."""
    from higgs_train.doctor import run_checks

    checks = run_checks(output_dir, model)
    for c in checks:
        out.print(f"{'ok  ' if c.ok else 'FIX '} {c.name}: {c.detail}", highlight=False, markup=False)
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@app.command("prep")
def prep_command(
    src: Path = typer.Argument(..., help="A recording, or a folder of them (NAME.txt / NAME.lab transcripts beside)."),
    output_dir: Path = typer.Option(..., "--output_dir", "--output-dir", help="Where clips/ and train.jsonl go."),
    min_duration: float = typer.Option(1.0, "--min_duration", "--min-duration", help="Shortest clip kept (s)."),
    max_duration: float = typer.Option(20.0, "--max_duration", "--max-duration", help="Longest clip; split at pauses."),
    loudness_lufs: float = typer.Option(-20.0, "--loudness_lufs", "--loudness-lufs", help="Loudness target."),
    transcribe: bool = typer.Option(False, "--transcribe", help="Transcribe clips without a transcript (ASR)."),
    asr_model: str = typer.Option("openai/whisper-small", "--asr_model", "--asr-model", help="ASR model for that."),
) -> None:
    """Raw recordings to clean clips and a manifest: trim, split at pauses, normalise, report every drop."""
    from higgs_train.data.prep import PrepSettings, prep

    settings = PrepSettings(
        min_duration=min_duration,
        max_duration=max_duration,
        loudness_lufs=loudness_lufs,
        transcribe=transcribe,
        asr_model=asr_model,
    )
    try:
        prep(src, output_dir, settings, say=lambda msg: out.print(msg, highlight=False, markup=False))
    except HiggsTrainError as e:
        raise _fail(e) from None


@app.command("score")
def score(
    run_dir: Path = typer.Argument(..., help="A run's --output_dir."),
    checkpoint: list[str] | None = typer.Option(None, "--checkpoint", help="Score only these (repeatable)."),
    score_manifest: str | None = typer.Option(None, "--score_manifest", "--score-manifest", help="Rows to score."),
    asr_model: str | None = typer.Option(None, "--asr_model", "--asr-model", help="ASR model (hub id or folder)."),
    select_best_by: str = typer.Option(
        "combined", "--select_best_by", "--select-best-by", help="wer, similarity, loss, combined."
    ),
    score_samples: int = typer.Option(4, "--score_samples", "--score-samples", help="Rows per score."),
) -> None:
    """Score every valid checkpoint by listening; print the table with the best marked; write scores.png."""
    from higgs_train.scoring.run import plot_scores, score_run, score_table

    try:
        rows, best = score_run(
            run_dir,
            checkpoint,
            score_manifest,
            asr_model,
            select_best_by,
            score_samples,
            say=lambda msg: err.print(msg, highlight=False, markup=False),
        )
    except HiggsTrainError as e:
        raise _fail(e) from None
    table = score_table(rows, best)
    out.print(table)
    out.print(f"best by {select_best_by}: {best.checkpoint if best else '-'}; curves: {plot_scores(run_dir)}")


def main() -> None:
    app(prog_name="higgs-train")


if __name__ == "__main__":
    sys.exit(main())
