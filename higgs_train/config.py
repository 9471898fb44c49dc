"""The run's configuration: one frozen dataclass, built once from defaults < YAML preset < command-line flags.

Each field's `help` metadata is also its `--help` text; `cli.py` builds the options from these fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from higgs_train.errors import ConfigError
from higgs_train.language import language_problems

# transformers' own docs and tests load this converted copy; Boson's repo at the revision the converter names holds
# the original layout, which `higgs-train convert` turns into this one (see README "Which checkpoints load").
BASE_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"  # in transformers' layout since 2026-04-04
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
MIXED_PRECISION = ("no", "bf16", "fp16")
RESUME_MODES = ("auto", "never")
LABEL_AUDIO = ("last", "all")
AUTO = "auto"  # --batch_size auto, until the run resolves it (train.setup); never a number, so 0 is refused
ON_SAVE_ERROR = ("stop", "continue")
ON_BAD_SAMPLE = ("error", "skip")
ON_DATA_CHANGE = ("error", "restart_epoch", "continue")  # data/rows.py
ATTENTION = ("sdpa", "flash_attention_2", "flex_attention", "eager")
QUANTIZE = ("none", "nf4", "fp4", "int8")  # --quantize (QLoRA: model.quantization_config)
# manifest formats (data/formats.py)
FORMATS = ("auto", "jsonl", "json", "folder", "hf", "parquet", "hub", "ljspeech", "csv", "pairs")
SELECT_BEST_BY = ("combined", "error", "wer", "cer", "similarity", "loss")
DEFAULT_ASR_MODEL = "openai/whisper-small"

DATA, MODEL, LORA, OPTIM, RUN, CKPT = "Data", "Model", "LoRA", "Optimisation", "Run", "Checkpoints"
# what a field declares about a resume (metadata "resume"): SHAPES, the adapter it trains (another value is refused:
# the weights would not fit or were trained on other weights); MAY_CHANGE, changed on purpose (no warning); others
# are warned about when they change
SHAPES, MAY_CHANGE = "shapes", "may_change"
SCORE = "Scoring"


def _f(default: Any, help: str, group: str, **extra: Any) -> Any:
    """A TrainConfig field: its --help text and panel, and the rules `validate` and a resume derive from it:
    `choices` (the words it takes), `minimum` (the least number; None passes), `resume` (SHAPES or MAY_CHANGE)."""
    return field(default=default, metadata={"help": help, "group": group, **extra})


def fields_where(key: str, value: Any) -> tuple[str, ...]:
    """The TrainConfig fields whose metadata `key` is `value`, e.g. fields_where("resume", SHAPES)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata.get(key) == value)


