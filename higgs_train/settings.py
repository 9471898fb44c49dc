"""The settings of every command but training (training's are TrainConfig, config.py): each field one option (see
options.py), its help the --help text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from higgs_train.config import BASE_MODEL, DEFAULT_ASR_MODEL, SELECT_BEST_BY


def setting(help: str, default: Any = dataclasses.MISSING, argument: bool = False) -> Any:
    """A field of a command's settings dataclass: its --help text, default (none: required) and whether it is a
    positional argument. `cli.py` builds each command's options from these fields, as it does for TrainConfig."""
    return field(default=default, metadata={"help": help, "argument": argument})


@dataclass(frozen=True)
class GenerateSettings:
    text: str = setting("What to say.")
    out: Path = setting("WAV file to write.", Path("sample.wav"))
    model: str = setting("Base model: hub id or folder.", BASE_MODEL)
    adapter: str | None = setting("Checkpoint folder of a LoRA adapter.", None)
    ref_audio: str | None = setting("Reference clip to clone.", None)
    ref_text: str | None = setting("Transcript of the reference clip.", None)
    max_frames: int = setting("Longest output (25 frames/s).", 500)
    temperature: float = setting("Sampling temperature (0 = greedy).", 0.8)
    seed: int = setting("Sampling seed.", 0)


@dataclass(frozen=True)
class MergeSettings:
    adapter: str = setting("Checkpoint folder of a LoRA adapter.")
    output: Path = setting("New folder for the merged model.")
    model: str = setting("Base model: hub id or folder.", BASE_MODEL)


@dataclass(frozen=True)
class PrepPaths:
    src: Path = setting("A recording, or a folder of them (NAME.txt / NAME.lab transcripts beside).", argument=True)
    output_dir: Path = setting("Where clips/ and train.jsonl go.")


@dataclass(frozen=True)
class PrepSettings:
    sample_rate: int = setting("Sample rate of the clips written.", 24000)
    min_duration: float = setting("Shortest clip kept (s).", 1.0)
    max_duration: float = setting("Longest clip (s); longer speech is split at pauses.", 20.0)
    min_pause: float = setting("A split goes only where speech pauses at least this long (s).", 0.3)
    break_pause: float = setting("Pauses this long always split: sentence breaks (s).", 0.75)
    pad: float = setting("Silence kept around the speech when trimming (s).", 0.15)
    loudness_lufs: float = setting("Loudness target (LUFS).", -20.0)
    transcribe: bool = setting("Transcribe clips without a transcript (ASR).", False)
    asr_model: str = setting("ASR model for --transcribe (hub id or folder).", DEFAULT_ASR_MODEL)


@dataclass(frozen=True)
class DoctorSettings:
    output_dir: str | None = setting("Check this run folder too.", None)
    model: str = setting("Model to look for in the local cache.", BASE_MODEL)


@dataclass(frozen=True)
class ConvertSettings:
    src: Path = setting("Boson's original LM folder, or its original audio tokenizer folder.", argument=True)
    output: Path = setting("New folder for the transformers layout (pass it as --model).", argument=True)
    audio_tokenizer: str | None = setting("The LM's audio tokenizer [default: SRC/audio_tokenizer].", None)
    tokenizer_config: str | None = setting("HiggsAudioV2TokenizerConfig JSON for an original model.pth.", None)


@dataclass(frozen=True)
class ScoreSettings:
    run_dir: Path = setting("A run's --output_dir.", argument=True)
    checkpoint: list[str] | None = setting("Score only these checkpoint folders (repeatable).", None)
    score_manifest: str | None = setting("Rows to score [default: the run's score, eval or train manifest].", None)
    asr_model: str | None = setting("ASR model, hub id or folder [default: the run's --asr_model].", None)
    select_best_by: str = setting(f"Best checkpoint by: {', '.join(SELECT_BEST_BY)}.", "combined")
    score_samples: int = setting("Rows per score.", 4)


@dataclass(frozen=True)
class ExportSettings:
    run_dir: Path = setting("A run's --output_dir.", argument=True)
    output: Path = setting("New folder for the adapter, its model card and samples.", argument=True)
    checkpoint: str | None = setting("Export this checkpoint folder [default: the best, else the newest valid].", None)
    language: list[str] | None = setting("Language code of the data, for the card (repeatable), e.g. en.", None)
    push_to_hub: str | None = setting("Upload the folder to this hub repo (OWNER/NAME) with huggingface_hub.", None)
    private: bool = setting("Create the hub repo private.", False)


@dataclass(frozen=True)
class TinySettings:
    directory: Path = setting("Folder to write the tiny random-weight model into.", argument=True)
    seed: int = setting("Seed for the random weights.", 0)
    full_shape: bool = setting(
        "The released 3B shape (11.6 GB in bf16) instead of the tiny one, for GPU checks.", False
    )


@dataclass(frozen=True)
class RunFolder:
    run_dir: Path = setting("A run's --output_dir.", argument=True)


@dataclass(frozen=True)
class CheckpointFolder:
    checkpoint: Path = setting("A checkpoint folder.", argument=True)
