"""run.atomic: a target is either its old or its whole new content; failures leave no file."""

import errno
import os

import pytest

from mamlkit.run import atomic


def test_write_replaces_the_whole_file_readable_by_others(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("old")
    atomic.write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and oct(path.stat().st_mode & 0o777) == "0o644"
    atomic.write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes" and atomic.temporaries(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError) as raised:
        atomic.write_atomic(path, "new")
    assert raised.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.jsonl"]


def test_temporaries_finds_what_a_kill_left(tmp_path):
    (tmp_path / ".config.yaml.abc123.tmp").write_text("half")
    (tmp_path / ".best.tmp").mkdir()  # a checkpoint folder's, not a file's
    (tmp_path / "config.yaml").write_text("whole")
    assert [p.name for p in atomic.temporaries(tmp_path)] == [".config.yaml.abc123.tmp"]
