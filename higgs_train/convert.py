"""`higgs-train convert SRC OUT`: Boson's original release layout to a folder transformers' `from_pretrained` loads.

An LM folder (config.json with `model_type: "higgs_audio"`, safetensors shards) becomes a `higgs_audio_v2` folder:
the config rebuilt from the original one, the tensors renamed (codebook embeddings into
`model.embed_audio_tokens`, `embed_tokens|layers|norm` under `model.`, the `audio_decoder_proj.` prefix dropped),
PartiallyFrozen halves concatenated, rotary buffers and `audio_codebook_weights` dropped; the processor with the
chat template; and the audio tokenizer converted (or copied) into OUT/audio_tokenizer. An original audio tokenizer
folder (`model.pth`) alone becomes a `higgs_audio_v2_tokenizer` folder. `model.pth` is read with
`torch.load(weights_only=True)`: a file that needs more than tensors to load is refused.

Everything is written into a hidden folder beside OUT, loaded back through the same code a run uses, and renamed
into place only then.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from higgs_train import faults, files, layouts
from higgs_train.checkpoint.lock import RunLock
from higgs_train.checkpoint.preflight import refuse_overlap
from higgs_train.errors import ConfigError, HiggsTrainError, ModelError
from higgs_train.model import check_pair, load_audio_tokenizer, load_lm, load_processor, quiet_libraries

DROPPED = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq", "audio_codebook_weights")
UNUSED_PREFIXES = ("audio_tower.", "audio_encoder_proj.")  # the audio-understanding tower: not part of v2
INNER = ("snake1", "conv1", "snake2", "conv2")  # the layers of one DAC residual unit, in order
RELEASED_EOS = 128009  # <|eot_id|>: the generation eos transformers' converter writes
RELEASED_SAMPLING = {"ras_win_len": 7, "ras_win_max_num_repeat": 2, "use_text_head": True}
INEXPRESSIBLE = (  # original fields whose value the native model has no way to hold: (field, is it such a value, why)
    ("audio_embed_avg", bool, "Boson averages the codebook embeddings, the native model sums them"),
    ("use_delay_pattern", lambda v: not v, "the native model always delays codebook k by k frames"),
    ("use_audio_out_self_attention", bool, "the native model has no separate audio self-attention"),
)


def convert(
    src: str | Path,
    out: str | Path,
    audio_tokenizer: str | None = None,
    tokenizer_config: str | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Convert SRC (an original LM folder, or an original audio tokenizer folder) into OUT.

    Args:
        audio_tokenizer: for an LM, its audio tokenizer (original or transformers layout; default
            SRC/audio_tokenizer).
        tokenizer_config: a transformers `HiggsAudioV2TokenizerConfig` JSON for an original audio tokenizer
            (default: the released settings, with the DAC sizes read off the weights).

    Raises:
        ConfigError: OUT exists, or SRC is in neither original layout.
        ModelError: the weights do not fit the config, or need unpickling.
    """

    quiet_libraries()
    src, out = Path(src), Path(out).absolute()
    refuse_overlap(
        "OUTPUT", out, {"SRC": src, "--audio_tokenizer": audio_tokenizer, "--tokenizer_config": tokenizer_config}
    )
    if out.exists():
        raise ConfigError(f"{out} already exists; choose a new folder for the converted model")
    out.parent.mkdir(parents=True, exist_ok=True)
    with RunLock(out.parent, "convert", flag="OUTPUT", name=f".{out.name}.lock"):
        for leftover in files.remove_leftovers(out):
            say(f"removed {leftover.name}: left by an interrupted convert")
        _convert_into(src, out, audio_tokenizer, tokenizer_config, say)
    return out


