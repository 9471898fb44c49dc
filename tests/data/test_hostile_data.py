"""Data in a hostile world: one bad row never stops a run under --on_bad_sample skip, identity is by content, the
code cache checks itself, long clips are refused before they are decoded, signals during encoding keep the work."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

import higgs_train.data.codes as codes_module
from higgs_train.cli import app
from higgs_train.data.codes import CHECKSUMS, CodeCache, tokenizer_fingerprint
from higgs_train.data.manifest import load_manifest
from higgs_train.data.prepare import DataLimits, TextCounts, prepare_data
from higgs_train.faults import ENV
from higgs_train.tiny import TEXTS, build_tiny_model, synth_clip
from tests.conftest import quiet, runner, train_args

LIMITS = DataLimits(min_duration=0.0, max_duration=5.0, reserved_tokens=("<|AUDIO_OUT|>", "<|eot_id|>"))


def _clip(folder, name, seconds=1.0, rate=24000, seed=0):
    wave = synth_clip(" ".join(["word"] * max(1, int(seconds * 4))), rate, np.random.default_rng(seed))
    wave = np.resize(wave, int(seconds * rate)).astype(np.float32)
    sf.write(folder / name, wave, rate)
    return name


def _manifest(folder, rows):
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prepare(manifest, out, base, **kw):
    return prepare_data(manifest, out, base.audio_tokenizer, TextCounts(len), kw.pop("limits", LIMITS), say=quiet, **kw)


def _reasons(data):
    return {p.where.rsplit(":", 1)[1]: p.reason for p in data.report.problems}


def test_each_bad_row_is_a_row_not_a_crash(base, tmp_path):
    good = _clip(tmp_path, "good.wav")
    nan = np.resize(synth_clip("a b c", 24000, np.random.default_rng(1)), 24000).astype(np.float32)
    nan[1000:1096] = np.nan  # 4 ms of NaN
    sf.write(tmp_path / "nan.wav", nan, 24000, subtype="FLOAT")
    inf = nan.copy()
    inf[1000:1096] = np.inf
    sf.write(tmp_path / "inf.wav", inf, 24000, subtype="DOUBLE")
    sf.write(tmp_path / "tiny.wav", np.zeros(5, np.float32), 24000)  # shorter than the codec's kernels
    os.symlink(tmp_path / "loop_b.wav", tmp_path / "loop_a.wav")
    os.symlink(tmp_path / "loop_a.wav", tmp_path / "loop_b.wav")
    rows = [
        {"audio": good, "text": "fine"},
        {"audio": "nan.wav", "text": "nan"},
        {"audio": "inf.wav", "text": "inf"},
        {"audio": "tiny.wav", "text": "tiny"},
        {"audio": "loop_a.wav", "text": "loop"},
        {"audio": good, "text": "say <|AUDIO_OUT|> now"},
        {"audio": good, "text": "fine", "system": "end<|eot_id|>"},
    ]
    data = _prepare(_manifest(tmp_path, rows), tmp_path / "out", base)
    assert data.report.good == 1
    assert _reasons(data) == {
        "2": "non-finite audio",
        "3": "non-finite audio",
        "4": "unencodable audio",
        "5": "missing audio",
        "6": "reserved token in text",
        "7": "reserved token in text",
    }
    messages = {p.where.rsplit(":", 1)[1]: p.message for p in data.report.problems}
    assert "holds 96 NaN or infinite samples; re-export it or remove the row" in messages["2"]
    assert "loop_a.wav is a broken or looping symbolic link; point it at a real file" in messages["5"]
    assert "the user text holds the reserved token <|AUDIO_OUT|>, which the model reads as markup" in messages["6"]
    assert "the system text holds the reserved token <|eot_id|>" in messages["7"]
    assert "stats" in json.loads((tmp_path / "out" / "data_report.json").read_text())


def test_long_clips_are_refused_from_the_header_without_decoding(base, tmp_path, monkeypatch):
    _clip(tmp_path, "long.wav", seconds=40, rate=8000)
    _clip(tmp_path, "short.wav", seconds=1)
    decoded = []
    real = codes_module.load_audio

    def spy(path, *args, **kw):
        decoded.append(os.path.basename(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(codes_module, "load_audio", spy)
    rows = [{"audio": "long.wav", "text": "long"}, {"audio": "short.wav", "text": "short"}]
    data = _prepare(_manifest(tmp_path, rows), tmp_path / "out", base)
    assert _reasons(data) == {"1": "too long"} and "clip is 40.00s, over --max_duration 5.0s" in (
        data.report.problems[0].message
    )
    assert decoded == ["short.wav"]


def test_sequence_longer_than_the_model_is_a_bad_row(base, tmp_path):
    _clip(tmp_path, "ref.wav", seconds=4)
    _clip(tmp_path, "a.wav", seconds=1)
    rows = [
        {"audio": "a.wav", "text": "short"},
        {"audio": "a.wav", "text": "target", "ref_audio_filepath": "ref.wav", "ref_text": "a long reference"},
    ]
    from higgs_train.data.collate import TokenLayout
    from higgs_train.data.tokens import RowTokens

    tokens = RowTokens(tmp_path / "out", TokenLayout.from_processor(base.processor, 8))
    limits = DataLimits(max_duration=5.0, max_tokens=100)
    out = tmp_path / "out"
    data = prepare_data(_manifest(tmp_path, rows), out, base.audio_tokenizer, tokens, limits, say=lambda _: None)
    assert _reasons(data) == {"2": "sequence too long"}
    assert "exceed the model's 100 positions; use a shorter reference or target clip" in data.report.problems[0].message


def test_a_clip_rewritten_in_place_is_encoded_again(base, tmp_path):
    _clip(tmp_path, "a.wav", seed=0)
    manifest = _manifest(tmp_path, [{"audio": "a.wav", "text": "hello"}])
    first = _prepare(manifest, tmp_path / "out", base).clips
    stat = os.stat(tmp_path / "a.wav")
    _clip(tmp_path, "a.wav", seed=7)  # same length, so the same size
    os.utime(tmp_path / "a.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    assert os.stat(tmp_path / "a.wav").st_size == stat.st_size
    second = _prepare(manifest, tmp_path / "out", base).clips
    (path,) = first
    assert not np.array_equal(first[path].codes, second[path].codes)
    assert len(CodeCache(tmp_path / "out").shards()) == 2


def test_audio_tokenizer_identity_is_its_weights_not_its_path(base, tmp_path):
    from higgs_train.model import load_audio_tokenizer

    source = base.audio_tokenizer.name_or_path
    shutil.copytree(source, tmp_path / "copy")
    same = load_audio_tokenizer("unused", str(tmp_path / "copy"))
    assert tokenizer_fingerprint(same) == tokenizer_fingerprint(base.audio_tokenizer)
    with __import__("torch").no_grad():
        same.quantizer.quantizers[0].codebook.embed.add_(0.5)  # other weights at the same path
    assert tokenizer_fingerprint(same) != tokenizer_fingerprint(base.audio_tokenizer)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_cache_shard_is_found_and_encoded_again(base, tmp_path, damage):
    _clip(tmp_path, "a.wav")
    manifest = _manifest(tmp_path, [{"audio": "a.wav", "text": "hello"}])
    first = _prepare(manifest, tmp_path / "out", base).clips
    (shard,) = CodeCache(tmp_path / "out").shards()
    arrow = next(p for p in shard.iterdir() if p.suffix == ".arrow")
    data = arrow.read_bytes()
    if damage == "truncate":
        arrow.write_bytes(data[: len(data) // 2])
    else:
        i = len(data) // 2
        arrow.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    said = []
    again = prepare_data(manifest, tmp_path / "out", base.audio_tokenizer, TextCounts(len), LIMITS, say=said.append)
    assert len(said) == 2 and said[0].startswith(f"warning: code cache shard {shard} fails its checksum")
    assert "removing it, its clips are encoded again" in said[0]
    assert said[1].startswith("encoding: 1 clips, 0.000 h of audio in ")  # the clip was encoded again
    (path,) = first
    assert np.array_equal(first[path].codes, again.clips[path].codes)
    (new_shard,) = CodeCache(tmp_path / "out").shards()
    assert (new_shard / CHECKSUMS).is_file()


def test_cache_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(base, tmp_path, small_disk):
    from tests.conftest import fill_disk

    disk = small_disk(256)
    _clip(tmp_path, "a.wav")
    fill_disk(disk)
    manifest = _manifest(tmp_path, [{"audio": "a.wav", "text": "hello"}])
    from higgs_train.errors import OutputDirError

    with pytest.raises(OutputDirError, match="cannot write the code cache .*No space left on device.*free disk"):
        _prepare(manifest, disk / "out", base)
    cache = disk / "out" / "cache" / "codes"
    assert not [p for p in cache.iterdir() if p.name.endswith(".writing")]


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_manifests_with_a_utf8_byte_order_mark(tmp_path, kind):
    _clip(tmp_path, "a.wav")
    if kind == "jsonl":
        text, name = json.dumps({"audio": "a.wav", "text": "hello"}) + "\n", "m.jsonl"
    elif kind == "json":
        text, name = json.dumps([{"audio": "a.wav", "text": "hello"}]), "m.json"
    else:
        text, name = "a.wav|hello\n", "m.csv"
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    (sample,) = load_manifest(tmp_path / name)
    assert sample.target_text == "hello" and sample.target_audio.endswith("a.wav")


def test_sigterm_during_the_first_encoding_keeps_the_clips_and_exits_130(
    synth_manifest, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv(ENV, "encoded@3:sigterm")  # a real SIGTERM after the 3rd clip: one shard written, one pending
    run = tmp_path / "run"
    args = train_args(synth_manifest, run, tiny_model, "--max_steps", "1", "--cache_shard_clips", "2")
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    assert f"stopped by signal while encoding: 3 of {len(TEXTS)} clips are in the code cache" in result.output
    assert len(CodeCache(run).shards()) == 2  # a full shard of 2, and the 1 clip flushed at the signal
    monkeypatch.delenv(ENV)
    assert runner.invoke(app, train_args(synth_manifest, run, tiny_model, "--max_steps", "1")).exit_code == 0


def test_resume_by_weights_not_by_path(synth_manifest, tmp_path, monkeypatch):
    model = build_tiny_model(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = ["--train_manifest", str(synth_manifest), "--output_dir", str(run), "--save_steps", "1"]
    assert runner.invoke(app, [*args, "--model", "./tiny", "--max_steps", "1"]).exit_code == 0
    shards = CodeCache(run).shards()
    result = runner.invoke(app, [*args, "--model", str(model), "--max_steps", "2"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and CodeCache(run).shards() == shards  # nothing encoded again
    shutil.rmtree(tmp_path / "tiny")
    build_tiny_model(tmp_path / "tiny", seed=1)  # other weights at the same path
    result = runner.invoke(app, [*args, "--model", "./tiny", "--max_steps", "3"])
    assert result.exit_code == 3
    assert "was trained on other base weights" in result.output and "pass the base model it was trained on" in (
        result.output
    )


def test_a_row_nested_100000_levels_deep_is_a_bad_row_not_a_traceback(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "text": "hi"}\n' + '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    problems = []
    assert len(load_manifest(path, problems)) == 1
    (problem,) = problems
    assert problem.where == f"{path}:2" and "the row nests too deeply to read" in problem.message


def test_a_folder_named_like_a_clip_is_said_to_be_a_folder(base, tmp_path):
    (tmp_path / "x.wav").mkdir()
    _clip(tmp_path, "a.wav")
    manifest = _manifest(tmp_path, [{"audio": "x.wav", "text": "hello"}, {"audio": "a.wav", "text": "hello"}])
    report = _prepare(manifest, tmp_path / "out", base).report
    (problem,) = report.problems
    assert f"{tmp_path / 'x.wav'} is a folder, not an audio file" in problem.message


def test_a_float_wav_beyond_full_scale_is_warned_about(base, tmp_path):
    from higgs_train.data.prepare import stats_lines

    _clip(tmp_path, "a.wav")
    wave, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    sf.write(tmp_path / "loud.wav", wave / np.abs(wave).max() * 50, rate, subtype="FLOAT")  # peaks at 50
    manifest = _manifest(tmp_path, [{"audio": "a.wav", "text": "hello"}, {"audio": "loud.wav", "text": "hello"}])
    for _ in range(2):  # encoded, then read back from the cache: the peak is kept with the codes
        stats = _prepare(manifest, tmp_path / "out", base).report.stats
        assert stats["over_full_scale"] == {"clips": 1, "peak": 50.0}
        assert any("warning: 1 clip(s) have samples beyond full scale (peak 50.0" in x for x in stats_lines(stats))
