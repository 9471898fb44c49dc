"""Encoding shared by every process of a launch: real `accelerate launch --multi_gpu --num_processes 2` on the CPU;
each process encodes and tokenizes its part into its own shards, a killed rank loses at most its shard in progress,
the lock admits one launch and refuses anyone else."""

import json
import re

import pytest

from higgs_train.checkpoint.lock import RunLock
from higgs_train.cli import app
from higgs_train.data.codes import CodeCache
from higgs_train.data.share import Share
from higgs_train.data.tokens import TOKENS_SUBDIR
from higgs_train.errors import Interrupted
from tests.conftest import runner, train_args
from tests.test_distributed import finish, launch


def writers(paths) -> dict[str, int]:
    """How many shards each process (the pid in the shard's name) wrote."""
    counts: dict[str, int] = {}
    for p in paths:
        pid = re.fullmatch(r"shard-\d+-(\d+)(\.arrow)?", p.name).group(1)
        counts[pid] = counts.get(pid, 0) + 1
    return counts


def test_a_share_is_every_nth_item_and_gather_waits_for_everyone(tmp_path):
    shares = [Share(r, 3, tmp_path / "sync", poll_s=0.01) for r in range(3)]
    assert [s.mine(list(range(7))) for s in shares] == [[0, 3, 6], [1, 4], [2, 5]]
    for s in shares[1:]:
        (tmp_path / "sync").mkdir(exist_ok=True)
        (tmp_path / "sync" / f"1-codes.{s.rank}.json").write_text(json.dumps({"rank": s.rank}))
    assert shares[0].gather("codes", {"rank": 0}) == [{"rank": 0}, {"rank": 1}, {"rank": 2}]
    lonely = Share(0, 2, tmp_path / "other", poll_s=0.01)
    with pytest.raises(Interrupted, match="stopped by signal while waiting for the other processes' codes"):
        lonely.gather("codes", {}, should_stop=lambda: True)


@pytest.mark.slow
def test_prepare_on_two_processes_splits_the_encoding_and_a_killed_rank_loses_one_shard(
    synth_manifest, tiny_model, tmp_path
):
    out = tmp_path / "run"
    args = ["prepare", *train_args(synth_manifest, out, tiny_model, "--cache_shard_clips", "1")]
    code, log = finish(launch(args, env_extra={"HIGGS_TRAIN_FAILPOINT": "after_shard@2::1"}))
    assert code != 0  # rank 1 was SIGKILLed after its second shard; the launcher ended rank 0
    kept = CodeCache(out).shards()
    assert 2 <= len(kept) <= 5 and max(writers(kept).values()) <= 3
    code, log = finish(launch(args))
    assert code == 0, log
    assert f"encoding in total: {6 - len(kept)} clips" in log  # nothing finished was encoded again
    done = CodeCache(out).shards()
    assert len(done) == 6 and len(writers(set(done) - set(kept))) == (2 if 6 - len(kept) > 1 else 1)
    assert json.loads((out / "data_report.json").read_text())["good"] == 6
    assert (out / "cache").is_dir() and not list((out / "cache").glob(".sync-*"))  # the launch's markers went


@pytest.mark.slow
def test_both_processes_encode_and_tokenize_their_part(synth_manifest, tiny_model, tmp_path):
    out = tmp_path / "run"
    code, log = finish(launch(["prepare", *train_args(synth_manifest, out, tiny_model, "--cache_shard_clips", "1")]))
    assert code == 0, log
    assert sorted(writers(CodeCache(out).shards()).values()) == [3, 3]
    assert sorted(writers((out / TOKENS_SUBDIR).glob("*/shard-*.arrow")).values()) == [1, 1]
    assert re.search(r"encoding, process 0: 3 clips, 0\.\d+ h of audio in [\d.]+ s: [\d.]+ clips/s", log), log
    assert "encoding, process 1: 3 clips" in log and "encoding in total: 6 clips" in log
    again = runner.invoke(app, ["prepare", *train_args(synth_manifest, out, tiny_model)])  # one process: all cached
    assert again.exit_code == 0 and "encoding" not in again.output.replace("encoded", ""), again.output


@pytest.mark.slow
def test_the_lock_admits_one_launch_and_refuses_another(synth_manifest, tiny_model, tmp_path):
    out = tmp_path / "run"
    with RunLock(out, "training"):  # another run holds the folder
        code, log = finish(launch(["prepare", *train_args(synth_manifest, out, tiny_model)]))
    assert code != 0
    assert f"--output_dir {out} is in use by another higgs-train process" in log
    assert not CodeCache(out).shards()


def test_a_reload_reads_only_the_shards_other_processes_added(tmp_path, monkeypatch):
    """After the barrier a process reads the others' new shards, never verifying its earlier ones again."""
    import numpy as np

    import higgs_train.data.codes as codes
    from higgs_train.data.codes import Clip

    mine, other = CodeCache(tmp_path), CodeCache(tmp_path)
    mine.add({"a": Clip(np.zeros((2, 3), np.int16), 0.1)})
    assert mine.load({"a"}) == {}  # its own shard: already known, not read again
    other.add({"b": Clip(np.ones((2, 3), np.int16), 0.2)})
    checked = []
    real = codes._shard_problem
    monkeypatch.setattr(codes, "_shard_problem", lambda shard, digests: checked.append(shard) or real(shard, digests))
    assert set(mine.load({"a", "b"})) == {"b"} and len(checked) == 1
    assert mine.load({"a", "b"}) == {} and len(checked) == 1