def _convert_into(src: Path, out: Path, audio_tokenizer, tokenizer_config, say) -> None:
    tmp = files.tmp_sibling(out)
    try:
        if layouts.is_original_tokenizer(str(src)):
            _convert_tokenizer(src, tokenizer_config).save_pretrained(tmp)
            _check_loads(tmp, tokenizer_only=True)
        elif (original := layouts.original_lm_config(str(src))) is not None:
            _convert_lm(src, original, tmp, audio_tokenizer, tokenizer_config, say)
            _check_loads(tmp)
        else:
            raise ConfigError(
                f"{src} is not in Boson's original layout (no config.json with model_type "
                f"{layouts.ORIGINAL_MODEL_TYPE!r}, no {layouts.ORIGINAL_TOKENIZER_WEIGHTS}); if it loads with "
                "--model already, it needs no conversion"
            )
        faults.failpoint("before_publish")
        os.rename(tmp, out)
    except OSError as e:
        raise ModelError(f"{out}: cannot write the converted model ({e.strerror or e}); free disk space") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_lm(src: Path, original: dict, tmp: Path, audio_tokenizer, tokenizer_config, say) -> None:
    from transformers import (
        AutoTokenizer,
        DacFeatureExtractor,
        HiggsAudioV2ForConditionalGeneration,
        HiggsAudioV2Processor,
        HiggsAudioV2TokenizerModel,
    )

    tok_source = Path(audio_tokenizer) if audio_tokenizer else src / layouts.AUDIO_TOKENIZER_SUBDIR
    if not tok_source.exists():
        raise ConfigError(
            f"{src} has no {layouts.AUDIO_TOKENIZER_SUBDIR}/ folder; pass its audio tokenizer with --audio_tokenizer"
        )
    text_tokenizer = AutoTokenizer.from_pretrained(src)
    if text_tokenizer.pad_token is None:
        text_tokenizer.pad_token = text_tokenizer.eos_token
    config = lm_config(original, text_tokenizer)
    state = lm_state_dict(read_safetensors(src))
    with torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(config, use_text_head="text_lm_head.weight" in state)
    _load_strict(model, state, str(src))
    model.generation_config = generation_config(config)
    model.save_pretrained(tmp)
    if layouts.is_original_tokenizer(str(tok_source)):
        codec = _convert_tokenizer(tok_source, tokenizer_config)
    else:
        codec = HiggsAudioV2TokenizerModel.from_pretrained(tok_source)
    codec.save_pretrained(tmp / layouts.AUDIO_TOKENIZER_SUBDIR)
    processor = HiggsAudioV2Processor(
        DacFeatureExtractor(sampling_rate=codec.config.sample_rate, hop_length=codec.config.hop_length),
        text_tokenizer,
        codec,
        chat_template=layouts.chat_template(),
        audio_stream_bos_id=config.audio_stream_bos_id,
        audio_stream_eos_id=config.audio_stream_eos_id,
    )
    layouts.save_processor(processor, tmp)
    say(f"converted {len(state)} tensors; {config.num_hidden_layers} layers, {config.num_codebooks} codebooks")


def lm_config(original: dict, text_tokenizer=None):
    """A `HiggsAudioV2Config` from Boson's original config.json (a `text_config` with the Llama settings plus the
    audio fields), as transformers' converter writes it for the release: separate text head and embeddings
    (`tie_word_embeddings` false), eos `<|eot_id|>` (128009), bos and `max_position_embeddings` transformers'
    defaults (1 and 2048: the length every transformers-layout copy of the release carries, which higgs-train's
    row limit and `plan` read; the text config's 131072 is Llama 3.2's, not what Higgs Audio was trained at).

    Raises:
        ModelError: an architecture transformers' Higgs Audio v2 does not have (audio FFN in only some layers, or
            of another size; averaged codebook embeddings, no delay pattern, audio self-attention).
    """
    from transformers import HiggsAudioV2Config, LlamaConfig

    text = LlamaConfig(**{k: v for k, v in (original.get("text_config") or {}).items() if k != "model_type"})
    layers = text.num_hidden_layers
    _refuse_inexpressible(original, text)
    delay, eos = 128014, RELEASED_EOS
    if text_tokenizer is not None:
        vocab = text_tokenizer.get_vocab()
        delay = vocab.get("<|reserved_special_token_6|>", delay)
        eos = vocab.get("<|eot_id|>", text.eos_token_id)
    return HiggsAudioV2Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        hidden_act=text.hidden_act,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters=_rope(dict(text.rope_parameters), HiggsAudioV2Config().max_position_embeddings),
        attention_bias=text.attention_bias,
        mlp_bias=text.mlp_bias,
        tie_word_embeddings=False,  # the release stores the text head apart from the embeddings (text_config says true)
        eos_token_id=eos,
        pad_token_id=original.get("pad_token_id", 128001),
        num_codebooks=original.get("audio_num_codebooks", 8),
        codebook_size=original.get("audio_codebook_size", 1024) + 2,  # + stream bos and eos
        audio_stream_bos_id=original.get("audio_stream_bos_id", 1024),
        audio_stream_eos_id=original.get("audio_stream_eos_id", 1025),
        audio_token_id=original.get("audio_out_token_idx", 128016),
        audio_bos_token_id=original.get("audio_out_bos_token_id", 128013),
        audio_delay_token_id=delay,
    )


