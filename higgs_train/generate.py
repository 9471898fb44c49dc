"""Speech from the base model plus an adapter, through the model's own `generate` and the audio tokenizer's decode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from higgs_train.checkpoint.state import capture_rng, restore_rng
from higgs_train.data.audio import load_audio
from higgs_train.data.manifest import DEFAULT_SYSTEM_PROMPT


@dataclass
class Speech:
    wave: torch.Tensor  # 1-D float32 at `sample_rate`
    sample_rate: int
    frames: int  # generated audio frames (codes per codebook)


def prompt(processor, text: str, ref_audio: str | None = None, ref_text: str | None = None, scene: str | None = None):
    """Model inputs for one utterance: system (+ scene), an optional reference turn pair, the text, then the
    generation prompt that ends in `<|audio_out_bos|>`."""
    messages = [{"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]}]
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
) -> Speech:
    """Generate one utterance. The global RNG is left exactly as it was (sampling during training must not change
    the run's random stream)."""
    saved = capture_rng()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in prompt(processor, text, ref_audio, ref_text).items()}
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


def write_wav(speech: Speech, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, speech.wave.numpy(), speech.sample_rate, subtype="PCM_16")
    return path


def load_with_adapter(model: str, adapter: str | None, mixed_precision: str = "no", audio_tokenizer: str | None = None):
    """Base model + processor, with the adapter applied when given (a checkpoint folder or its adapter files)."""
    from peft import PeftModel

    from higgs_train.errors import CheckpointError
    from higgs_train.model import check_pair, load_lm, load_processor, quiet_libraries

    quiet_libraries()
    processor = load_processor(model, audio_tokenizer)
    lm = load_lm(model, mixed_precision)
    check_pair(lm, processor, model)
    if adapter:
        try:
            lm = PeftModel.from_pretrained(lm, adapter)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"--adapter {adapter}: cannot load the adapter ({e})") from e
    if torch.cuda.is_available():
        lm = lm.cuda()
    return lm.eval(), processor
