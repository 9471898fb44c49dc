"""`higgs-train export RUN OUT`: the adapter that leaves the run, with a model card that says what it is.

OUT holds the adapter (weights and config, byte for byte as verified in the checkpoint), a README.md in the hub's
model-card format (YAML metadata, then base model, LoRA settings, data, steps, eval loss and scores, usage, the
base model's license note) and the checkpoint's sample audio. `--push_to_hub REPO` uploads OUT with
huggingface_hub. Default checkpoint: the run's best (scored), else its newest valid one.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.io import read_pointer
from higgs_train.checkpoint.preflight import refuse_overlap
from higgs_train.checkpoint.resume import find_resume_point, read_trainer_state
from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.data.prepare import REPORT_FILE
from higgs_train.errors import CheckpointError, HiggsTrainError, OutputDirError
from higgs_train.files import read_json, sha256_file
from higgs_train.language import parse_languages
from higgs_train.metrics import METRICS_FILE, read_metrics
from higgs_train.scoring.score import SCORED_ITEMS, read_scores, sample_file, scored_clips_dir
from higgs_train.settings import ExportSettings

CARD = "README.md"
LICENSE = "boson-higgs-audio-2-community-license"  # the released weights' license, as the hub's license_name
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_LANGUAGE = re.compile(r"[a-z]{2}")  # ISO 639-1, as language.parse_languages checked


def export_adapter(s: ExportSettings, say: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Write OUT; returns (OUT, the checkpoint exported).

    Raises:
        CheckpointError: no valid checkpoint, or the one named is invalid.
        OutputDirError: OUT exists and is not empty.
    """

    run, out = Path(s.run_dir), Path(s.output)
    refuse_overlap("OUTPUT", out, {"RUN_DIR": run, "--checkpoint": s.checkpoint})
    checkpoint = Path(s.checkpoint) if s.checkpoint else _best(run)
    if checkpoint is None:
        found = find_resume_point([run], say)
        if found is None:
            raise CheckpointError(f"{run}: no valid checkpoint to export; see `higgs-train checkpoints {run}`")
        checkpoint = found.path
    check = verify_checkpoint(checkpoint)
    if not check.ok:
        raise CheckpointError(f"{checkpoint} is not a valid checkpoint: {'; '.join(check.problems)}")
    if out.exists() and any(out.iterdir()):
        raise OutputDirError(f"{out} exists and is not empty; export into a new folder")
    state = read_trainer_state(checkpoint)
    step = state["progress"]["step"]
    tmp = out.with_name(f"{out.name}{layout.TMP_MARK}export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (layout.ADAPTER_WEIGHTS, layout.ADAPTER_CONFIG):
        shutil.copyfile(checkpoint / name, tmp / name)
        if sha256_file(tmp / name) != sha256_file(checkpoint / name):
            raise OutputDirError(f"{tmp / name}: the copy differs from the checkpoint's file; check the disk")
    clips = _copy_samples(run, step, tmp)
    card = model_card(run, checkpoint, state, clips, _languages(run, state, s.language))
    (tmp / CARD).write_text(card)
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)
    say(f"exported {checkpoint} (step {step}) to {out}: adapter, {CARD}, {len(clips)} sample clip(s)")
    if s.push_to_hub:
        push(out, s.push_to_hub, s.private, say)
    return out, checkpoint


def _languages(run: Path, state: dict, given: list[str] | None) -> list[str]:
    """--language as given (ISO 639-1, checked), else the languages of the run's data: its rows' (the data report),
    else the run's --language."""

    if given:
        return list(parse_languages(",".join(given)))
    found = ((read_json(run / REPORT_FILE) or {}).get("stats") or {}).get("languages") or {}
    codes = [c for c in found if c != "(none)"]
    return codes or list(parse_languages((state.get("config") or {}).get("language")))


def _best(run: Path) -> Path | None:

    name = read_pointer(run, layout.BEST)
    if name and verify_checkpoint(run / name).ok:
        return run / name
    return None


def _copy_samples(run: Path, step: int, out: Path) -> list[dict]:
    """The step's sample (--sample_steps) and scored clips, into OUT/samples/; what each one is."""

    config = read_json(run / layout.CONFIG_FILE) or {}
    clips = []
    (out / "samples").mkdir()
    sample = sample_file(run, step)
    if sample.is_file():
        shutil.copyfile(sample, out / "samples" / sample.name)
        clips.append({"file": f"samples/{sample.name}", "text": config.get("sample_text", "")})
    scored = scored_clips_dir(run, step)
    for item in read_json(scored / SCORED_ITEMS) or []:
        if (scored / item["file"]).is_file():
            shutil.copyfile(scored / item["file"], out / "samples" / f"scored-{item['file']}")
            clips.append({"file": f"samples/scored-{item['file']}", "text": item["text"], "wer": item.get("wer")})
    return clips