def _refuse_inexpressible(original: dict, text) -> None:
    """Raise ModelError for an original architecture transformers' Higgs Audio v2 cannot hold (see lm_config)."""
    layers = text.num_hidden_layers
    dual = original.get("audio_dual_ffn_layers")
    if not str(original.get("audio_adapter_type", "")).startswith("dual_ffn") or sorted(dual or []) != list(
        range(layers)
    ):
        raise ModelError(
            f"this original config has audio FFNs in layers {dual} ({original.get('audio_adapter_type')}); "
            f"transformers' Higgs Audio v2 has one in each of the {layers} layers, so it cannot be converted"
        )
    inexpressible = [
        f"{field}: {json.dumps(original[field])} ({why})"
        for field, bad, why in INEXPRESSIBLE
        if field in original and bad(original[field])
    ]
    if inexpressible:
        raise ModelError(
            f"this original config has {'; '.join(inexpressible)}: transformers' Higgs Audio v2 cannot express it, "
            "so it is not converted"
        )
    sizes = (original.get("audio_ffn_hidden_size"), original.get("audio_ffn_intermediate_size"))
    if sizes != (text.hidden_size, text.intermediate_size):
        raise ModelError(f"audio FFN sizes {sizes} differ from the text FFN's; transformers' model cannot hold them")


def _rope(rope: dict, max_positions: int) -> dict:
    """Llama 3's rope scaling restated for a shorter context, as transformers' defaults state the release's: the
    original length and both frequency factors scaled by one power of two (8192, 1, 4 -> 1024, 0.125, 0.5 for
    2048 positions), which keeps every frequency bit for bit (tested) and satisfies transformers' check that the
    original length is under max_position_embeddings."""
    if rope.get("rope_type") != "llama3" or rope["original_max_position_embeddings"] < max_positions:
        return rope
    scale = 1.0
    while rope["original_max_position_embeddings"] * scale >= max_positions:
        scale /= 2
    scaled = ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor")
    out = {**rope, **{k: rope[k] * scale for k in scaled}}
    out["original_max_position_embeddings"] = int(out["original_max_position_embeddings"])
    return out


def generation_config(config):
    """What transformers' converter writes beside the release: its token ids and Boson's repetition-aware sampling
    (a window of 7 frames, a code repeated twice in it is sampled again), which `generate`, samples and scores
    use through the model's generation config."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        **RELEASED_SAMPLING,
    )


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors weights found")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def lm_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original tensor names and splits -> transformers' `HiggsAudioV2ForConditionalGeneration` names."""
    state = dict(original)
    for key in [k for k in state if k.endswith((".embedding_frozen.weight", ".linear_frozen.weight"))]:
        stem, kind = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1].split("_")[0]
        state[f"{stem}.weight"] = torch.cat([state.pop(key), state.pop(f"{stem}.{kind}_trainable.weight")], dim=0)
    out = {}
    for key, tensor in state.items():
        if key.endswith(DROPPED) or key.startswith(UNUSED_PREFIXES):
            continue
        key = re.sub(r"^audio_codebook_embeddings\.", "model.embed_audio_tokens.embed_audio_tokens.", key)
        key = re.sub(r"^(embed_tokens|layers|norm)\.", r"model.\1.", key)
        out[re.sub(r"^audio_decoder_proj\.", "", key)] = tensor
    return out


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ModelError(
            f"{source}: the weights do not fit the converted config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]}; the folder is incomplete or not a Higgs Audio v2 release"
        )
    model.load_state_dict(state, strict=True, assign=True)


def _convert_tokenizer(src: Path, config_json: str | None):
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    file = src / layouts.ORIGINAL_TOKENIZER_WEIGHTS
    try:
        original = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError for anything beyond tensors, or a damaged file
        raise ModelError(f"{file}: does not load as plain tensors ({type(e).__name__}); it is not converted") from e
    if isinstance(original, dict) and isinstance(original.get("state_dict"), dict):
        original = original["state_dict"]
    state = tokenizer_state_dict(original)
    if config_json is None and layouts.tokenizer_layout(str(src)) == "mixed":
        config_json = str(src / "config.json")  # the transformers config beside model.pth: complete
    if config_json:
        config = HiggsAudioV2TokenizerConfig.from_json_file(config_json)
    else:
        config = HiggsAudioV2TokenizerConfig(acoustic_model_config={**layouts.RELEASED_TOKENIZER, **dac_sizes(state)})
    with torch.device("meta"):
        model = HiggsAudioV2TokenizerModel(config)
    _load_strict(model, state, str(file))
    return model.eval()


