"""The token cache: each row rendered and tokenized once, read back memory-mapped; examples assembled from it are
the ones build_example makes; a damaged shard is dropped and its rows tokenized again."""

import numpy as np
import pytest

import higgs_train.data.tokens as tokens_module
from higgs_train.config import build_config
from higgs_train.data.collate import TokenLayout, build_example
from higgs_train.data.manifest import load_manifest
from higgs_train.data.pipeline import build_training_data
from higgs_train.data.tokens import TOKENS_SUBDIR, RowTokens


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = tokens_module.text_pieces
    monkeypatch.setattr(tokens_module, "text_pieces", lambda *a: calls.append(1) or real(*a))
    return calls


def test_rows_are_tokenized_once_and_a_warm_start_tokenizes_none(base, synth_manifest, tiny_model, tmp_path, counted):
    cfg = build_config({"train_manifest": str(synth_manifest), "output_dir": str(tmp_path), "model": str(tiny_model)})
    first = build_training_data(cfg, base.processor, 8, lambda m: None, max_positions=4096)
    assert len(first.train) == 6 and len(counted) == 6
    again = build_training_data(cfg, base.processor, 8, lambda m: None, max_positions=4096)
    assert len(counted) == 6  # nothing rendered again
    layout = TokenLayout.from_processor(base.processor, 8)
    rows = again.train
    for i, sample in enumerate(load_manifest(synth_manifest)):
        clips = [rows.clips[j].codes for j in rows.clip_ids[rows.offsets[i] : rows.offsets[i + 1]]]
        codes = dict(zip(sample.audio_paths, clips, strict=True))
        want, got = build_example(sample, codes, layout), again.train[i]
        assert np.array_equal(want.input_ids, got.input_ids) and np.array_equal(want.labels, got.labels)
        assert np.array_equal(want.audio_frames, got.audio_frames) and again.train.lengths[i] == len(want.input_ids)


def test_the_same_texts_share_tokens_and_an_edited_text_is_tokenized_again(base, voice_manifest, tmp_path, counted):
    layout = TokenLayout.from_processor(base.processor, 8)
    samples = load_manifest(voice_manifest)
    tokens = RowTokens(tmp_path, layout)
    handles = tokens.ensure(samples + samples)  # a row twice: one tokenization
    assert len(counted) == len(samples) and (handles[: len(samples)] == handles[len(samples) :]).all()
    edited = [
        s.__class__(s.source, (*s.turns[:-2], s.turns[-2].__class__("user", "new words"), s.turns[-1]))
        for s in samples[:1]
    ]
    RowTokens(tmp_path, layout).ensure(samples + edited)
    assert len(counted) == len(samples) + 1


def test_a_damaged_shard_is_dropped_and_its_rows_tokenized_again(base, voice_manifest, tmp_path, counted):
    layout = TokenLayout.from_processor(base.processor, 8)
    samples = load_manifest(voice_manifest)
    RowTokens(tmp_path, layout).ensure(samples)
    (shard,) = (tmp_path / TOKENS_SUBDIR).glob("*/shard-*.arrow")
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    said = []
    tokens = RowTokens(tmp_path, layout, said.append)
    assert said == [f"warning: token cache shard {shard} does not read (ArrowInvalid); tokenizing it again"]
    assert (tokens.ensure(samples) >= 0).all() and len(counted) == 2 * len(samples)


def test_another_tokenizer_or_template_is_another_cache(base, voice_manifest, tmp_path):
    import dataclasses

    layout = TokenLayout.from_processor(base.processor, 8)
    other = dataclasses.replace(layout, chat_template=layout.chat_template + " ")
    assert RowTokens(tmp_path, layout).root != RowTokens(tmp_path, other).root