def model_card(run: Path, checkpoint: Path, state: dict, clips: list[dict], languages: list[str] | None) -> str:
    """README.md in the hub's format: YAML metadata, then what the adapter is, how it was made, how to use it."""

    adapter = json.loads((checkpoint / layout.ADAPTER_CONFIG).read_text())
    config = state.get("config") or {}
    step = state["progress"]["step"]
    base = config.get("model") or adapter.get("base_model_name_or_path") or "?"
    data = read_json(run / REPORT_FILE) or {}
    speakers = len((data.get("stats") or {}).get("speakers") or {})
    score = next((r for r in read_scores(run) if r.step == step), None)
    eval_loss = score.eval_loss if score and score.eval_loss is not None else _eval_loss(run, step)
    base = _one_line(base)
    meta = {"library_name": "peft", "pipeline_tag": "text-to-speech", "license": "other", "license_name": LICENSE}
    if _HUB_ID.fullmatch(base):
        meta["base_model"] = base
    meta["tags"] = ["higgs-audio", "text-to-speech", "lora", "higgs-train"]
    if languages:
        meta["language"] = [code for code in languages if _LANGUAGE.fullmatch(code)]
    targets = adapter.get("target_modules") or []
    lines = [
        f"# {_one_line(run.name)}: a LoRA adapter for Higgs Audio v2",
        "",
        f"A LoRA adapter for [{base}]({_link(base)}), trained with higgs-train; checkpoint `{checkpoint.name}`.",
        "",
        "## Training",
        "",
        f"- base model: `{base}`",
        f"- LoRA: r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, dropout={adapter.get('lora_dropout')}, "
        f"targets {', '.join(sorted(targets)) if isinstance(targets, list) else targets}",
        f"- steps: {step} (batch {config.get('batch_size')} x accumulation {config.get('grad_accum')} x "
        f"{state['progress'].get('world_size', 1)} process(es)), lr {config.get('lr')}, seed {config.get('seed')}",
        f"- data: {_duration(data.get('hours', 0))} in {data.get('good', '?')} clips, {speakers} speaker(s)"
        if data
        else "- data: no data report in the run folder",
        f"- languages: {', '.join(languages)}"
        if languages
        else "- languages: not recorded (train with --language, or export with --language)",
        f"- eval loss at this step: {eval_loss:.4f}" if eval_loss is not None else "- eval loss: not measured",
    ]
    if config.get("quantize", "none") != "none":
        lines.append(
            f"- trained on a {_one_line(str(config['quantize']))}-quantized base (QLoRA); the adapter loads on the "
            "full-precision base as any other, and generates best on it"
        )
    if score:
        lines.append(
            f"- scores (by listening, {config.get('score_samples', '?')} rows): WER {_f(score.wer)}, "
            f"speaker similarity {_f(score.similarity)}, duration ratio {_f(score.duration_ratio)}"
        )
    lines += ["", "## Samples", ""]
    lines += [f"- [{c['file']}]({c['file']}): {_one_line(c['text'])}" for c in clips] or [
        "No samples were made at this step."
    ]
    lines += _use_and_license(base)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)  # values quoted as YAML needs: no injection
    return "\n".join(["---", front.rstrip("\n"), "---", "", *lines]) + "\n"


def _use_and_license(base: str) -> list[str]:
    """The card's closing sections: how to load and run the adapter, and the license it is bound by."""
    return [
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoProcessor, HiggsAudioV2ForConditionalGeneration",
        "",
        f'base = HiggsAudioV2ForConditionalGeneration.from_pretrained("{base}")',
        'model = PeftModel.from_pretrained(base, "THIS_REPO_OR_FOLDER")',
        f'processor = AutoProcessor.from_pretrained("{base}")',
        "```",
        "",
        "or from the command line:",
        "",
        "```bash",
        f'higgs-train generate --model {base} --adapter THIS_FOLDER --text "Hello there." --out hello.wav',
        "```",
        "",
        "## License",
        "",
        f"This adapter is a derivative of `{base}` and is bound by that model's license: read its model card "
        "before you use or share it. Boson AI releases the Higgs Audio v2 weights under the Boson Higgs Audio 2 "
        "Community License Agreement (based on the Meta Llama 3 Community License). The license of the training "
        "data applies too.",
    ]


def _one_line(text) -> str:
    """A value as one line of Markdown: newlines (which could open a new front-matter block) become spaces."""
    return " ".join(str(text).split())


def _duration(hours: float) -> str:
    return f"{hours:.2f} hours" if hours >= 1 else f"{hours * 60:.1f} minutes"


def _link(base: str) -> str:
    return f"https://huggingface.co/{base}" if _HUB_ID.fullmatch(base) else base


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _eval_loss(run: Path, step: int) -> float | None:

    if not (run / METRICS_FILE).is_file():
        return None
    return next((r["eval_loss"] for r in read_metrics(run) if r.get("step") == step and "eval_loss" in r), None)


def push(folder: Path, repo: str, private: bool, say: Callable[[str], None]) -> None:
    """Create REPO (if needed) and upload the folder: one huggingface_hub call each."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="Upload adapter (higgs-train)")
    except Exception as e:  # network, login, permissions: the export itself is complete
        raise HiggsTrainError(
            f"upload to {repo} failed ({type(e).__name__}: {e}); {folder} is complete: log in (`hf auth login`) "
            f"and retry with `hf upload {repo} {folder}`"
        ) from e
    say(f"uploaded {folder} to {getattr(info, 'commit_url', repo)}")
