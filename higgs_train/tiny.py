"""A complete random-weight Higgs Audio v2 folder, small enough to train on a CPU in well under a second a step.

The folder has the same files as the released model (LM config and weights, text tokenizer, processor, chat
template) plus `audio_tokenizer/`, so `--model DIR` goes through exactly the `from_pretrained` code that loads the
released checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from higgs_train.convert import INNER as inner
from higgs_train.convert import count_blocks
from higgs_train.errors import ConfigError
from higgs_train.layouts import (
    AUDIO_TOKENIZER_SUBDIR,
    RELEASED_TOKENIZER,
    chat_template,
    released_lm_config,
    save_processor,
)

# Text-side special tokens of Higgs Audio v2 (Llama-3 headers plus the audio markers).
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|audio_out_bos|>",
    "<|AUDIO|>",
    "<|AUDIO_OUT|>",
    "<|reserved_special_token_6|>",  # the audio delay token
    "<|scene_desc_start|>",
    "<|scene_desc_end|>",
]
TINY_CODEBOOK_SIZE = 64  # codec codes per codebook; the LM adds stream-bos and stream-eos on top
TINY_NUM_CODEBOOKS = 8
_BPE_CORPUS = [
    "Generate audio following instruction.",
    "The quick brown fox jumps over the lazy dog while the birds sing in the morning.",
    "She sells sea shells by the sea shore; a speaker reads the text aloud in a quiet room.",
    "0123456789 , . ! ? ' \" - ( ) : ;",
]


def _byte_level_bpe(special_tokens: list[str], vocab_size: int):
    """A byte-level BPE trained on a few sentences, holding `special_tokens` (a `tokenizers.Tokenizer`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_BPE_CORPUS * 4, trainer)
    return bpe


def _text_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(SPECIAL_TOKENS, 384),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )


def _audio_tokenizer(full_shape: bool = False):
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    # the released codec's shape: 8 quantizers of 1024 codes at 25 frames/s = 2 kbps at the last bandwidth
    released = HiggsAudioV2TokenizerConfig(acoustic_model_config=RELEASED_TOKENIZER, target_bandwidths=[0.5, 1.0, 2.0])
    config = (
        released
        if full_shape
        else HiggsAudioV2TokenizerConfig(
            # 8 quantizers at 25 frames/s: 2 kbps / (25 * log2(64) bits) = 13 -> the last bandwidth picks 8 (1.2 kbps)
            target_bandwidths=[0.6, 1.2],
            codebook_size=TINY_CODEBOOK_SIZE,
            codebook_dim=8,
            acoustic_model_config={
                "encoder_hidden_size": 4,
                "downsampling_ratios": [8, 5, 4, 6],  # product 960 at 24 kHz = 25 frames/s, as released
                "upsampling_ratios": [8, 5, 4, 6],
                "decoder_hidden_size": 16,
                "hidden_size": 16,
            },
            semantic_model_config={
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "conv_dim": [8] * 7,
                "num_conv_pos_embeddings": 16,
                "num_conv_pos_embedding_groups": 2,
            },
        )
    )
    model = HiggsAudioV2TokenizerModel(config).eval()
    # The class initialises every codebook to zeros, which maps all audio to code 0; spread them out so that
    # different sounds get different codes.
    for layer in model.quantizer.quantizers:
        layer.codebook.embed.normal_(0.0, 0.05)
        layer.codebook.embed_avg.copy_(layer.codebook.embed)
    return model


def tiny_lm_config(**token_ids):
    """The tiny LM: 2 layers, hidden 64, 8 codebooks of TINY_CODEBOOK_SIZE codes (+ stream bos/eos)."""
    from transformers import HiggsAudioV2Config

    return HiggsAudioV2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        num_codebooks=TINY_NUM_CODEBOOKS,
        codebook_size=TINY_CODEBOOK_SIZE + 2,
        audio_stream_bos_id=TINY_CODEBOOK_SIZE,
        audio_stream_eos_id=TINY_CODEBOOK_SIZE + 1,
        **token_ids,
    )


