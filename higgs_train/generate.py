"""Speech from the base model plus an adapter, through the model's own `generate` and the audio tokenizer's decode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from higgs_train.checkpoint import layout
from higgs_train.checkpoint.preflight import refuse_overlap
from higgs_train.checkpoint.resume import attach_adapter
from higgs_train.checkpoint.state import capture_rng, restore_rng
from higgs_train.checkpoint.verify import verify_checkpoint
from higgs_train.data.audio import load_audio
from higgs_train.data.manifest import DEFAULT_SYSTEM_PROMPT
from higgs_train.errors import CheckpointError, ConfigError, OutputDirError
from higgs_train.files import atomic_write_bytes, remove_leftovers
from higgs_train.layouts import looks_local
from higgs_train.model import check_pair, load_lm, load_processor, quiet_libraries, recorded_revisions
from higgs_train.settings import GenerateSettings


@dataclass
class Speech:
    wave: torch.Tensor  # 1-D float32 at `sample_rate`
    sample_rate: int
    frames: int  # generated audio frames (codes per codebook)


def prompt(
    processor,
    text: str,
    ref_audio: str | None = None,
    ref_text: str | None = None,
    scene: str | None = None,
    system: str | None = None,
):
    """Model inputs for one utterance: system (+ scene), an optional reference turn pair, the text, then the
    generation prompt that ends in `<|audio_out_bos|>`."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system or DEFAULT_SYSTEM_PROMPT}]}]
    if scene:
        messages.append({"role": "scene", "content": [{"type": "text", "text": scene}]})
    audio = []
    if ref_audio:
        messages.append({"role": "user", "content": [{"type": "text", "text": ref_text or ""}]})
        messages.append({"role": "assistant", "content": [{"type": "audio", "path": ref_audio}]})
        audio.append(load_audio(ref_audio, processor.audio_tokenizer.config.sample_rate).numpy())
    messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
    rendered = processor.tokenizer.apply_chat_template(
        messages, chat_template=processor.chat_template, tokenize=False, add_generation_prompt=True
    )
    return processor(text=rendered, audio=audio or None, return_tensors="pt")


@torch.no_grad()
def generate_speech(
    model,
    processor,
    text: str,
    ref_audio: str | None = None,
    ref_text: str | None = None,
    max_new_frames: int = 500,
    temperature: float = 0.8,
    seed: int | None = 0,
    scene: str | None = None,
    system: str | None = None,
) -> Speech:
    """Generate one utterance (with the row's own system prompt and scene when given). The global RNG is left
    exactly as it was (sampling during training must not change the run's random stream)."""
    saved = capture_rng()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in prompt(processor, text, ref_audio, ref_text, scene, system).items()}
        was_training = model.training
        model.eval()
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_frames,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
        )
        model.train(was_training)
    finally:
        restore_rng(saved)
    audio_ids = (out.audio_sequences if hasattr(out, "audio_sequences") else out).cpu()
    rate = processor.audio_tokenizer.config.sample_rate
    if _generated_frames(audio_ids[0], processor) <= 0:  # stopped before one full frame got through the delay
        return Speech(torch.zeros(0), rate, 0)
    wave = processor.decode(audio_ids).float()
    return Speech(wave, rate, len(wave) // int(processor.audio_tokenizer.config.hop_length))


def _generated_frames(ids: torch.Tensor, processor) -> int:
    """Frames of codes in the generated stream: between its stream-bos and first all-eos frame, less the delay."""
    start = int((ids == processor.audio_stream_bos_id).all(-1).nonzero()[-1])
    ends = (ids[start:] == processor.audio_stream_eos_id).all(-1).nonzero()
    end = int(ends[0]) if len(ends) else len(ids) - start
    return end - 1 - (ids.shape[-1] - 1)


def speak(s: GenerateSettings) -> tuple[Path, Speech]:
    """`higgs-train generate`: check the request, load base + adapter, generate, write the WAV."""

    check_request(s.text, s.out, s.ref_audio)
    refuse_overlap("--out", s.out, {"--model": s.model, "--adapter": s.adapter, "--ref_audio": s.ref_audio})
    lm, processor = load_with_adapter(s.model, s.adapter)
    speech = generate_speech(lm, processor, s.text, s.ref_audio, s.ref_text, s.max_frames, s.temperature, s.seed)
    return write_wav(speech, s.out), speech


def check_request(text: str, out: str | Path, ref_audio: str | None = None) -> None:
    """Refuse what would write nothing useful: no words, a missing --ref_audio, or an --out that is a folder or
    not a .wav file.

    Raises:
        ConfigError: naming the flag and the fix.
    """

    if not text.strip():
        raise ConfigError("--text is empty; give the words to speak")
    if ref_audio and not Path(ref_audio).is_file():
        raise ConfigError(f"--ref_audio {ref_audio}: no such file; pass the reference clip to clone")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / 'sample.wav'}")
    if out.suffix.lower() != ".wav":
        raise ConfigError(f"--out {out}: generate writes WAV; give a name ending in .wav")


def write_wav(speech: Speech, path: str | Path) -> Path:
    """Write the speech as 16-bit WAV (beside the name, then renamed: a full disk leaves no truncated file).

    Raises:
        OutputDirError: the file cannot be written.
    """
    import io

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        sf.write(buf, speech.wave.numpy(), speech.sample_rate, format="WAV", subtype="PCM_16")
        remove_leftovers(path)  # what a killed generate left beside this file
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise OutputDirError(f"--out {path}: cannot write the WAV file ({e.strerror or e}); choose another path") from e
    return path


def load_with_adapter(
    model: str,
    adapter: str | None,
    mixed_precision: str = "no",
    audio_tokenizer: str | None = None,
    flag: str = "--adapter",
):
    """Base model + processor, with the adapter applied when given (a checkpoint folder or its adapter files). A
    checkpoint's base loads at the commits its run recorded (--model_revision), when it names the same --model."""

    quiet_libraries()
    revisions = {}
    if adapter:
        check_adapter_folder(adapter, flag)  # before the model loads: a wrong folder fails in a second
        revisions = recorded_revisions(adapter, model, audio_tokenizer)
    model_revision = revisions.get("model_revision")
    processor = load_processor(model, audio_tokenizer, model_revision, revisions.get("audio_tokenizer_revision"))
    lm = load_lm(model, mixed_precision, revision=model_revision)
    check_pair(lm, processor, model)
    if adapter:
        lm = attach_adapter(lm, adapter, flag)
    if torch.cuda.is_available():
        lm = lm.cuda()
    return lm.eval(), processor


def check_adapter_folder(adapter: str, flag: str = "--adapter") -> None:
    """A local adapter must hold its files (never tried on the hub), and a checkpoint folder must pass `verify`.

    Raises:
        CheckpointError: what is missing or damaged, and the fix.
    """

    folder = Path(adapter)
    if not looks_local(adapter):
        return  # a hub id: attach_adapter fetches it
    if not folder.is_dir():
        raise CheckpointError(f"{flag} {adapter}: no such folder; pass a checkpoint folder of a run")
    missing = [n for n in (layout.ADAPTER_CONFIG, layout.ADAPTER_WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{flag} {adapter}: {' and '.join(missing)} not found; pass a checkpoint folder of a run "
            "(e.g. RUN/checkpoint-500)"
        )
    if (folder / layout.INTEGRITY).is_file():
        result = verify_checkpoint(folder)
        if not result.ok:
            raise CheckpointError(f"{flag} {adapter}: {'; '.join(result.problems)}")
