"""The code cache's shards: memory-mapped, verified once per file state, older formats replaced."""

from __future__ import annotations

import json

import numpy as np

from higgs_train.data import codes as codes_module
from higgs_train.data.codes import CHECKSUMS, SHARD_FILE, Clip, CodeCache


def _clips(n: int, sizes: int = 10) -> dict[str, Clip]:
    rng = np.random.default_rng(0)
    return {
        f"k{i}": Clip(rng.integers(0, 1024, (4, sizes + i)).astype(np.int16), 0.5 + i, -20.0 - i if i else None)
        for i in range(n)
    }


def test_cached_codes_are_views_of_the_memory_mapped_shard(tmp_path):
    import pyarrow as pa

    written = _clips(3, sizes=20_000)  # 4 x 20k int16 codes a clip
    CodeCache(tmp_path).add(written)
    allocated = pa.total_allocated_bytes()
    found = CodeCache(tmp_path).load(set(written))
    assert pa.total_allocated_bytes() - allocated < 10_000  # nothing copied out of the mapping
    assert found.keys() == written.keys()
    for key, clip in written.items():
        assert np.array_equal(found[key].codes, clip.codes) and found[key].codes.dtype == np.int16
        assert (found[key].seconds, found[key].rms_db) == (clip.seconds, clip.rms_db)
        assert not found[key].codes.flags.owndata and not found[key].codes.flags.writeable


def test_a_shard_is_hashed_once_per_file_state(tmp_path, monkeypatch):
    CodeCache(tmp_path).add(_clips(2))
    hashed = []
    real = codes_module.FileDigests.__call__

    def counting(self, path):
        before = len(self._known)
        digest = real(self, path)
        if len(self._known) > before:
            hashed.append(path)
        return digest

    monkeypatch.setattr(codes_module.FileDigests, "__call__", counting)
    assert len(CodeCache(tmp_path).load({"k0", "k1"})) == 2
    assert len(hashed) == 1  # the first start after the write reads the file once
    assert len(CodeCache(tmp_path).load({"k0", "k1"})) == 2
    assert len(hashed) == 1  # a later start only stats it
    (shard,) = CodeCache(tmp_path).shards()
    data = (shard / SHARD_FILE).read_bytes()
    i = len(data) // 2
    (shard / SHARD_FILE).write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :])  # rewritten: another ctime
    said = []
    assert CodeCache(tmp_path, said.append).load({"k0", "k1"}) == {}
    assert "fails its checksum" in said[0] and not shard.exists()


def test_a_shard_of_an_older_format_is_replaced_with_a_warning(tmp_path):
    old = tmp_path / "cache" / "codes" / "shard-1-1"
    old.mkdir(parents=True)
    (old / "data-00000-of-00001.arrow").write_bytes(b"old")
    (old / CHECKSUMS).write_text(json.dumps({"data-00000-of-00001.arrow": "x"}))
    said = []
    assert CodeCache(tmp_path, said.append).load({"k0"}) == {}
    assert said == [
        f"warning: code cache shard {old} was written by an older version; removing it, its clips are encoded again"
    ]
    assert not old.exists()
