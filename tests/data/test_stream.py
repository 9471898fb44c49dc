"""--streaming (data/stream.py): parquet shards read as a stream, encoded as they arrive, split between processes,
drawn through a seeded shuffle buffer, and resumed exactly from a checkpoint's state."""

import numpy as np
import pytest
import torch

from higgs_train.checkpoint.state import read_stream, stream_bytes
from higgs_train.config import build_config
from higgs_train.data.collate import TokenLayout
from higgs_train.data.stream import Stream
from higgs_train.errors import ConfigError, ManifestError
from tests.conftest import ROWS_PER_SHARD, SHARDS, quiet


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s whenever a parquet stream's iterator closes (a guard against a crash of arrow's threads
    at interpreter exit, apache/arrow#45214): a real run pays it once a pass; the tests here close dozens."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def stream_cfg(stream_corpus, out, model, **kw):
    flags = {"train_manifest": str(stream_corpus), "output_dir": str(out), "model": str(model), "streaming": True}
    return build_config({"max_steps": 10, "shuffle_buffer": 4, **flags, **kw})


def make_stream(cfg, base, rank=0, world=1, say=quiet):
    layout = TokenLayout.from_processor(base.processor, base.audio_tokenizer.config.num_quantizers)
    return Stream(cfg, base.processor, layout, rank, world, say)


def row_numbers(examples, base) -> list[int]:
    out = []
    for e in examples:
        text = base.processor.tokenizer.decode(e.input_ids[e.input_ids < base.processor.tokenizer.vocab_size])
        out.append(int(text.split("Row ")[1].split(".")[0]))
    return out


def test_a_pass_covers_every_row_once_then_the_next_epoch_reshuffles(stream_corpus, tiny_model, base, tmp_path):
    stream = make_stream(stream_cfg(stream_corpus, tmp_path, tiny_model), base)
    first = row_numbers(stream.take(SHARDS * ROWS_PER_SHARD), base)
    assert sorted(first) == list(range(SHARDS * ROWS_PER_SHARD))
    assert first != sorted(first)  # shuffled
    second = row_numbers(stream.take(SHARDS * ROWS_PER_SHARD), base)
    assert stream.epoch >= 1 and second != first
    e = stream.take(1)[0]
    assert e.labels.shape == (len(e.input_ids), base.audio_tokenizer.config.num_quantizers)


def test_two_processes_read_disjoint_shards_covering_the_corpus(stream_corpus, tiny_model, base, tmp_path):
    cfg = stream_cfg(stream_corpus, tmp_path, tiny_model)
    half = SHARDS * ROWS_PER_SHARD // 2
    seen = [set(row_numbers(make_stream(cfg, base, rank, 2).take(half), base)) for rank in (0, 1)]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(SHARDS * ROWS_PER_SHARD))


def test_state_dict_resumes_exactly_through_a_checkpoint_file(stream_corpus, tiny_model, base, tmp_path):
    """Drawn 7, saved (through the checkpoint's file format), a new process loads it: the next 17 rows, across an
    epoch boundary, are those an uninterrupted stream draws, and their tensors are bitwise the same."""
    cfg = stream_cfg(stream_corpus, tmp_path, tiny_model)
    straight = make_stream(cfg, base)
    straight.take(7)
    expected = straight.take(17)

    first = make_stream(cfg, base)
    first.take(7)
    (tmp_path / "state.safetensors").write_bytes(stream_bytes(first.state_dict()))
    resumed = make_stream(cfg, base)
    resumed.load_state_dict(*read_stream(tmp_path / "state.safetensors"))
    got = resumed.take(17)
    assert row_numbers(got, base) == row_numbers(expected, base)
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.audio_frames, b.audio_frames)
        assert np.array_equal(a.labels, b.labels)


def test_mark_and_rewind_replay_the_same_rows(stream_corpus, tiny_model, base, tmp_path):
    stream = make_stream(stream_cfg(stream_corpus, tmp_path, tiny_model), base)
    stream.take(3)
    mark = stream.mark()
    once = row_numbers(stream.take(5), base)
    stream.rewind(mark)
    saved = stream.state_dict()  # saved right after a rewind (as a stop-save is): before the reader yields again
    assert row_numbers(stream.take(5), base) == once
    again = make_stream(stream_cfg(stream_corpus, tmp_path, tiny_model), base)
    again.load_state_dict(*saved)
    assert row_numbers(again.take(5), base) == once


def test_another_number_of_processes_is_refused(stream_corpus, tiny_model, base, tmp_path):
    cfg = stream_cfg(stream_corpus, tmp_path, tiny_model)
    one = make_stream(cfg, base)
    one.take(2)
    with pytest.raises(ConfigError, match="split among 1 processes, this run has 2"):
        make_stream(cfg, base, 0, 2).load_state_dict(*one.state_dict())


def test_bad_rows_are_named_or_skipped_as_they_arrive(stream_corpus, tiny_model, base, tmp_path):
    """A shard with an undecodable clip and an empty text: --on_bad_sample error stops naming the row and why; skip
    drops both, says so, and trains on the rest."""
    import datasets

    bad = tmp_path / "bad"
    bad.mkdir()
    good = next((stream_corpus / "data").glob("*.parquet"))
    (bad / good.name).write_bytes(good.read_bytes())
    rows = {"audio": [{"bytes": b"not audio at all", "path": "x.wav"}, {"bytes": b"RIFF", "path": "y.wav"}]}
    rows["text"] = ["Fine text.", "   "]
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(bad / "train-bad.parquet"))

    with pytest.raises(ManifestError, match=r"train-bad|row \d+: .*(cannot decode|empty)") as e:
        make_stream(stream_cfg(bad, tmp_path, tiny_model, shuffle_buffer=10), base).take(1)
    assert "--on_bad_sample skip" in str(e.value)

    said = []
    cfg = stream_cfg(bad, tmp_path, tiny_model, on_bad_sample="skip", shuffle_buffer=10)
    stream = make_stream(cfg, base, say=said.append)
    assert len(stream.take(ROWS_PER_SHARD)) == ROWS_PER_SHARD
    assert stream.bad == 2 and sum("warning: skipping" in s for s in said) == 2