def tokenizer_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original audio tokenizer names -> transformers' `HiggsAudioV2TokenizerModel` names; weight-norm pairs
    (weight_g, weight_v) folded into plain weights."""
    merged: dict[str, torch.Tensor] = {}
    for key, value in original.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            stem = key.removesuffix(".weight_g")
            v = original[f"{stem}.weight_v"]
            value = value * v / v.norm(dim=list(range(1, v.dim())), keepdim=True)
            key = f"{stem}.weight"
        merged[key] = value
    n_enc = count_blocks(merged, r"^encoder\.block\.(\d+)\.block\.")
    n_dec = count_blocks(merged, r"^decoder_2\.model\.(\d+)\.block\.")
    out = {}
    for key, value in merged.items():
        new = _tokenizer_key(key, n_enc, n_dec)
        if new is not None:
            out[new] = value
    return out


def count_blocks(state: dict, pattern: str) -> int:
    """How many numbered blocks (the first group of `pattern`) the keys of `state` name."""
    return len({m[1] for k in state if (m := re.match(pattern, k))})


def _tokenizer_key(key: str, n_enc: int, n_dec: int) -> str | None:
    if key.startswith("fc1."):
        return None  # not used by the forward pass
    if m := re.match(r"^encoder\.block\.(\d+)\.(.*)$", key):
        i, rest = int(m[1]), m[2]
        if edge := _edge("acoustic_encoder", i, n_enc, rest):
            return edge
        if r := re.match(r"^block\.([012])\.block\.([0-3])\.(.*)$", rest):
            return f"acoustic_encoder.block.{i - 1}.res_unit{int(r[1]) + 1}.{INNER[int(r[2])]}.{r[3]}"
        if r := re.match(r"^block\.([34])\.(.*)$", rest):
            return f"acoustic_encoder.block.{i - 1}.{'snake1' if r[1] == '3' else 'conv1'}.{r[2]}"
    if m := re.match(r"^decoder_2\.model\.(\d+)\.(.*)$", key):
        i, rest = int(m[1]), m[2]
        if edge := _edge("acoustic_decoder", i, n_dec, rest):
            return edge
        if r := re.match(r"^block\.([01])\.(.*)$", rest):
            return f"acoustic_decoder.block.{i - 1}.{'snake1' if r[1] == '0' else 'conv_t1'}.{r[2]}"
        if r := re.match(r"^block\.([234])\.block\.([0-3])\.(.*)$", rest):
            return f"acoustic_decoder.block.{i - 1}.res_unit{int(r[1]) - 1}.{INNER[int(r[2])]}.{r[3]}"
    key = re.sub(r"^quantizer\.vq\.layers\.", "quantizer.quantizers.", key).replace("._codebook.", ".codebook.")
    key = re.sub(r"^fc_prior\.", "fc.", key)
    key = re.sub(r"^fc_post([12])\.", r"fc\1.", key)
    if key.startswith(("encoder_semantic.", "decoder_semantic.")):
        key = re.sub(r"\.(conv|conv1|conv2)\.conv\.", r".\1.", key)
    return key


def _edge(prefix: str, i: int, blocks: int, rest: str) -> str | None:
    """A DAC stack's first conv (0) and its closing snake and conv (blocks + 1, blocks + 2); None for a block."""
    edge = {0: "conv1", blocks + 1: "snake1", blocks + 2: "conv2"}
    return f"{prefix}.{edge[i]}.{rest}" if i in edge else None


def dac_sizes(state: dict[str, torch.Tensor]) -> dict:
    """The acoustic model's sizes read off its converted weights (kernel = 2 x stride in DAC's strided convs)."""
    n_enc = count_blocks(state, r"^acoustic_encoder\.block\.(\d+)\.")
    n_dec = count_blocks(state, r"^acoustic_decoder\.block\.(\d+)\.")
    return {
        "encoder_hidden_size": state["acoustic_encoder.conv1.weight"].shape[0],
        "downsampling_ratios": [state[f"acoustic_encoder.block.{i}.conv1.weight"].shape[-1] // 2 for i in range(n_enc)],
        "hidden_size": state["acoustic_encoder.conv2.weight"].shape[0],
        "decoder_hidden_size": state["acoustic_decoder.conv1.weight"].shape[0],
        "upsampling_ratios": [state[f"acoustic_decoder.block.{i}.conv_t1.weight"].shape[-1] // 2 for i in range(n_dec)],
    }


def _check_loads(folder: Path, tokenizer_only: bool = False) -> None:
    """Load the result through the code a run uses; a failure here means nothing is published."""

    try:
        if tokenizer_only:
            load_audio_tokenizer("unused", str(folder))
        else:
            check_pair(load_lm(str(folder)), load_processor(str(folder)), str(folder))
    except HiggsTrainError as e:
        raise ModelError(f"the converted folder does not load ({e}); nothing was written") from e
