"""Which checkpoint layouts exist and how to tell them apart: transformers' native `higgs_audio_v2` (what
`from_pretrained` loads) and Boson's original release layout (what `higgs-train convert` turns into the former).

Boson's original LM folder has a config.json with `model_type: "higgs_audio"` (a `text_config` holding the Llama
settings, `audio_num_codebooks`, `audio_codebook_size` without the two stream ids) and tensors named
`audio_codebook_embeddings.*`, bare `embed_tokens|layers|norm`, `audio_decoder_proj.{audio,text}_lm_head`, some of
them split in PartiallyFrozen halves. Its audio tokenizer folder holds `model.pth` and no complete config.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

HIGGS_MODEL_TYPE = "higgs_audio_v2"
HIGGS_TOKENIZER_TYPE = "higgs_audio_v2_tokenizer"
ORIGINAL_MODEL_TYPE = "higgs_audio"
ORIGINAL_TOKENIZER_WEIGHTS = "model.pth"
ORIGINAL_KEY_PREFIXES = ("audio_codebook_embeddings.", "audio_decoder_proj.", "embed_tokens.", "layers.", "norm.")
AUDIO_TOKENIZER_SUBDIR = "audio_tokenizer"  # a model folder's own audio tokenizer (written by init-tiny, convert)


RELEASED_TOKENIZER = {  # the released audio tokenizer's DAC settings (its own config.json is incomplete)
    "encoder_hidden_size": 64,
    "downsampling_ratios": [8, 5, 4, 2, 3],
    "decoder_hidden_size": 1024,
    "upsampling_ratios": [8, 5, 4, 2, 3],
    "hidden_size": 256,
}


def chat_template() -> str:
    """The Higgs Audio v2 chat template that higgs-train ships (the transformers package does not carry one)."""
    return resources.files("higgs_train").joinpath("templates/chat_template.jinja").read_text()


def _config_json(source: str) -> dict | None:
    """config.json of a local folder or (from the hub cache or the hub) of a hub id; None when there is none."""
    folder = Path(source)
    if folder.is_dir():
        file = folder / "config.json"
    else:
        try:
            from transformers.utils import cached_file

            found = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            return None
        if found is None:
            return None
        file = Path(found)
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def original_lm_config(source: str) -> dict | None:
    """Boson's original config.json when `source` is an LM in the original layout, else None."""
    config = _config_json(source)
    return config if config and config.get("model_type") == ORIGINAL_MODEL_TYPE else None


def is_original_tokenizer(source: str) -> bool:
    """A local folder holding Boson's original audio tokenizer: `model.pth` without a transformers config."""
    folder = Path(source)
    if not (folder / ORIGINAL_TOKENIZER_WEIGHTS).is_file():
        return False
    config = _config_json(source) or {}
    return config.get("model_type") != HIGGS_TOKENIZER_TYPE


def convert_hint(flag: str, source: str) -> str:
    """The one line that tells a user their checkpoint is in the original layout and the command that fixes it."""
    name = Path(source.rstrip("/")).name or "model"
    out = f"{name}-hf"
    return (
        f"{flag} {source} is in Boson's original layout, which transformers' Higgs Audio v2 cannot load; convert it "
        f"once with `higgs-train convert {source} {out}` and pass {flag} {out}"
    )


def released_lm_config(**overrides):
    """The released 3B-base shape (hidden 3072, 28 layers, 24 heads, 8 KV heads, vocab 128256, 8 codebooks of
    1024 codes + stream bos/eos), with random weights wherever it is built; `overrides` slice it (e.g. 2 layers)."""
    from transformers import HiggsAudioV2Config

    return HiggsAudioV2Config(codebook_size=1026, **overrides)


def save_processor(processor, folder: Path, tokenizer_beside: bool = True) -> None:
    """Processor files. When the audio tokenizer is saved beside them (folder/audio_tokenizer, which
    `higgs_train.model` loads), the processor config must not name it: an in-memory tokenizer is recorded with a
    path that from_pretrained cannot use. A hub tokenizer stays named by its id."""
    processor.save_pretrained(folder)
    if tokenizer_beside:
        path = Path(folder) / "processor_config.json"
        config = json.loads(path.read_text())
        config.pop("audio_tokenizer", None)
        path.write_text(json.dumps(config, indent=2) + "\n")
