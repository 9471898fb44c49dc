"""`higgs-train merge`: fold an adapter into the base weights and write a folder `from_pretrained` loads."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from higgs_train import faults, files
from higgs_train.checkpoint.lock import RunLock
from higgs_train.checkpoint.preflight import refuse_overlap
from higgs_train.errors import CheckpointError, ConfigError, HiggsTrainError
from higgs_train.generate import load_with_adapter
from higgs_train.layouts import AUDIO_TOKENIZER_SUBDIR, save_processor
from higgs_train.model import load_lm


def merge_adapter(
    model: str, adapter: str, output: str | Path, max_shard_size: str = "2GB", say: Callable[[str], None] = print
) -> float:
    """Merge, save (sharded safetensors + processor + audio tokenizer) into a hidden folder beside OUTPUT, reload
    it and compare its logits with base + adapter on a fixed input, then rename it to OUTPUT. A failure at any
    point (a full or read-only disk, a mismatch) leaves no OUTPUT folder that looks usable.

    Returns:
        The largest absolute logit difference found.

    Raises:
        ConfigError: OUTPUT is inside (or is) the base model or the adapter folder, or already exists.
        CheckpointError: the merged model cannot be written or does not reproduce the adapter's outputs.
    """

    output = Path(output).absolute()
    refuse_overlap("--output", output, {"--model": model, "--adapter": adapter})
    if output.exists():
        raise ConfigError(f"--output {output} already exists; choose a new folder (a merge never overwrites one)")
    with RunLock(output.parent, "merge", flag="--output", name=f".{output.name}.lock"):
        for leftover in files.remove_leftovers(output):
            say(f"removed {leftover.name}: left by an interrupted merge")
        with_adapter, processor = load_with_adapter(model, adapter)
        with_adapter = with_adapter.float().cpu()
        probe = _probe(with_adapter.config)
        with torch.no_grad():
            expected = with_adapter(**probe).logits
        merged = with_adapter.merge_and_unload()
        tmp = files.tmp_sibling(output)
        try:
            merged.save_pretrained(tmp, max_shard_size=max_shard_size)
            _save_processor(processor, tmp)
            reloaded = load_lm(str(tmp)).float().eval()
            with torch.no_grad():
                diff = (reloaded(**probe).logits - expected).abs().max().item()
            tolerance = 1e-4 * max(1.0, expected.abs().max().item())
            if diff > tolerance:
                raise CheckpointError(f"merged model differs from base + adapter by {diff:.2e} (> {tolerance:.1e})")
            faults.failpoint("before_publish")
            os.rename(tmp, output)
        except HiggsTrainError:
            raise
        except Exception as e:  # OSError, or safetensors' own error type for the same full or read-only disk
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
            raise CheckpointError(
                f"--output {output}: cannot write the merged model ({reason}); free disk space or fix permissions "
                "and run merge again (nothing was left behind)"
            ) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
    """Processor files, and a local audio tokenizer copied beside them (processor.save_pretrained keeps only its
    name); a hub tokenizer stays named by its id."""
    source = Path(str(processor.audio_tokenizer.name_or_path))
    if source.is_dir():
        shutil.copytree(source, output / AUDIO_TOKENIZER_SUBDIR, dirs_exist_ok=True)
    save_processor(processor, output, tokenizer_beside=source.is_dir())