@dataclass(frozen=True)
class TrainConfig:
    train_manifest: str | None = _f(
        None,
        "Training clips: a JSONL/JSON manifest, a folder, parquet shards or hf://OWNER/NAME[:SPLIT].",
        DATA,
        resume=MAY_CHANGE,
    )
    output_dir: str | None = _f(None, "Run folder: checkpoints, metrics.jsonl, code cache.", DATA, resume=MAY_CHANGE)
    format: str = _f(
        "auto",
        "Manifest format: auto, jsonl, json, folder, hf, parquet, hub, ljspeech, csv or pairs.",
        DATA,
        choices=FORMATS,
    )
    text_column: str | None = _f(None, "Datasets: the text column [default: text, transcript, sentence, ...].", DATA)
    audio_column: str | None = _f(None, "Datasets: the audio column [default: the Audio-typed one, or audio].", DATA)
    language: str | None = _f(
        None,
        "ISO 639-1 code of the data (comma-separated for mixed data, e.g. ar,en): rows without a `language` field "
        "take it when it is one; scoring's text rules, metric and ASR language follow it.",
        DATA,
    )
    eval_manifest: str | None = _f(None, "Held-out manifest for the eval loss.", DATA, resume=MAY_CHANGE)
    eval_fraction: float = _f(0.0, "Hold out this share of the training rows for the eval loss instead.", DATA)
    eval_steps: int | None = _f(
        None,
        "Eval loss every N steps [default: --save_steps when there is an eval set].",
        DATA,
        minimum=1,
    )
    on_bad_sample: str = _f(
        "error",
        "error: stop before training on any bad row; skip: drop bad rows, say why.",
        DATA,
        choices=ON_BAD_SAMPLE,
    )
    on_data_change: str = _f(
        "error",
        "When a resume finds other training rows than the checkpoint's: error (stop, saying what changed); "
        "restart_epoch (keep step, optimizer and schedule, start a fresh epoch order over the new rows); continue "
        "(keep the position as samples seen).",
        DATA,
        choices=ON_DATA_CHANGE,
        resume=MAY_CHANGE,
    )
    min_duration: float = _f(0.1, "Drop or refuse target clips shorter than this (seconds).", DATA)
    max_duration: float = _f(30.0, "Drop or refuse target clips longer than this (seconds).", DATA)
    max_text_tokens: int = _f(1024, "Drop or refuse rows whose text has more tokens.", DATA)
    num_workers: int = _f(0, "Processes decoding audio while encoding codes.", DATA, minimum=0)
    cache_shard_clips: int = _f(
        256, "Clips per code-cache shard: the most a kill during encoding can lose.", DATA, minimum=1
    )
    label_audio: str = _f(
        "last",
        "Which assistant clips of a row are trained on: last (the target; context clips such as a cloning reference "
        "are not) or all (every assistant clip, e.g. each turn of a dialogue, the reference included).",
        DATA,
        choices=LABEL_AUDIO,
    )
    group_by_length: bool = _f(True, "Batch rows of similar length together, so padding stays small.", DATA)
    packing: bool = _f(
        False,
        "Train each micro-batch's rows as one sequence (position_ids restart per row, no padding, rows never attend "
        "to each other); sparse with flex_attention or flash_attention_2, a dense block mask with sdpa/eager.",
        DATA,
    )
    max_tokens_per_batch: int | None = _f(
        None,
        "Fill each micro-batch to this many tokens instead of --batch_size rows (first-fit-decreasing; use with "
        "--packing: no padding at all).",
        DATA,
        minimum=1,
    )
    streaming: bool = _f(
        False,
        "Stream --train_manifest (hf://OWNER/NAME[:SPLIT] or parquet shards) instead of caching it: each process reads "
        "its shards, encoding rows as they arrive; needs --max_steps (see README: corpora larger than the disk).",
        DATA,
    )
    shuffle_buffer: int = _f(
        1000,
        "--streaming: encoded rows held to draw batches from (saved in each checkpoint: resumes are exact).",
        DATA,
        minimum=1,
    )
    model: str = _f(
        BASE_MODEL, "Base model: hub id or local folder (see `higgs-train init-tiny`).", MODEL, resume=MAY_CHANGE
    )
    audio_tokenizer: str | None = _f(
        None,
        "Audio tokenizer folder or hub id (default: MODEL/audio_tokenizer if present, else the processor's).",
        MODEL,
        resume=MAY_CHANGE,
    )
    model_revision: str | None = _f(
        None,
        "Branch, tag or commit of a hub --model; the run records the commit it resolved to, and a resume loads that "
        "commit unless this is given.",
        MODEL,
    )
    audio_tokenizer_revision: str | None = _f(
        None, "Branch, tag or commit of a hub audio tokenizer; recorded and resumed like --model_revision.", MODEL
    )
    mixed_precision: str = _f("no", "Mixed precision: no, bf16 or fp16.", MODEL, choices=MIXED_PRECISION)
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.", MODEL)
    attn_implementation: str = _f(
        "sdpa", "Attention kernel: sdpa, flash_attention_2, flex_attention or eager.", MODEL, choices=ATTENTION
    )
    quantize: str = _f(
        "none",
        "QLoRA: load the frozen base quantized, none, nf4, fp4 or int8 (LoRA stays full precision; the audio head "
        "and embeddings are not quantized). Needs bitsandbytes: pip install -e '.[qlora]'.",
        MODEL,
        choices=QUANTIZE,
        resume=SHAPES,
    )
    compile: bool = _f(False, "torch.compile the model (inductor); pays off on long runs on a GPU.", MODEL)
    lora_r: int = _f(16, "LoRA rank.", LORA, minimum=1, resume=SHAPES)
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r).", LORA, minimum=1)
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.", LORA)
    lora_targets: str = _f(
        DEFAULT_LORA_TARGETS,
        "Comma-separated module names (q_proj..down_proj cover both FFNs), 'all-linear', or a regex.",
        LORA,
        resume=SHAPES,
    )
    lr: float = _f(1e-4, "Peak learning rate (AdamW).", OPTIM)
    warmup_steps: int = _f(0, "Linear warm-up steps before cosine decay.", OPTIM, minimum=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", OPTIM, minimum=0)
    text_loss_weight: float = _f(
        0.0,
        "Add the text head's loss on the prompt's plain text (system prompt, scene, transcripts; never markup or "
        "audio) with this weight (0 = audio only). Boson's recipe labels assistant text only, which TTS rows do not "
        "have; this keeps the text head tied to the transcript instead. Needs a checkpoint with a text head.",
        OPTIM,
        minimum=0,
    )
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this (0 disables clipping).", OPTIM, minimum=0)
    batch_size: int = _f(
        1,
        "Samples per micro-batch per process, or auto: the largest that fits (the memory plan, tried for real on a "
        "GPU), with --grad_accum raised to keep the global batch; recorded, so a resume uses the same.",
        OPTIM,
        auto=True,
    )
    grad_accum: int = _f(1, "Micro-batches per optimizer step.", OPTIM, minimum=1)
    max_steps: int | None = _f(
        None, "Optimizer steps to train (overrides --num_epochs).", RUN, minimum=1, resume=MAY_CHANGE
    )
    num_epochs: float = _f(1.0, "Epochs to train when --max_steps is not given.", RUN, resume=MAY_CHANGE)
    seed: int = _f(42, "Seed for weights init, data order and dropout.", RUN)
    log_steps: int = _f(1, "Write metrics.jsonl every N optimizer steps.", RUN, minimum=1)
    report_to: str = _f(
        "none",
        "Also log to trackers, comma-separated: tensorboard (OUTPUT_DIR/tensorboard), wandb, mlflow; or none.",
        RUN,
    )
    sample_steps: int | None = _f(None, "Write OUTPUT_DIR/samples/step-N.wav every N steps (needs --sample_text).", RUN)
    sample_text: str | None = _f(None, "The text spoken in the samples.", RUN)
    sample_ref_audio: str | None = _f(None, "Reference clip for voice-cloning samples.", RUN)
    sample_ref_text: str | None = _f(None, "Transcript of --sample_ref_audio.", RUN)
    sample_max_frames: int = _f(250, "Longest sample, in audio frames (25 per second).", RUN)
    score_steps: int | None = _f(
        None, "Score the adapter by listening every N steps (after the save).", SCORE, minimum=1
    )
    score_manifest: str | None = _f(
        None, "Rows to score with [default: the first --score_samples eval rows].", SCORE, resume=MAY_CHANGE
    )
    score_samples: int = _f(4, "How many rows a score uses.", SCORE)
    asr_model: str = _f(DEFAULT_ASR_MODEL, "ASR model (hub id or folder) for WER/CER.", SCORE)
    speaker_model: str = _f(
        "resemblyzer", "Speaker embeddings: resemblyzer, or a transformers x-vector model (hub id or folder).", SCORE
    )
    select_best_by: str = _f(
        "combined",
        "Best checkpoint by: combined, error (WER, or CER for scripts without spaces), wer, cer, similarity or loss.",
        SCORE,
        choices=SELECT_BEST_BY,
    )
    save_steps: int = _f(
        500, "Save a checkpoint every N optimizer steps (and at the last step).", CKPT, minimum=1, resume=MAY_CHANGE
    )
    save_total_limit: int | None = _f(
        None, "Keep at most N checkpoints (oldest deleted after a good save).", CKPT, minimum=1, resume=MAY_CHANGE
    )
    resume: str = _f(
        "auto", "auto (newest valid checkpoint in --output_dir), never, or a checkpoint path.", CKPT, resume=MAY_CHANGE
    )
    on_save_error: str = _f("stop", "stop, or continue training after a failed save.", CKPT, choices=ON_SAVE_ERROR)
    max_save_failures: int = _f(
        3, "With --on_save_error continue: stop after N failed saves in a row.", CKPT, minimum=1
    )
    async_save: bool = _f(True, "Write, verify and publish checkpoints in a background thread.", CKPT)
    fallback_dir: str | None = _f(
        None, "Where the adapter-only fallback goes when a save fails.", CKPT, resume=MAY_CHANGE
    )
    min_free_disk_gb: float = _f(1.0, "Free disk to keep beyond a checkpoint's estimated size.", CKPT, minimum=0)
    stop_save_s: float = _f(
        20.0,
        "After a stop signal, publish a checkpoint within N seconds: the adapter alone (written first) when the full "
        "save is not done by then (torchrun kills 30 s after its SIGTERM). 0: always wait for the full save.",
        CKPT,
    )
    dist_timeout_s: int = _f(1800, "Seconds a process waits for the others at a collective before failing.", RUN)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


FIELDS = {f.name: f for f in fields(TrainConfig)}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset: a mapping of TrainConfig field names (dashes allowed) to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read the file ({e.strerror}); pass an existing YAML file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the file must be a mapping of option names to values")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"--config {path}: unknown option {key!r}; see `higgs-train --help` for the names")
        out[name] = value
    return out


def build_config(flags: dict[str, Any], yaml_path: str | None = None, require_data: bool = True) -> TrainConfig:
    """Merge defaults < YAML preset < flags given on the command line (None = not given), then validate.

    Raises:
        ConfigError: naming every bad value at once.
    """
    values = load_yaml(yaml_path) if yaml_path else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    problems = []
    for name, value in list(values.items()):
        try:
            values[name] = _coerce(name, value)
        except (TypeError, ValueError):
            problems.append(f"--{name} {value!r} is not a valid {_type_name(name)}")
    if problems:
        raise ConfigError("; ".join(problems))
    cfg = TrainConfig(**values)
    validate(cfg, require_data)
    return cfg


def _type_name(name: str) -> str:
    return str(FIELDS[name].type).replace(" | None", "")


def _coerce(name: str, value: Any) -> Any:
    kind = _type_name(name)
    if FIELDS[name].metadata.get("auto") and str(value).strip().lower() == "auto":
        return AUTO
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(value)
    if kind == "int":
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError(value)
        return int(float(value))
    if kind == "float":
        return float(value)
    return str(value)


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> the pip extra it needs


def report_to_names(value: str) -> list[str]:
    """The trackers --report_to names ("none" or a comma-separated list)."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    return [] if names == ["none"] else names


def tracker_problems(value: str) -> list[str]:
    """Unknown tracker names, and trackers whose package is not installed (one line naming the extra)."""
    import importlib.util

    names = report_to_names(value)
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or not names and value.strip() != "none":
        return [f"--report_to takes none or any of {', '.join(TRACKERS)} (comma-separated), got {value!r}"]
    return [
        f"--report_to {name}: the {name} package is not installed; pip install -e '.[{TRACKERS[name]}]'"
        for name in names
        if importlib.util.find_spec(name) is None
    ]


def _declared_problems(cfg: TrainConfig) -> list[str]:
    """What the fields declare (see `_f`): the words a setting takes, the least number it takes."""
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            problems.append(f"--{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
        least = f.metadata.get("minimum")
        if least is not None and value is not None and value < least:
            rule = "must not be negative" if least == 0 else f"must be at least {least}"
            problems.append(f"--{f.name} {rule}, got {value}")
    return problems


def _quantize_problems(cfg: TrainConfig, loading: bool = True) -> list[str]:
    """`loading` False: a command such as `plan` that never loads the weights (needs no bitsandbytes)."""
    import importlib.util

    if cfg.quantize == "none" or cfg.quantize not in QUANTIZE:
        return []
    if loading and importlib.util.find_spec("bitsandbytes") is None:
        return [f"--quantize {cfg.quantize} needs bitsandbytes, which is not installed: pip install -e '.[qlora]'"]
    if cfg.mixed_precision == "fp16":
        return [f"--quantize {cfg.quantize} computes in the --mixed_precision dtype: use bf16 (or no), not fp16"]
    return []


def _batching_problems(cfg: TrainConfig) -> list[str]:
    if cfg.max_tokens_per_batch and cfg.streaming:
        return ["--max_tokens_per_batch plans over a cached manifest's rows; a stream draws --batch_size rows"]
    if not cfg.streaming:
        return []
    problems = []
    if cfg.max_steps is None:
        problems.append("--streaming needs --max_steps: a stream's length is not known before it is read")
    if cfg.eval_fraction:
        problems.append("--streaming cannot hold out --eval_fraction of a stream; pass an --eval_manifest")
    if cfg.batch_size == AUTO:
        problems.append("--streaming needs a numeric --batch_size (auto measures the longest row of a cached manifest)")
    if cfg.format not in ("auto", "parquet", "hub"):
        problems.append(f"--streaming reads hf:// datasets and parquet shards, not --format {cfg.format}")
    return problems


def validate(cfg: TrainConfig, require_data: bool = True) -> None:
    """Check every value and combination; report all problems in one ConfigError (`require_data` False: a command
    such as `plan` that needs no manifest or run folder)."""
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value) and f.name not in ("max_duration",):
            problems.append(f"--{f.name} must be a finite number, got {value}")
    if math.isnan(cfg.max_duration):
        problems.append("--max_duration must be a number, got nan")
    if require_data and not cfg.train_manifest:
        problems.append("--train_manifest is required: the JSONL manifest of clips to train on")
    if require_data and not cfg.output_dir:
        problems.append("--output_dir is required: the folder for checkpoints and logs")
    if cfg.batch_size != AUTO and cfg.batch_size < 1:
        problems.append(f"--batch_size must be at least 1 or auto, got {cfg.batch_size}")
    if not cfg.stop_save_s >= 0:
        problems.append(f"--stop_save_s must be 0 (wait for the full save) or more seconds, got {cfg.stop_save_s}")
    if cfg.dist_timeout_s < 1:
        problems.append(f"--dist_timeout_s must be at least 1 second, got {cfg.dist_timeout_s}")
    problems += _declared_problems(cfg)
    if cfg.num_epochs <= 0:
        problems.append(f"--num_epochs must be above 0, got {cfg.num_epochs}")
    if cfg.lr <= 0:
        problems.append(f"--lr must be above 0, got {cfg.lr}")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"--lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    if not 0 <= cfg.eval_fraction < 1:
        problems.append(f"--eval_fraction must be in [0, 1), got {cfg.eval_fraction}")
    if cfg.resume not in RESUME_MODES and not Path(cfg.resume).is_dir():
        problems.append(
            f"--resume {cfg.resume!r} is neither {' nor '.join(RESUME_MODES)} nor a checkpoint folder; pass one of them"
        )
    if cfg.eval_manifest and cfg.eval_fraction:
        problems.append("--eval_manifest and --eval_fraction both given; choose one")
    problems += (
        tracker_problems(cfg.report_to) + language_problems(cfg.language) + _quantize_problems(cfg, require_data)
    )
    if cfg.sample_steps is not None and (cfg.sample_steps < 1 or not cfg.sample_text):
        problems.append("--sample_steps needs a positive N and --sample_text with the words to speak")
    if bool(cfg.sample_ref_audio) != bool(cfg.sample_ref_text):
        problems.append("--sample_ref_audio and --sample_ref_text go together")
    if cfg.score_steps and not (cfg.score_manifest or cfg.eval_manifest or cfg.eval_fraction):
        problems.append("--score_steps needs rows to score: --score_manifest, --eval_manifest or --eval_fraction")
    problems += _batching_problems(cfg)
    if cfg.max_duration <= cfg.min_duration:
        problems.append(f"--max_duration {cfg.max_duration} must be above --min_duration {cfg.min_duration}")
    if not cfg.lora_targets.strip():
        problems.append("--lora_targets is empty; name modules such as q_proj,v_proj or use all-linear")
    if problems:
        raise ConfigError("; ".join(problems))