def build_tiny_model(out_dir: str | Path, seed: int = 0, full_shape: bool = False) -> Path:
    """Write a random-weight Higgs Audio v2 model folder (LM, tokenizers, processor, chat template).

    Args:
        out_dir: the folder to write; created if missing.
        seed: seeds the random weights, so the same seed gives the same model.
        full_shape: the released shape instead (LM 5.8B parameters in bfloat16, about 11.6 GB, and the released
            codec's shape), for checks on a GPU where nothing can be downloaded.

    Returns:
        The folder, loadable with `--model` (the same `from_pretrained` code as a hub id).

    Raises:
        ConfigError: the folder exists and is not empty (nothing is overwritten).
    """
    from transformers import (
        DacFeatureExtractor,
        HiggsAudioV2Processor,
    )

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _text_tokenizer()
    audio_tokenizer = _audio_tokenizer(full_shape)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    token_ids = {
        "audio_token_id": ids["<|AUDIO_OUT|>"],
        "audio_bos_token_id": ids["<|audio_out_bos|>"],
        "audio_delay_token_id": ids["<|reserved_special_token_6|>"],
        "pad_token_id": ids["<|end_of_text|>"],
        "bos_token_id": ids["<|begin_of_text|>"],
        "eos_token_id": ids["<|eot_id|>"],
    }
    lm = _random_lm(full_shape, len(tokenizer), token_ids)
    config = lm.config
    lm.save_pretrained(out)
    del lm
    audio_tokenizer.save_pretrained(out / AUDIO_TOKENIZER_SUBDIR)
    processor = HiggsAudioV2Processor(
        DacFeatureExtractor(sampling_rate=audio_tokenizer.config.sample_rate, hop_length=960),
        tokenizer,
        audio_tokenizer,
        chat_template=chat_template(),
        audio_stream_bos_id=config.audio_stream_bos_id,
        audio_stream_eos_id=config.audio_stream_eos_id,
    )
    save_processor(processor, out)
    return out


def _random_lm(full_shape: bool, vocab_size: int, token_ids: dict):
    """A random-weight LM: the tiny config, or the released shape (its 128256-row vocabulary too) in bfloat16, built
    where it is fastest."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    if not full_shape:
        return HiggsAudioV2ForConditionalGeneration(
            tiny_lm_config(vocab_size=vocab_size, **token_ids), use_text_head=True
        )
    config = released_lm_config(**token_ids)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            return HiggsAudioV2ForConditionalGeneration(config, use_text_head=True)
    finally:
        torch.set_default_dtype(default)


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A speaker reads the text aloud in a quiet room.",
    "Birds sing in the morning while the sun rises.",
    "Every checkpoint that exists is complete and verified.",
    "Rerunning the same command resumes where it stopped.",
]


def synth_clip(text: str, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A speech-like signal: one voiced 'syllable' per word, harmonics of a gliding pitch, plus a little noise."""
    words = text.split()
    f0 = rng.uniform(100, 220)
    pieces = []
    for _ in words:
        n = int(rate * rng.uniform(0.18, 0.32))
        t = np.arange(n) / rate
        pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        voiced = sum(np.sin(h * phase) / h for h in range(1, 6))
        envelope = np.sin(np.pi * np.arange(n) / n) ** 2
        pieces.append(voiced * envelope)
        pieces.append(np.zeros(int(rate * 0.05)))
    wave = np.concatenate(pieces)
    return (0.3 * wave / np.abs(wave).max() + 0.003 * rng.standard_normal(len(wave))).astype(np.float32)


def make_dataset(folder: str | Path) -> Path:
    """Write synthetic clips at mixed sample rates and a JSONL manifest for them; returns the manifest."""
    folder = Path(folder)
    rng = np.random.default_rng(0)
    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(TEXTS):
        rate = (16000, 22050, 24000, 44100)[i % 4]  # mixed rates: resampling is part of the pipeline
        name = f"clip_{i}.wav"
        sf.write(clips / name, synth_clip(text, rate, rng), rate)
        rows.append({"audio_filepath": f"clips/{name}", "text": text, "speaker": "demo"})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


TINY_WHISPER_LANGUAGES = ("en", "ar", "hi", "vi", "zh", "ja", "fa", "th")


TINY_WHISPER_SIZES = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "max_target_positions": 24}
TINY_WHISPER_SIZES |= {"encoder_attention_heads": 2, "decoder_attention_heads": 2}
TINY_WHISPER_SIZES |= {"encoder_ffn_dim": 64, "decoder_ffn_dim": 64}


