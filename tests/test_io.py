"""llavakit/io.py: atomic writes, and the one policy for JSONL files llavakit appends to."""

from __future__ import annotations

import pytest

from llavakit.errors import DataError
from llavakit.io import atomic_directory, atomic_path, atomic_write_json, cut_torn_tail, read_jsonl_log


def test_atomic_write_leaves_no_temp_file_and_replaces_whole(tmp_path):
    target = tmp_path / "deep" / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": 2})
    assert target.read_text() == '{\n  "b": 2\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_atomic_path_renames_on_success_and_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "w.npy"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["w.npy"]


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]  # the old directory is gone, not merged
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "c").write_text("3")
            raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    with atomic_directory(target, keep_existing=True) as tmp:  # another process finished first: keep its
        (tmp / "d").write_text("4")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_torn_last_line_is_dropped_and_cut_with_repair(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl_log(log) == ([(1, {"a": 1}), (3, {"a": 2})], True)
    assert log.read_bytes().endswith(b'"b"')  # reading alone changes nothing
    assert read_jsonl_log(log, repair=True) == ([(1, {"a": 1}), (3, {"a": 2})], True)
    assert log.read_bytes() == b'{"a": 1}\n\n{"a": 2}\n'  # the next append starts on its own line


def test_a_whole_last_record_without_newline_is_kept_and_terminated(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert read_jsonl_log(log, repair=True) == ([(1, {"a": 1}), (2, {"a": 2})], False)
    assert log.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


@pytest.mark.parametrize("middle", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_damage_before_the_last_line_is_refused_naming_the_line(tmp_path, middle):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"a": 1}\n' + middle + b'\n{"a": 2}\n')
    with pytest.raises(DataError, match=r"answers .*log.jsonl:2: line 2 is not a JSON object"):
        read_jsonl_log(log, "answers")


def test_a_missing_file_has_no_records_and_cut_leaves_whole_files_alone(tmp_path):
    assert read_jsonl_log(tmp_path / "none.jsonl") == ([], False)
    whole = tmp_path / "w.jsonl"
    whole.write_bytes(b'{"a": 1}\n')
    assert cut_torn_tail(whole) == 0 and whole.read_bytes() == b'{"a": 1}\n'
    one = tmp_path / "one.jsonl"
    one.write_bytes(b'{"a"')
    assert cut_torn_tail(one) == 4 and one.read_bytes() == b""
