"""files.py: writes are whole, and what a killed writer left goes at the next write."""

from __future__ import annotations


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    from higgs_train.files import atomic_write_text, remove_leftovers, remove_tmp_files, tmp_sibling

    target = tmp_path / "out.wav"
    left = [tmp_sibling(target, "1234"), tmp_sibling(tmp_path / "other.json", "99")]
    for p in left:
        p.write_text("half")
    (tmp_path / "keep.txt").write_text("mine")
    assert remove_leftovers(target) == [left[0]] and left[1].exists()  # only this file's
    atomic_write_text(target, "whole")
    assert remove_tmp_files(tmp_path) == [left[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "out.wav"]
