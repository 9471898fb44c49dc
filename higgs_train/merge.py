"""`higgs-train merge`: fold an adapter into the base weights and write a folder `from_pretrained` loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from higgs_train.errors import CheckpointError
from higgs_train.layouts import AUDIO_TOKENIZER_SUBDIR


def merge_adapter(model: str, adapter: str, output: str | Path, max_shard_size: str = "2GB") -> float:
    """Merge, save (sharded safetensors + processor + audio tokenizer), reload the merged folder and compare its
    logits with base + adapter on a fixed input.

    Returns:
        The largest absolute logit difference found.

    Raises:
        CheckpointError: the merged model does not reproduce the adapter's outputs.
    """
    from higgs_train.generate import load_with_adapter
    from higgs_train.model import load_lm

    output = Path(output)
    with_adapter, processor = load_with_adapter(model, adapter)
    with_adapter = with_adapter.float().cpu()
    probe = _probe(with_adapter.config)
    with torch.no_grad():
        expected = with_adapter(**probe).logits
    merged = with_adapter.merge_and_unload()
    merged.save_pretrained(output, max_shard_size=max_shard_size)
    _save_processor(processor, output)
    reloaded = load_lm(str(output)).float().eval()
    with torch.no_grad():
        diff = (reloaded(**probe).logits - expected).abs().max().item()
    tolerance = 1e-4 * max(1.0, expected.abs().max().item())
    if diff > tolerance:
        raise CheckpointError(f"merged model differs from base + adapter by {diff:.2e} (> {tolerance:.1e}); not used")
    return diff


def _probe(config) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    k = config.num_codebooks
    n_audio = 12
    text = torch.randint(0, min(config.vocab_size, 200), (1, 8), generator=gen)
    audio_ids = torch.full((1, n_audio), config.audio_token_id)
    audio_ids[0, -(k - 1) :] = config.audio_delay_token_id
    frames = torch.randint(0, config.audio_stream_bos_id, (1, n_audio, k), generator=gen)
    return {
        "input_ids": torch.cat([text, audio_ids], dim=1),
        "audio_input_ids": frames,
        "audio_input_ids_mask": torch.ones(1, n_audio, dtype=torch.bool),
    }


def _save_processor(processor, output: Path) -> None:
    """Processor files, and the audio tokenizer beside them (processor.save_pretrained keeps only its name)."""
    processor.save_pretrained(output)
    config_path = output / "processor_config.json"
    config = json.loads(config_path.read_text())
    source = Path(str(processor.audio_tokenizer.name_or_path))
    if source.is_dir():  # a local audio tokenizer travels with the merged model
        shutil.copytree(source, output / AUDIO_TOKENIZER_SUBDIR, dirs_exist_ok=True)
        config.pop("audio_tokenizer", None)
        config_path.write_text(json.dumps(config, indent=2) + "\n")