def test_streaming_settings_are_checked_before_anything_runs(stream_corpus, tiny_model, tmp_path):
    with pytest.raises(ConfigError) as e:
        stream_cfg(stream_corpus, tmp_path, tiny_model, max_steps=None, eval_fraction=0.2, batch_size="auto")
    text = str(e.value)
    assert "--streaming needs --max_steps" in text and "--eval_fraction" in text and "numeric --batch_size" in text
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("{}\n")
    with pytest.raises(ManifestError, match="--streaming reads hf://OWNER/NAME"):
        Stream(stream_cfg(manifest, tmp_path, tiny_model), None, None, 0, 1, quiet)


def test_buffer_tensors_round_trip_an_empty_buffer(stream_corpus, tiny_model, base, tmp_path):
    stream = make_stream(stream_cfg(stream_corpus, tmp_path, tiny_model, shuffle_buffer=1), base)
    tensors, meta = stream.state_dict()
    assert all(isinstance(t, torch.Tensor) for t in tensors.values()) and meta["read"] == 0
    stream.load_state_dict(*read_stream_bytes(tmp_path, stream.state_dict()))
    assert len(stream.take(2)) == 2


def read_stream_bytes(tmp_path, state):
    (tmp_path / "s.safetensors").write_bytes(stream_bytes(state))
    return read_stream(tmp_path / "s.safetensors")


def test_a_streamed_run_stopped_mid_window_resumes_bitwise(
    stream_corpus, synth_manifest, tiny_model, tmp_path, monkeypatch
):
    """End to end: --streaming with an --eval_manifest; a real SIGTERM inside step 3's window, then the same command
    again: the adapter, optimizer and stream state at step 8 are bitwise those of an uninterrupted run."""
    from safetensors.torch import load_file

    from higgs_train.checkpoint.verify import verify_checkpoint
    from higgs_train.errors import Interrupted
    from higgs_train.faults import ENV
    from higgs_train.train import train

    kw = {"max_steps": 8, "save_steps": 4, "lr": 5e-3, "batch_size": 2, "grad_accum": 2, "warmup_steps": 2}
    kw["eval_manifest"] = str(synth_manifest)
    straight = train(stream_cfg(stream_corpus, tmp_path / "a", tiny_model, **kw), log=quiet, progress_bar=False)
    assert straight.progress.epoch >= 2  # 32 rows drawn from 12: the passes turn over inside the run

    monkeypatch.setenv(ENV, "micro_batch@5:sigterm")
    cfg_b = stream_cfg(stream_corpus, tmp_path / "b", tiny_model, **kw)
    with pytest.raises(Interrupted, match="stopped by signal at step 2"):
        train(cfg_b, log=quiet, progress_bar=False)
    assert verify_checkpoint(tmp_path / "b" / "checkpoint-2").ok
    monkeypatch.delenv(ENV)
    said = []
    resumed = train(cfg_b, log=said.append, progress_bar=False)
    assert resumed.resumed_from.name == "checkpoint-2" and resumed.progress.step == 8
    assert any("streaming" in line for line in said)

    a, b = tmp_path / "a" / "checkpoint-8", tmp_path / "b" / "checkpoint-8"
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    (ta, ma), (tb, mb) = read_stream(a / "stream_state_0.safetensors"), read_stream(b / "stream_state_0.safetensors")
    assert ma == mb and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert verify_checkpoint(b).ok and (tmp_path / "b" / "metrics.jsonl").read_text().count("eval_loss") >= 2


def test_a_damaged_stream_state_fails_verification(stream_corpus, tiny_model, tmp_path):
    from higgs_train.checkpoint.verify import verify_checkpoint
    from higgs_train.train import train

    train(
        stream_cfg(stream_corpus, tmp_path / "run", tiny_model, max_steps=2, save_steps=2),
        log=quiet,
        progress_bar=False,
    )
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert verify_checkpoint(checkpoint).ok
    state = checkpoint / "stream_state_0.safetensors"
    state.write_bytes(state.read_bytes()[:-7])
    result = verify_checkpoint(checkpoint)
    assert not result.ok and any("stream_state_0" in p for p in result.problems)


def test_a_changed_shard_is_never_resumed_silently(stream_corpus, tiny_model, base, tmp_path):
    """A shard rewritten since the checkpoint: its position counts other rows, so the resume stops (error) or
    starts a fresh pass (--on_data_change restart_epoch), keeping nothing of the old position."""
    import shutil

    from higgs_train.data.stream import resume_stream

    corpus = tmp_path / "corpus"
    shutil.copytree(stream_corpus, corpus)
    first = make_stream(stream_cfg(corpus, tmp_path, tiny_model), base)
    first.take(3)
    saved = first.state_dict()
    shard = sorted((corpus / "data").glob("*.parquet"))[0]
    shard.write_bytes(sorted((stream_corpus / "data").glob("*.parquet"))[1].read_bytes())  # other rows, same name
    again = make_stream(stream_cfg(corpus, tmp_path, tiny_model), base)
    with pytest.raises(ConfigError, match="shards changed since"):
        resume_stream(again, saved, "error", quiet)
    said = []
    resume_stream(again, saved, "restart_epoch", said.append)
    assert again.epoch == 1 and not again.buffer and "a fresh pass, epoch 1" in said[0]