def build_tiny_whisper(out_dir: str | Path, seed: int = 0, multilingual: bool = True) -> Path:
    """A random-weight Whisper folder for the ASR pipeline (its transcripts are noise; the plumbing is real).

    `multilingual`: language tokens for TINY_WHISPER_LANGUAGES and the transcribe/translate tasks, as the released
    multilingual checkpoints have; False: an English-only model, as Whisper's `.en` checkpoints are.
    """
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    languages = TINY_WHISPER_LANGUAGES if multilingual else ("en",)
    tasks = ["<|translate|>", "<|transcribe|>"]
    specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in languages), *tasks, "<|notimestamps|>"]
    bpe = _byte_level_bpe(specials, 320)
    bpe.save(str(out / "tokenizer.json"))
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"), unk_token=end, bos_token=end, eos_token=end, pad_token=end
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        **TINY_WHISPER_SIZES,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids[end],
        pad_token_id=ids[end],
        bos_token_id=ids[end],
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids[end],
        pad_token_id=ids[end],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=multilingual,
        max_length=20,
    )
    if multilingual:
        model.generation_config.lang_to_id = {f"<|{c}|>": ids[f"<|{c}|>"] for c in languages}
        model.generation_config.task_to_id = {"translate": ids[tasks[0]], "transcribe": ids[tasks[1]]}
    model.save_pretrained(out)
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(out)
    return out


def write_original_layout(hf_folder: str | Path, out_dir: str | Path) -> Path:
    """Rewrite a transformers Higgs Audio v2 folder (e.g. the tiny model) in Boson's original release layout: the
    original config.json, tensor names and PartiallyFrozen splits, and an audio tokenizer as `model.pth` with
    weight-norm pairs and an incomplete config. Tests use it to check `higgs-train convert` offline.
    """
    from safetensors.torch import load_file, save_file
    from transformers import HiggsAudioV2Config, HiggsAudioV2TokenizerModel

    hf, out = Path(hf_folder), Path(out_dir)
    out.mkdir(parents=True)
    config = HiggsAudioV2Config.from_pretrained(hf)
    original = _original_config(config)
    (out / "config.json").write_text(json.dumps(original, indent=2))
    state = {}
    for key, tensor in load_file(str(hf / "model.safetensors")).items():
        key = key.replace("model.embed_audio_tokens.embed_audio_tokens.", "audio_codebook_embeddings.")
        key = key.removeprefix("model.")
        if key.startswith(("audio_lm_head", "text_lm_head")):
            key = f"audio_decoder_proj.{key}"
        state[key] = tensor
    for stem, kind in (
        ("embed_tokens", "embedding"),
        ("audio_decoder_proj.audio_lm_head", "linear"),
        ("audio_decoder_proj.text_lm_head", "linear"),
    ):
        if f"{stem}.weight" in state:
            whole = state.pop(f"{stem}.weight")
            cut = whole.shape[0] - 3  # the released model trains only a few rows (the new special tokens)
            state[f"{stem}.{kind}_frozen.weight"] = whole[:cut].clone()
            state[f"{stem}.{kind}_trainable.weight"] = whole[cut:].clone()
    state["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(config.head_dim // 2)
    state["audio_codebook_weights"] = torch.ones(config.num_codebooks)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (hf / name).exists():
            shutil.copy(hf / name, out / name)
    codec = HiggsAudioV2TokenizerModel.from_pretrained(hf / AUDIO_TOKENIZER_SUBDIR)
    (out / AUDIO_TOKENIZER_SUBDIR).mkdir()
    torch.save(_original_codec_state(codec.state_dict()), out / AUDIO_TOKENIZER_SUBDIR / "model.pth")
    (out / AUDIO_TOKENIZER_SUBDIR / "config.json").write_text(json.dumps({"sample_rate": 24000}))
    return out


def _original_config(config) -> dict:
    """Boson's original config.json for a transformers HiggsAudioV2Config: a Llama text_config plus the audio fields."""
    text_config = {
        "model_type": "llama",
        **{
            k: getattr(config, k)
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "hidden_act",
                "max_position_embeddings",
                "rms_norm_eps",
                "bos_token_id",
                "eos_token_id",
            )
        },
        "rope_theta": config.rope_parameters["rope_theta"],
        "rope_scaling": {k: v for k, v in config.rope_parameters.items() if k != "rope_theta"},
    }
    return {
        "model_type": "higgs_audio",
        "text_config": text_config,
        "audio_adapter_type": "dual_ffn_fast_forward",
        "audio_dual_ffn_layers": list(range(config.num_hidden_layers)),
        "audio_ffn_hidden_size": config.hidden_size,
        "audio_ffn_intermediate_size": config.intermediate_size,
        "audio_num_codebooks": config.num_codebooks,
        "audio_codebook_size": config.codebook_size - 2,
        "audio_stream_bos_id": config.audio_stream_bos_id,
        "audio_stream_eos_id": config.audio_stream_eos_id,
        "audio_out_token_idx": config.audio_token_id,
        "audio_out_bos_token_id": config.audio_bos_token_id,
        "pad_token_id": config.pad_token_id,
        "use_delay_pattern": True,
        "skip_audio_tower": True,
    }


