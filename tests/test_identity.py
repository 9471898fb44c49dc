"""Clip digests are remembered by stat, and the memo never hides new content."""

from __future__ import annotations

import os

import higgs_train.identity as identity
from higgs_train.identity import FileDigests


def test_digests_are_read_once_and_a_rewrite_in_place_is_seen(tmp_path, monkeypatch):
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"first content")
    reads = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda p: reads.append(p) or real(p))
    memo = tmp_path / "memo" / "digests.json"
    first = FileDigests(memo)
    digest = first(clip)
    first.save()
    assert FileDigests(memo)(clip) == digest and len(reads) == 1  # a new start: the memo, not the file
    stat = os.stat(clip)
    clip.write_bytes(b"other content")  # same size
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime: only ctime tells
    assert FileDigests(memo)(clip) != digest and len(reads) == 2
