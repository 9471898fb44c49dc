"""Transcription through the transformers ASR pipeline (a Whisper checkpoint by default, a hub id or folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from higgs_train.errors import ModelError

DEFAULT_ASR_MODEL = "openai/whisper-small"
ASR_RATE = 16000


class Transcriber:
    def __init__(self, model: str = DEFAULT_ASR_MODEL, max_new_tokens: int = 128):
        import os

        from transformers import pipeline

        if Path(model).is_dir():
            os.environ["HF_HUB_OFFLINE"] = "1"
        device = 0 if torch.cuda.is_available() else -1
        try:
            self._pipe = pipeline("automatic-speech-recognition", model=model, device=device)
        except (OSError, ValueError) as e:
            raise ModelError(f"--asr_model {model}: cannot load the ASR model ({e})") from e
        limit = getattr(self._pipe.model.config, "max_target_positions", None)
        self.max_new_tokens = min(max_new_tokens, limit - 4) if limit else max_new_tokens  # room for the prompt

    def __call__(self, wave: torch.Tensor, sample_rate: int) -> str:
        if len(wave) == 0:
            return ""
        audio = AF.resample(wave.float(), sample_rate, ASR_RATE).numpy().astype(np.float32)
        out = self._pipe(
            {"raw": audio, "sampling_rate": ASR_RATE}, generate_kwargs={"max_new_tokens": self.max_new_tokens}
        )
        return out["text"].strip()
