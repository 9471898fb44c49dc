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


def _folder(source: str, revision: str | None = None, file: str = "config.json") -> Path | None:
    """Where `source`'s files are: the folder itself, or a hub id's snapshot in the hub cache (at `revision`,
    found through its `file`, downloaded if need be); None when there is none."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    try:
        from transformers.utils import cached_file

        found = cached_file(source, file, revision=revision, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return Path(found).parent if found else None


def hub_commit(source: str, revision: str | None = None) -> str | None:
    """The commit a hub id at `revision` resolves to (its snapshot's name in the hub cache); None for a folder."""
    if Path(source).expanduser().is_dir():
        return None
    folder = _folder(source, revision)
    if folder is None or folder.parent.name != "snapshots":
        return None
    return folder.name if len(folder.name) == 40 else None


def _json(file: Path) -> dict | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _config_json(source: str, revision: str | None = None) -> dict | None:
    """config.json of a local folder or (from the hub cache or the hub) of a hub id; None when there is none."""
    folder = _folder(source, revision)
    return _json(folder / "config.json") if folder else None


def original_lm_config(source: str, revision: str | None = None) -> dict | None:
    """Boson's original config.json when `source` is an LM in the original layout, else None."""
    config = _config_json(source, revision)
    return config if config and config.get("model_type") == ORIGINAL_MODEL_TYPE else None


def tokenizer_layout(source: str, revision: str | None = None) -> str:
    """ "original" (Boson's `model.pth` without a transformers config), "mixed" (a transformers config.json beside
    `model.pth` and no transformers weights: the tokenizer repository's state in between), else "native" (what
    transformers loads, or nothing local to tell)."""
    folder = _folder(source, revision)
    if folder is None or not (folder / ORIGINAL_TOKENIZER_WEIGHTS).is_file():
        return "native"
    if (_json(folder / "config.json") or {}).get("model_type") != HIGGS_TOKENIZER_TYPE:
        return "original"
    weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]
    return "native" if weights else "mixed"


def is_original_tokenizer(source: str) -> bool:
    """A local folder holding Boson's original audio tokenizer weights (`model.pth`), with or without a
    transformers config: what `higgs-train convert` turns into a transformers folder."""
    return Path(source).is_dir() and tokenizer_layout(source) in ("original", "mixed")


def mixed_tokenizer_hint(flag: str, source: str, revision: str | None = None) -> str:
    folder = _folder(source, revision)
    out = f"{Path(source.rstrip('/')).name}-hf"
    return (
        f"{flag} {source} has a transformers config.json but its weights are still Boson's "
        f"{ORIGINAL_TOKENIZER_WEIGHTS} (a repository between the two layouts), which transformers cannot load; "
        f"convert it once with `higgs-train convert {folder} {out}` and pass {flag} {out}"
    )


def processor_tokenizer(model: str, revision: str | None = None) -> str | None:
    """The audio tokenizer the model's processor config names (a hub id or an existing folder), or None."""
    folder = _folder(model, revision, "processor_config.json")
    named = ((_json(folder / "processor_config.json") if folder else None) or {}).get("audio_tokenizer")
    name = named.get("audio_tokenizer_name_or_path") if isinstance(named, dict) else None
    if not isinstance(name, str) or not name:
        return None
    return name if not looks_local(name) or Path(name).is_dir() else None


def looks_local(source: str | Path) -> bool:
    """A path, not a hub id (OWNER/NAME): a local model, adapter or checkpoint is never looked for on the hub."""
    text = str(source)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") != 1


def tensor_names(folder: Path) -> list[str]:
    """The tensor names of a folder's safetensors (its index, else each file's header), without reading weights."""
    index = _json(folder / "model.safetensors.index.json")
    if index and isinstance(index.get("weight_map"), dict):
        return list(index["weight_map"])
    names: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with open(file, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size)) if 0 < size < 100_000_000 else {}
        except (OSError, ValueError):
            continue
        names += [k for k in header if k != "__metadata__"]
    return names


def mixed_lm(model: str, revision: str | None = None) -> str | None:
    """Why a transformers-layout LM folder cannot load when its tensors still carry Boson's original names (files
    of two revisions of the repository in one folder), else None."""
    folder = _folder(model, revision)
    names = tensor_names(folder) if folder else []
    original = [n for n in names if n.startswith(ORIGINAL_KEY_PREFIXES)]
    if not original:
        return None
    return (
        f"its config.json is transformers' layout ({HIGGS_MODEL_TYPE}) but {len(original)} of its {len(names)} "
        f"tensors have Boson's original names (such as {original[0]}): the folder mixes two revisions of the "
        "repository; download it again at one revision (`hf download REPO --revision COMMIT --local-dir NEW`) and "
        "pass --model NEW"
    )


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
