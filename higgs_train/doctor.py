"""`higgs-train doctor`: is this machine ready to train? Each check is ok or says the fix."""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from higgs_train import layouts
from higgs_train.checkpoint.preflight import check_output_dir
from higgs_train.config import BASE_MODEL, build_config
from higgs_train.errors import HiggsTrainError, OutputDirError
from higgs_train.model import audio_tokenizer_source
from higgs_train.plan import gpu_verdicts, plan_for

AUDIO_TOKENIZER_ID = "bosonai/higgs-audio-v2-tokenizer"  # when the model's processor config names none
NEEDED = {"torch": "2.11", "torchaudio": "2.11", "transformers": "5.18", "peft": "0.21", "accelerate": "1.15"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FIX '} {self.name}: {self.detail}"


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("+")[0].split(".")[:2] if x.isdigit())


def run_checks(output_dir: str | None = None, model: str = BASE_MODEL) -> list[Check]:
    checks = [Check("python", platform.python_version_tuple() >= ("3", "11"), platform.python_version())]
    for package, minimum in NEEDED.items():
        try:
            version = metadata.version(package)
            ok = _version_tuple(version) >= _version_tuple(minimum)
            checks.append(Check(package, ok, version if ok else f"{version}: install >= {minimum} (make install)"))
        except metadata.PackageNotFoundError:
            checks.append(Check(package, False, f"not installed: run make install (needs >= {minimum})"))
    checks += _gpu_checks()
    if output_dir:
        checks += _disk_checks(Path(output_dir))

    tokenizer = audio_tokenizer_source(model, None) or AUDIO_TOKENIZER_ID
    checks += [_cache_check("model", model), _cache_check("audio tokenizer", tokenizer)]
    if layouts.original_lm_config(model) is not None:
        checks.append(Check("model layout", False, layouts.convert_hint("--model", model)))
    checks += _plan_checks(model)
    return checks


def _plan_checks(model: str) -> list[Check]:
    """The memory plan's verdict for each GPU found, at the defaults (batch 1, bf16, the model's longest row)."""
    import torch

    if not torch.cuda.is_available():
        return []

    cfg = build_config({"model": model, "mixed_precision": "bf16"}, require_data=False)
    try:
        plan = plan_for(cfg)
    except HiggsTrainError as e:
        return [Check("plan", False, str(e))]
    return [Check(name, ok, detail) for name, ok, detail in gpu_verdicts(plan, 1, False, cfg)]


def _gpu_checks() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        return [Check("gpu", True, "none: training runs on the CPU (fine for the tiny model, far too slow for 3B)")]
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        ok = free > 24 * 1024**3
        note = "" if ok else ": under 24 GB free; use --gradient_checkpointing or a smaller --batch_size"
        out.append(
            Check(
                f"gpu {i}",
                ok,
                f"{torch.cuda.get_device_name(i)}, {free / 1024**3:.1f} of {total / 1024**3:.1f} GB free{note}",
            )
        )
    return out


def _disk_checks(path: Path) -> list[Check]:

    try:
        check_output_dir(path)
        write = Check("output dir", True, f"{path} is writable")
    except OutputDirError as e:
        return [Check("output dir", False, str(e))]
    free = shutil.disk_usage(path).free / 1024**3
    disk = Check("free disk", free > 5, f"{free:.1f} GB free" + ("" if free > 5 else ": free space for checkpoints"))
    return [write, disk]


def _cache_check(what: str, repo: str) -> Check:
    if Path(repo).is_dir():
        ok = (Path(repo) / "config.json").is_file()
        return Check(what, ok, f"local folder {repo}" + ("" if ok else ": no config.json in it"))
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    if isinstance(found, str):
        return Check(what, True, f"{repo} is in the local cache")
    return Check(
        what, False, f"{repo} not in the local cache: download it once with `hf download {repo}` where there is network"
    )