def _original_codec_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The audio tokenizer's tensors under their original names, convolutions as weight-norm pairs."""
    import re

    n_enc = count_blocks(state, r"^acoustic_encoder\.block\.(\d+)\.")
    n_dec = count_blocks(state, r"^acoustic_decoder\.block\.(\d+)\.")
    out = {"fc1.weight": torch.zeros(1)}  # the original has an fc1 that the forward pass never uses
    for key, tensor in state.items():
        new = key
        if m := re.match(r"^acoustic_encoder\.(conv1|snake1|conv2)\.(.*)$", key):
            new = f"encoder.block.{ {'conv1': 0, 'snake1': n_enc + 1, 'conv2': n_enc + 2}[m[1]] }.{m[2]}"
        elif m := re.match(r"^acoustic_encoder\.block\.(\d+)\.res_unit(\d)\.(\w+)\.(.*)$", key):
            new = f"encoder.block.{int(m[1]) + 1}.block.{int(m[2]) - 1}.block.{inner.index(m[3])}.{m[4]}"
        elif m := re.match(r"^acoustic_encoder\.block\.(\d+)\.(snake1|conv1)\.(.*)$", key):
            new = f"encoder.block.{int(m[1]) + 1}.block.{3 if m[2] == 'snake1' else 4}.{m[3]}"
        elif m := re.match(r"^acoustic_decoder\.(conv1|snake1|conv2)\.(.*)$", key):
            new = f"decoder_2.model.{ {'conv1': 0, 'snake1': n_dec + 1, 'conv2': n_dec + 2}[m[1]] }.{m[2]}"
        elif m := re.match(r"^acoustic_decoder\.block\.(\d+)\.res_unit(\d)\.(\w+)\.(.*)$", key):
            new = f"decoder_2.model.{int(m[1]) + 1}.block.{int(m[2]) + 1}.block.{inner.index(m[3])}.{m[4]}"
        elif m := re.match(r"^acoustic_decoder\.block\.(\d+)\.(snake1|conv_t1)\.(.*)$", key):
            new = f"decoder_2.model.{int(m[1]) + 1}.block.{0 if m[2] == 'snake1' else 1}.{m[3]}"
        elif key.startswith("quantizer.quantizers."):
            new = key.replace("quantizer.quantizers.", "quantizer.vq.layers.").replace(".codebook.", "._codebook.")
        elif m := re.match(r"^(fc|fc1|fc2)\.(.*)$", key):
            new = f"{ {'fc': 'fc_prior', 'fc1': 'fc_post1', 'fc2': 'fc_post2'}[m[1]] }.{m[2]}"
        elif key.startswith(("encoder_semantic.", "decoder_semantic.")):
            new = re.sub(r"\.(conv|conv1|conv2)\.(weight|bias)$", r".\1.conv.\2", key)
        if new.startswith(("encoder.", "decoder_2.")) and new.endswith(".weight") and tensor.dim() > 1:
            norm = tensor.norm(dim=list(range(1, tensor.dim())), keepdim=True)
            out[new.replace(".weight", ".weight_g")] = norm
            out[new.replace(".weight", ".weight_v")] = tensor * 2.0  # any scale: only the direction is kept
        else:
            out[new] = tensor.clone()
    return out
