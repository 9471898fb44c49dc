"""Boson's original release layout: detected before anything loads, converted offline to logits bitwise equal to
the native model, and the converted folder trains, resumes, generates and merges."""

from __future__ import annotations

import json
import os

import pytest
import torch

from higgs_train.cli import app
from higgs_train.convert import lm_config, lm_state_dict
from higgs_train.errors import ModelError
from higgs_train.merge import _probe
from higgs_train.model import load_audio_tokenizer, load_lm
from higgs_train.tiny import write_original_layout
from tests.conftest import REPO, runner, train_args

RELEASED = REPO.parent / "shared" / "data" / "released-original"
needs_release = pytest.mark.skipif(
    not (RELEASED / "config.json").is_file(),
    reason=f"the original release's config and tensor names not found at {RELEASED} (../shared is only present in "
    "the project checkout and CI)",
)


@pytest.fixture(scope="module")
def original(tiny_model, tmp_path_factory):
    return write_original_layout(tiny_model, tmp_path_factory.mktemp("boson") / "higgs-original")


@pytest.fixture(scope="module")
def converted(original, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "higgs-hf"
    config = tiny_model / "audio_tokenizer" / "config.json"  # the original tokenizer config is incomplete
    result = runner.invoke(app, ["convert", str(original), str(out), "--tokenizer_config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"converted {original} -> {out}; train with --model {out}" in result.output
    return out


def test_converted_logits_are_bitwise_equal_to_the_native_model(tiny_model, converted):
    native, ours = load_lm(str(tiny_model), use_text_head=True), load_lm(str(converted), use_text_head=True)
    # convert writes transformers' bos and length (the converter's, for every release): the rest is the tiny's own
    written = {"_name_or_path": "", "bos_token_id": 1, "max_position_embeddings": 2048}
    assert native.config.to_diff_dict() | written == ours.config.to_diff_dict() | written
    assert ours.config.max_position_embeddings == 2048 and ours.config.tie_word_embeddings is False
    probe = _probe(native.config)
    with torch.no_grad():
        assert torch.equal(native(**probe).logits, ours(**probe).logits)
    assert torch.equal(native.text_lm_head.weight, ours.text_lm_head.weight)


def test_converted_audio_tokenizer_gives_the_same_codes(tiny_model, converted):
    native = load_audio_tokenizer(str(tiny_model))
    ours = load_audio_tokenizer(str(converted))
    wave = torch.randn(1, 1, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        assert torch.equal(native.encode(wave).audio_codes, ours.encode(wave).audio_codes)
    for (name, a), (_, b) in zip(native.state_dict().items(), ours.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # weight norm folded back: equal up to rounding


def test_original_layout_is_detected_before_anything_loads(synth_manifest, tiny_model, original, tmp_path):
    result = runner.invoke(app, train_args(synth_manifest, tmp_path / "run", original, "--max_steps", "1"))
    assert result.exit_code == 2
    assert (
        f"error: --model {original} is in Boson's original layout, which transformers' Higgs Audio v2 cannot load; "
        f"convert it once with `higgs-train convert {original} higgs-original-hf` and pass --model higgs-original-hf"
    ) in result.output
    tok = original / "audio_tokenizer"
    args = train_args(synth_manifest, tmp_path / "run", tiny_model, "--audio_tokenizer", str(tok), "--max_steps", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and f"--audio_tokenizer {tok} is in Boson's original layout" in result.output
    assert not (tmp_path / "run" / "cache").exists()  # nothing was encoded


def test_converted_folder_trains_resumes_generates_and_merges(synth_manifest, converted, tmp_path):
    run = tmp_path / "run"
    args = train_args(synth_manifest, run, converted, "--save_steps", "1")
    assert runner.invoke(app, [*args, "--max_steps", "2"]).exit_code == 0
    again = runner.invoke(app, [*args, "--max_steps", "3"])
    assert again.exit_code == 0 and f"resumed from {run / 'checkpoint-2'} at step 2" in again.output
    wav = tmp_path / "out.wav"
    gen = ["generate", "--model", str(converted), "--adapter", str(run / "checkpoint-3"), "--text", "hello"]
    result = runner.invoke(app, [*gen, "--out", str(wav), "--max_frames", "20"])
    assert result.exit_code == 0, result.output
    assert wav.stat().st_size > 44
    merged = tmp_path / "merged"
    result = runner.invoke(
        app, ["merge", "--model", str(converted), "--adapter", str(run / "checkpoint-3"), "--output", str(merged)]
    )
    assert result.exit_code == 0, result.output


def test_convert_refuses_what_it_cannot_convert(tiny_model, original, tmp_path):
    result = runner.invoke(app, ["convert", str(tiny_model), str(tmp_path / "x")])
    assert result.exit_code == 2 and "is not in Boson's original layout" in result.output
    assert "if it loads with --model already, it needs no conversion" in result.output
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["convert", str(original), str(tmp_path / "taken")])
    assert result.exit_code == 2 and "already exists; choose a new folder" in result.output


def test_a_tokenizer_pickle_payload_is_never_run(original, tmp_path):
    import shutil

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    tok = tmp_path / "tok"
    shutil.copytree(original / "audio_tokenizer", tok)
    torch.save({"encoder.block.0.weight": Payload()}, tok / "model.pth")
    result = runner.invoke(app, ["convert", str(tok), str(tmp_path / "out")])
    assert result.exit_code == 2 and "does not load as plain tensors (UnpicklingError)" in result.output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def _released() -> dict:
    return json.loads((RELEASED / "config.json").read_text())


@needs_release
def test_the_released_config_converts_to_what_transformers_converter_writes():
    from transformers import HiggsAudioV2Config, LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    original = _released()
    ours = lm_config(original)
    assert ours.to_dict() == HiggsAudioV2Config(codebook_size=1026).to_dict()
    text = LlamaConfig(**{k: v for k, v in original["text_config"].items() if k != "model_type"})
    released, _ = ROPE_INIT_FUNCTIONS["llama3"](text, "cpu")
    converted, _ = ROPE_INIT_FUNCTIONS["llama3"](ours, "cpu")
    assert torch.equal(released, converted)  # the rope restated for 2048 positions: every frequency bit for bit


def _released_shape(name: str, c) -> tuple[int, ...]:
    """A released tensor's shape, from its name and the converted config (config.json states them)."""
    codes, heads, kv = c.num_codebooks * c.codebook_size, c.num_attention_heads, c.num_key_value_heads
    rules = {
        "audio_codebook_embeddings.weight": (codes, c.hidden_size),
        "audio_decoder_proj.audio_lm_head.weight": (codes, c.hidden_size),
        "audio_decoder_proj.text_lm_head.weight": (c.vocab_size, c.hidden_size),
        "embed_tokens.weight": (c.vocab_size, c.hidden_size),
        "q_proj.weight": (heads * c.head_dim, c.hidden_size),
        "k_proj.weight": (kv * c.head_dim, c.hidden_size),
        "v_proj.weight": (kv * c.head_dim, c.hidden_size),
        "o_proj.weight": (c.hidden_size, heads * c.head_dim),
        "gate_proj.weight": (c.intermediate_size, c.hidden_size),
        "up_proj.weight": (c.intermediate_size, c.hidden_size),
        "down_proj.weight": (c.hidden_size, c.intermediate_size),
        "norm.weight": (c.hidden_size,),
        "layernorm.weight": (c.hidden_size,),
    }
    return next(
        shape for suffix, shape in rules.items() if name == suffix or name.endswith(("." + suffix, "_" + suffix))
    )


@needs_release
def test_the_397_released_tensors_convert_and_load_strictly_on_the_meta_device():
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_train.convert import _load_strict

    config = lm_config(_released())
    names = (RELEASED / "tensor_names.txt").read_text().split()
    assert len(names) == 397
    state = lm_state_dict({n: torch.empty(_released_shape(n, config), device="meta") for n in names})
    with torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(config, use_text_head=True)
    _load_strict(model, state, "released")  # every name and shape, none missing, none extra
    assert set(state) == set(model.state_dict())


@needs_release
@pytest.mark.parametrize(
    "field, value",
    [("audio_embed_avg", True), ("use_delay_pattern", False), ("use_audio_out_self_attention", 1)],
)
def test_fields_the_native_model_cannot_express_are_refused_by_name(field, value):
    with pytest.raises(ModelError, match=f"this original config has {field}: {json.dumps(value)} "):
        lm_config({**_released(), field: value})


def test_the_converted_generation_config_is_transformers_converters(converted, tiny_model):
    saved = json.loads((converted / "generation_config.json").read_text())
    eot = json.loads((tiny_model / "tokenizer.json").read_text())["added_tokens"]
    eot_id = next(t["id"] for t in eot if t["content"] == "<|eot_id|>")
    assert saved["ras_win_len"] == 7 and saved["ras_win_max_num_repeat"] == 2
    assert (saved["bos_token_id"], saved["eos_token_id"]) == (1, eot_id)
    assert load_lm(str(converted)).generation_config.ras_win_len == 7  # what generate, samples and scores sample with


@pytest.mark.slow
def test_a_killed_convert_leaves_nothing_after_the_next_run(original, tiny_model, tmp_path):
    import subprocess
    import sys

    from higgs_train.faults import ENV

    out = tmp_path / "hf"
    config = tiny_model / "audio_tokenizer" / "config.json"
    args = ["convert", str(original), str(out), "--tokenizer_config", str(config)]
    env = {**os.environ, ENV: "before_publish"}  # a real SIGKILL once everything is written, before the rename
    killed = subprocess.run([sys.executable, "-m", "higgs_train", *args], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9
    (leftover,) = tmp_path.glob(".hf.tmp-*")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"removed {leftover.name}: left by an interrupted convert" in result.output
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert load_lm(str(out)) is not None
