"""Labels done right: only the target clip, end-of-audio labelled, codebook losses averaged."""

import numpy as np
import pytest
import torch

from higgs_train.data.collate import IGNORE, TokenLayout, build_example, collate, delay_pattern, target_labels
from higgs_train.data.manifest import Sample, Turn
from higgs_train.errors import ManifestError
from higgs_train.train import audio_loss_sum

K = 8


def codes(t, seed):
    return np.random.default_rng(seed).integers(0, 64, size=(K, t)).astype(np.int16)


@pytest.fixture(scope="module")
def layout(base):
    return TokenLayout.from_processor(base.processor, base.model.config.num_codebooks)


def clone_sample():
    turns = (
        Turn("system", text="Speak."),
        Turn("user", text="reference words"),
        Turn("assistant", audio="ref.wav"),
        Turn("user", text="target words"),
        Turn("assistant", audio="tgt.wav"),
    )
    return Sample("m.jsonl:1", turns)


def test_delay_pattern_matches_processor(base):
    c = codes(5, 0)
    processor = base.processor
    stream = np.concatenate([np.full((K, 1), 64), c, np.full((K, 1), 65)], axis=1)
    expected = processor.build_delay_pattern(torch.from_numpy(stream)[None].long())[0].T.numpy()
    np.testing.assert_array_equal(delay_pattern(c, 64, 65), expected)


def test_target_labels_include_eos_exclude_bos_and_padding():
    c = codes(4, 1)
    labels = target_labels(c, 65)  # (T + K + 1, K)
    frames = delay_pattern(c, 64, 65)
    assert labels.shape == frames.shape == (4 + K + 1, K)
    for k in range(K):
        np.testing.assert_array_equal(labels[k + 1 : k + 5, k], c[k])  # the codes
        assert labels[k + 5, k] == frames[k + 5, k] == 65  # the real end-of-audio, labelled
        assert (labels[: k + 1, k] == IGNORE).all()  # stream-bos and the delay's bos padding
        assert (labels[k + 6 :, k] == IGNORE).all()  # the delay's eos padding (generation forces it)


def test_only_target_audio_is_labelled(layout):
    clips = {"ref.wav": codes(6, 2), "tgt.wav": codes(4, 3)}
    ex = build_example(clone_sample(), clips, layout)
    audio_positions = np.isin(ex.input_ids, [layout.audio_token_id, layout.delay_token_id])
    assert audio_positions.sum() == len(ex.audio_frames) == (6 + K + 1) + (4 + K + 1)
    labelled_rows = np.where((ex.labels != IGNORE).any(1))[0]
    target_rows = np.where(audio_positions)[0][-(4 + K + 1) :]
    assert set(labelled_rows) <= set(target_rows)  # nothing in the reference clip or the text
    per_codebook = (ex.labels != IGNORE).sum(0)
    assert (per_codebook == 4 + 1).all()  # T codes + one end-of-audio each: equal counts, so means average evenly
    assert ((ex.labels == layout.stream_eos).sum(0) == 1).all()


def test_label_audio_all_labels_every_assistant_clip_and_its_markup(base, layout):
    from dataclasses import replace

    clips = {"ref.wav": codes(6, 2), "tgt.wav": codes(4, 3)}
    every = replace(layout, label_all_audio=True)
    last, both = build_example(clone_sample(), clips, layout), build_example(clone_sample(), clips, every)
    assert ((last.labels != IGNORE).sum(0) == 4 + 1).all()
    assert ((both.labels != IGNORE).sum(0) == (6 + 1) + (4 + 1)).all()  # each clip: its codes and its end
    decode = base.processor.tokenizer.decode
    assert decode(last.input_ids[last.text_labels != IGNORE]) == "<|audio_out_bos|><|audio_eos|><|eot_id|>"
    assert decode(both.input_ids[both.text_labels != IGNORE]) == "<|audio_out_bos|><|audio_eos|><|eot_id|>" * 2
    assert np.array_equal(last.input_ids, both.input_ids) and np.array_equal(last.audio_frames, both.audio_frames)


def test_reserved_token_in_text_is_a_manifest_error(layout):
    sample = Sample("m.jsonl:7", (Turn("user", text="say <|AUDIO_OUT|>"), Turn("assistant", audio="a.wav")))
    with pytest.raises(ManifestError, match=r"m.jsonl:7: the text contains the reserved token <\|AUDIO_OUT\|>"):
        build_example(sample, {"a.wav": codes(3, 0)}, layout)


