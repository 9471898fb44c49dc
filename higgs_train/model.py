"""Load the base model, processor and audio tokenizer (hub id or local folder, same code), and apply LoRA."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from higgs_train import layouts
from higgs_train.checkpoint import layout
from higgs_train.config import TrainConfig
from higgs_train.errors import ConfigError, ModelError
from higgs_train.files import read_json
from higgs_train.layouts import AUDIO_TOKENIZER_SUBDIR, HIGGS_MODEL_TYPE

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZE_SKIP = ["audio_lm_head", "text_lm_head"]  # the heads stay as they are (embeddings are never quantized)


def quiet_libraries() -> None:
    """Keep the run's output to what matters: no per-load progress bars or deprecation chatter from libraries."""
    import warnings

    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _offline_if_local(path: str) -> None:
    # A local folder must never fall through to the hub: a missing file should fail at once, not after retries.
    if Path(path).is_dir():
        os.environ["HF_HUB_OFFLINE"] = "1"


def _revision(source: str, revision: str | None) -> dict:
    """from_pretrained's `revision` for a hub id; nothing for a local folder, which has no revisions."""
    return {"revision": revision} if revision and not Path(source).expanduser().is_dir() else {}


def recorded_revisions(checkpoint: str | Path, model: str, audio_tokenizer: str | None) -> dict[str, str]:
    """The hub commits a checkpoint's run recorded for this --model and audio tokenizer, by flag
    (`model_revision`, `audio_tokenizer_revision`); a source other than the run's gets none. Empty for a folder
    without a readable trainer state (a hub adapter, a damaged checkpoint: their own checks name them)."""

    saved = (read_json(Path(checkpoint) / layout.TRAINER_STATE) or {}).get("config") or {}
    sources = {"model_revision": ("model", model), "audio_tokenizer_revision": ("audio_tokenizer", audio_tokenizer)}
    return {flag: saved[flag] for flag, (key, name) in sources.items() if saved.get(flag) and saved.get(key) == name}


def resumed_revisions(cfg: TrainConfig, resume_path: Path | None) -> TrainConfig:
    """A resume without --model_revision / --audio_tokenizer_revision loads the commits its checkpoint recorded
    (for the same --model / --audio_tokenizer), not wherever the hub's branch has moved since."""
    if resume_path is None:
        return cfg
    recorded = recorded_revisions(resume_path, cfg.model, cfg.audio_tokenizer)
    changes = {flag: commit for flag, commit in recorded.items() if getattr(cfg, flag) is None}
    return replace(cfg, **changes) if changes else cfg


def pin_revisions(cfg: TrainConfig, say) -> TrainConfig:
    """The config with each hub revision replaced by the commit it resolves to (from the hub cache), saying so."""
    changes = {}
    tokenizer = audio_tokenizer_source(cfg.model, cfg.audio_tokenizer, cfg.model_revision)
    for flag, source in (("model_revision", cfg.model), ("audio_tokenizer_revision", tokenizer)):
        commit = layouts.hub_commit(source, getattr(cfg, flag)) if source else None
        if commit and getattr(cfg, flag) != commit:
            changes[flag] = commit
            say(f"{source}: {getattr(cfg, flag) or 'the default branch'} is commit {commit} (recorded: --{flag})")
    return replace(cfg, **changes) if changes else cfg


def audio_tokenizer_source(model: str, audio_tokenizer: str | None, model_revision: str | None = None) -> str | None:
    """Where the audio tokenizer comes from: the given folder / hub id, else MODEL/audio_tokenizer, else the one
    the model's processor config names, else None (the processor's own)."""
    if audio_tokenizer:
        return audio_tokenizer
    if (Path(model) / AUDIO_TOKENIZER_SUBDIR).is_dir():
        return str(Path(model) / AUDIO_TOKENIZER_SUBDIR)
    return layouts.processor_tokenizer(model, model_revision)


