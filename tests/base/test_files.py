"""Atomic writes: a reader sees the old file or the new one, never half of one; two names part on the next write."""

import os

import pytest

from cxrutils import files


def test_a_second_name_for_a_file_is_the_same_file_until_either_is_written_again(tmp_path):
    best = files.atomic_write(tmp_path / "best.pt", lambda path: open(path, "wb").write(b"epoch 1"))
    last = files.atomic_same_file(best, tmp_path / "last.pt")
    assert os.path.samefile(best, last) and last.read_bytes() == b"epoch 1"
    files.atomic_write(last, lambda path: open(path, "wb").write(b"epoch 2"))
    assert best.read_bytes() == b"epoch 1" and last.read_bytes() == b"epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left


def test_without_hard_links_the_second_name_is_a_copy(tmp_path, monkeypatch):
    source = files.atomic_write(tmp_path / "best.pt", lambda path: open(path, "wb").write(b"weights"))

    def no_links(*args, **kwargs):
        raise PermissionError("this file system has no hard links")

    monkeypatch.setattr(os, "link", no_links)
    copy = files.atomic_same_file(source, tmp_path / "last.pt")
    assert copy.read_bytes() == b"weights" and not os.path.samefile(source, copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_a_missing_source_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.atomic_same_file(tmp_path / "absent.pt", tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