def test_loss_is_codebook_average_of_native_loss(base, layout):
    """Our loss / labelled codes == the native forward's summed codebook loss / K, on the same labels."""
    clips = {"ref.wav": codes(6, 4), "tgt.wav": codes(5, 5)}
    batch = collate([build_example(clone_sample(), clips, layout)] * 2, layout)
    model = base.model.eval()
    with torch.no_grad():
        ours = audio_loss_sum(model, batch, model.config.codebook_size) / (batch["labels"] != IGNORE).sum()
        positions = torch.isin(batch["input_ids"], torch.tensor([layout.audio_token_id, layout.delay_token_id]))
        audio_labels = torch.full_like(batch["audio_input_ids"], IGNORE)
        audio_labels[batch["audio_input_ids_mask"]] = batch["labels"][positions]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        native = model(**inputs, audio_labels=audio_labels).loss
    torch.testing.assert_close(ours, native / K)


def test_collate_pads_right_with_masks(layout):
    a = build_example(clone_sample(), {"ref.wav": codes(6, 6), "tgt.wav": codes(4, 7)}, layout)
    b = build_example(clone_sample(), {"ref.wav": codes(2, 8), "tgt.wav": codes(2, 9)}, layout)
    batch = collate([a, b], layout)
    assert batch["input_ids"].shape[0] == 2
    assert batch["attention_mask"][1].sum() == len(b.input_ids)
    assert batch["audio_input_ids_mask"][1].sum() == len(b.audio_frames)
    assert (batch["labels"][1, len(b.input_ids) :] == IGNORE).all()


def _rows(layout):
    """Three rows of different lengths, a cloning row among them."""
    plain = Sample(
        "m.jsonl:2", (Turn("system", text="Speak."), Turn("user", text="hello"), Turn("assistant", audio="a"))
    )
    return [
        build_example(clone_sample(), {"ref.wav": codes(6, 10), "tgt.wav": codes(9, 11)}, layout),
        build_example(plain, {"a": codes(3, 12)}, layout),
        build_example(clone_sample(), {"ref.wav": codes(4, 13), "tgt.wav": codes(5, 14)}, layout),
    ]


def _kept_logits(model, batch):
    """The audio head's logits at every position whose next frame is labelled, in row order (as the loss uses)."""
    keep = torch.zeros(batch["labels"].shape[:2], dtype=torch.bool)
    keep[:, :-1] = (batch["labels"][:, 1:] != IGNORE).any(-1)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "text_labels")}
    with torch.no_grad():
        return model(**inputs, use_cache=False, logits_to_keep=keep).logits


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex_attention"])
def test_packed_rows_never_see_each_other(tiny_model, layout, attention):
    """The leak canary: packed rows give each row's padded logits (within 1e-5) and the same summed loss; the same
    packed batch with an all-ones attention mask (rows attending across boundaries) differs by more than 1e-2."""
    from higgs_train.data.collate import pack, positions
    from higgs_train.model import load_lm

    model = load_lm(str(tiny_model), attn_implementation=attention).eval()
    rows = _rows(layout)
    padded, packed = collate(rows, layout), pack(rows, layout)
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, sum(len(r.input_ids) for r in rows))
    assert positions(packed) == (packed["input_ids"].numel(),) * 2
    try:
        want, got = _kept_logits(model, padded), _kept_logits(model, packed)
    except Exception as e:  # flex_attention needs a compiler toolchain on the CPU
        if attention != "flex_attention":
            raise
        pytest.skip(f"flex_attention does not run on this CPU ({type(e).__name__}: {str(e)[:100]})")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with torch.no_grad():
        size = model.config.codebook_size
        torch.testing.assert_close(audio_loss_sum(model, packed, size), audio_loss_sum(model, padded, size))
    leaky = {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}
    assert (_kept_logits(model, leaky) - want).abs().max() > 1e-2


def test_pack_refuses_a_row_whose_first_position_is_labelled(layout):
    from higgs_train.data.collate import pack

    row = _rows(layout)[1]
    row.labels[0] = 3
    with pytest.raises(ValueError, match="cross a row boundary"):
        pack([row], layout)