def load_lm_config(model: str, revision: str | None = None):
    """The model's `HiggsAudioV2Config` (at `revision`, a branch, tag or commit of a hub id), read before anything
    heavy loads.

    Raises:
        ModelError: the folder, hub id or revision is missing, holds Boson's original layout (with the
            `higgs-train convert` command that fixes it), or is not a Higgs Audio v2 model at all.
    """
    from transformers import AutoConfig, HiggsAudioV2Config

    _offline_if_local(model)
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        raise ModelError(f"--model {model}: no such folder; pass a Higgs Audio v2 model folder or hub id")
    if layouts.original_lm_config(model, revision) is not None:
        raise ModelError(layouts.convert_hint("--model", model))
    try:
        config = AutoConfig.from_pretrained(model, **_revision(model, revision))
    except (OSError, ValueError, KeyError) as e:
        at = f" at --model_revision {revision}" if revision else ""
        raise ModelError(
            f"--model {model}{at}: cannot read its config.json ({_first_line(e)}); pass a Higgs Audio v2 hub id or "
            "model folder" + (" and a revision it has" if revision else "")
        ) from e
    if not isinstance(config, HiggsAudioV2Config):
        raise ModelError(
            f"--model {model} is a {config.model_type!r} model, not Higgs Audio v2 ({HIGGS_MODEL_TYPE!r}); pass a "
            "Higgs Audio v2 checkpoint"
        )
    if problem := layouts.mixed_lm(model, revision):
        raise ModelError(f"--model {model}: {problem}")
    return config


def load_audio_tokenizer(
    model: str, audio_tokenizer: str | None = None, revision: str | None = None, model_revision: str | None = None
):
    """The audio tokenizer of `audio_tokenizer_source`, at `revision` (transformers would load the one a processor
    config names at its latest commit), or None (the processor's own)."""
    from transformers import HiggsAudioV2TokenizerModel

    source = audio_tokenizer_source(model, audio_tokenizer, model_revision)
    if source is None:
        return None
    _offline_if_local(source)
    state = layouts.tokenizer_layout(source, revision)
    if state == "original":
        raise ModelError(layouts.convert_hint("--audio_tokenizer", source))
    if state == "mixed":
        raise ModelError(layouts.mixed_tokenizer_hint("--audio_tokenizer", source, revision))
    try:
        tok, info = HiggsAudioV2TokenizerModel.from_pretrained(
            source, output_loading_info=True, **_revision(source, revision)
        )
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise ModelError(f"--audio_tokenizer {source}: cannot load the audio tokenizer ({_first_line(e)})") from e
    check_loading_info(info, "--audio_tokenizer", source)
    return tok.eval()


def load_processor(
    model: str, audio_tokenizer: str | None = None, revision: str | None = None, tokenizer_revision: str | None = None
):
    """`HiggsAudioV2Processor.from_pretrained` (at `revision`), with the audio tokenizer loaded explicitly (at
    `tokenizer_revision`) wherever load_audio_tokenizer finds one."""
    from transformers import AutoProcessor

    _offline_if_local(model)
    tok = load_audio_tokenizer(model, audio_tokenizer, tokenizer_revision, revision)
    kwargs = {"audio_tokenizer": tok} if tok is not None else {}
    try:
        processor = AutoProcessor.from_pretrained(model, **_revision(model, revision), **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"--model {model}: cannot load the processor ({e})") from e
    # from_pretrained hands its kwargs to the text tokenizer too; a model object there breaks save_pretrained
    processor.tokenizer.init_kwargs.pop("audio_tokenizer", None)
    if processor.chat_template is None:
        processor.chat_template = layouts.chat_template()
    return processor


def load_lm(
    model: str,
    mixed_precision: str = "no",
    attn_implementation: str = "sdpa",
    use_text_head: bool = False,
    revision: str | None = None,
    quantize: str = "none",
):
    """`HiggsAudioV2ForConditionalGeneration.from_pretrained`, for a hub id or a local folder alike, refusing to
    hand back a model with any weight left at random (see `check_loading_info`).

    Weights stay in float32 for "no"; with bf16/fp16 the frozen base is loaded in that dtype (LoRA weights are
    kept in float32) to halve its memory. `quantize` (QLoRA): the decoder's linear layers loaded in 4 or 8 bits
    (`quantization_config`).
    """
    from transformers import HiggsAudioV2ForConditionalGeneration

    load_lm_config(model, revision)  # the original layout or a foreign model: one line, before the weights load
    try:
        lm, info = HiggsAudioV2ForConditionalGeneration.from_pretrained(
            model,
            **_revision(model, revision),
            dtype=DTYPES[mixed_precision],
            attn_implementation=attn_implementation,
            use_text_head=use_text_head,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported in the loading info, then refused below with the names
            **quantization(quantize, mixed_precision),
        )
    except ImportError as e:  # flash_attention_2 without the flash-attn package, for example
        raise ModelError(f"--attn_implementation {attn_implementation}: {e}") from e
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(
            f"--model {model}: cannot load the model ({_first_line(e)}); pass a Higgs Audio v2 hub id or model folder"
        ) from e
    if not use_text_head:  # a checkpoint may carry a text head that this run does not build: that is fine
        info["unexpected_keys"] = {k for k in info["unexpected_keys"] if not k.startswith("text_lm_head")}
    check_loading_info(info, "--model", model, text_head=use_text_head)
    return lm


