"""Transcription through the transformers ASR pipeline (a Whisper checkpoint by default, a hub id or folder), or
`--asr_model pocketsphinx`: CMU PocketSphinx with the US English model its package ships (no download, CPU only,
far less accurate than Whisper; `pip install -e '.[pocketsphinx]'`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from higgs_train.config import DEFAULT_ASR_MODEL
from higgs_train.errors import ModelError
from higgs_train.language import asr_refusal
from higgs_train.model import check_loading_info

ASR_RATE = 16000
POCKETSPHINX = "pocketsphinx"


def english_only_by_name(model: str) -> bool:
    """PocketSphinx (its bundled model is US English) and Whisper's `.en` checkpoints hear English only."""
    return model == POCKETSPHINX or model.rstrip("/").endswith(".en")


class Transcriber:
    """Speech to text. `languages`: the languages it will be asked to hear (None entries: unknown); a model that
    cannot hear them is refused here, before anything is scored.

    Raises:
        ModelError: the model cannot be loaded, or hears English only and `languages` holds another language.
    """

    def __init__(
        self, model: str = DEFAULT_ASR_MODEL, max_new_tokens: int = 128, languages: set | frozenset = frozenset()
    ):
        import os

        self._sphinx = None
        self._refuse_if_deaf(model, languages, english_only_by_name(model))
        if model == POCKETSPHINX:
            try:
                from pocketsphinx import Decoder
            except ImportError as e:
                raise ModelError("--asr_model pocketsphinx: pip install -e '.[pocketsphinx]'") from e
            self._sphinx = Decoder(samprate=ASR_RATE)  # the bundled en-us acoustic model, dictionary and LM
            return

        from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline

        if Path(model).is_dir():
            os.environ["HF_HUB_OFFLINE"] = "1"
        device = 0 if torch.cuda.is_available() else -1
        try:
            config = AutoConfig.from_pretrained(model)
            auto = AutoModelForSpeechSeq2Seq if config.is_encoder_decoder else AutoModelForCTC
            asr, info = auto.from_pretrained(model, output_loading_info=True)
            check_loading_info(info, "--asr_model", model)  # a half-loaded ASR model would score nonsense
            processor = AutoProcessor.from_pretrained(model)
            self._pipe = pipeline(
                "automatic-speech-recognition",
                model=asr,
                tokenizer=processor.tokenizer,
                feature_extractor=processor.feature_extractor,
                device=device,
            )
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"--asr_model {model}: cannot load the ASR model ({e})") from e
        multilingual = getattr(asr.generation_config, "is_multilingual", None)
        self._language_tokens = bool(getattr(asr.generation_config, "lang_to_id", None))
        self._refuse_if_deaf(model, languages, multilingual is False)
        limit = getattr(self._pipe.model.config, "max_target_positions", None)
        self.max_new_tokens = min(max_new_tokens, limit - 4) if limit else max_new_tokens  # room for the prompt

    @staticmethod
    def _refuse_if_deaf(model: str, languages, english_only: bool) -> None:

        why = asr_refusal(model, set(languages), english_only)
        if why:
            raise ModelError(why)

    def __call__(self, wave: torch.Tensor, sample_rate: int, language: str | None = None) -> str:
        """The transcript of `wave`; with `language` (ISO 639-1) a multilingual Whisper is told the language and to
        transcribe (never to guess it per clip, nor to translate)."""
        if len(wave) == 0:
            return ""
        audio = AF.resample(wave.float(), sample_rate, ASR_RATE).numpy().astype(np.float32)
        if self._sphinx is not None:
            self._sphinx.start_utt()
            self._sphinx.process_raw((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
            self._sphinx.end_utt()
            hyp = self._sphinx.hyp()
            return hyp.hypstr.strip() if hyp else ""
        kwargs = {"max_new_tokens": self.max_new_tokens}
        if language and self._language_tokens:
            kwargs.update(language=language, task="transcribe")
        out = self._pipe({"raw": audio, "sampling_rate": ASR_RATE}, generate_kwargs=kwargs)
        return out["text"].strip()