def quantization(quantize: str, mixed_precision: str) -> dict:
    """from_pretrained's `quantization_config` for --quantize: NF4/FP4 with double quantization, computing in the
    --mixed_precision dtype, or LLM.int8(); nothing for none."""
    if quantize == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANTIZE_SKIP)}
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[mixed_precision],
        llm_int8_skip_modules=QUANTIZE_SKIP,
    )
    return {"quantization_config": config}


def check_loading_info(info: dict, flag: str, source: str, text_head: bool = False) -> None:
    """Stop when `from_pretrained` left any weight at random init or found tensors it could not place.

    Raises:
        ModelError: naming the first few keys and the likely cause.
    """
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or [])
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (they would be random), e.g. {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors the model does not use, e.g. {', '.join(unexpected[:3])}")
    if mismatched:
        parts.append(f"{len(mismatched)} tensors of the wrong shape, e.g. {', '.join(mismatched[:3])}")
    if text_head and missing == ["text_lm_head.weight"] and not unexpected:
        cause = "this checkpoint has no text head, which --text_loss_weight needs; leave it at 0"
    elif any(k.startswith(layouts.ORIGINAL_KEY_PREFIXES) for k in unexpected):
        cause = f"Boson's original tensor names. {layouts.convert_hint(flag, source)}"
    else:
        cause = "the files are incomplete, renamed or from another model; download or convert them again"
    raise ModelError(f"{flag} {source}: {'; '.join(parts)}. Likely cause: {cause}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def check_pair(lm, processor, model: str) -> None:
    n_q = processor.audio_tokenizer.config.num_quantizers
    if n_q != lm.config.num_codebooks:
        raise ModelError(
            f"--model {model}: the audio tokenizer makes {n_q} codebooks but the model expects "
            f"{lm.config.num_codebooks}; use the audio tokenizer released with this model"
        )


def lora_target_modules(spec: str) -> str | list[str]:
    """'all-linear', a regex (anything with regex characters), or a comma-separated list of module names."""
    spec = spec.strip()
    if spec == "all-linear" or any(c in spec for c in "*()|\\[]^$"):
        return spec
    return [name.strip() for name in spec.split(",") if name.strip()]


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(cfg.lora_targets),
        bias="none",
    )


COMPILE_BUCKET = 64  # --compile: batch lengths padded to multiples of this, so few distinct shapes compile
# Boolean masks (the audio frames, our DualFFN's token indices, the kept logits, the loss) have data-dependent
# sizes: traced as unbacked sizes instead of a graph break each (36 breaks with the native DualFFN, 0 here).
COMPILE_SETTINGS = {"capture_dynamic_output_shape_ops": True, "capture_scalar_outputs": True}


def compile_for_training(model: torch.nn.Module) -> None:
    """--compile: torch.compile in place (nn.Module.compile: parameter and state-dict names stay the PEFT model's)
    with dynamic shapes and the data-dependent sizes traced (COMPILE_SETTINGS)."""
    for name, value in COMPILE_SETTINGS.items():
        setattr(torch._dynamo.config, name, value)
    # sizes that happen to be equal in the first batch (frames and tokens, say) must not be assumed equal after:
    # each such guard failing would compile the whole step again
    torch.fx.experimental._config.use_duck_shape = False
    model.compile(dynamic=True)


def apply_lora(model: torch.nn.Module, cfg: TrainConfig):
    """Wrap the model with PEFT LoRA; the base is frozen, only adapter weights train (in float32)."""
    from peft import get_peft_model

    try:
        peft_model = get_peft_model(model, lora_config(cfg))
    except ValueError as e:
        raise ConfigError(f"--lora_targets {cfg.lora_targets!r}: {e}") from e
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return peft_model


def meta_counts(config, cfg: TrainConfig) -> tuple[int, int, int, int]:
    """(base parameters, LoRA parameters, parameters --quantize quantizes, the largest of those matrices) of a model
    config under --lora_r / --lora_targets, counted on the meta device: nothing is allocated, so the released shape
    counts anywhere."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    with torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(config, use_text_head=cfg.text_loss_weight > 0)
        base = sum(p.numel() for p in model.parameters())
        quantized = [
            m.weight.numel()
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] not in QUANTIZE_SKIP
        ]
        lora = apply_lora(model, replace(cfg, gradient_checkpointing=False))
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        return base, trainable, sum(quantized), max(quantized, default=0)


def trainable_summary(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
