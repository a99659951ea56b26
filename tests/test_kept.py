"""The records kept in RAM (snapshot/kept.py): replaced whole, read as an object or not at all.
/tmp is anybody's: what is there is read as advice, and nothing there makes a command fail."""
import os

import pytest

from snapshot import kept


def test_a_record_reads_back_as_written_and_is_replaced_whole(tmp_path):
    path = tmp_path / "deeper" / "job.json"
    kept.write(path, {"id": 1, "state": "running", "progress": "push: 1.2 MiB written é"})
    kept.write(str(path), {"id": 2, "state": "done", "result": {"exact": True}})
    assert kept.read(path) == {"id": 2, "state": "done", "result": {"exact": True}}
    assert os.listdir(path.parent) == ["job.json"]     # no temporary file left


@pytest.mark.parametrize("text", ["", "{", '{"id": 1', "[1, 2]", '"running"', "null", "17",
                                  "NaN", "\x00\x01", '{"a": 1} {"b": 2}'])
def test_a_damaged_record_or_one_that_is_no_object_reads_as_none(tmp_path, text):
    path = tmp_path / "job.json"
    path.write_text(text)
    assert kept.read(path) is None


def test_a_missing_record_or_an_unreadable_one_reads_as_none(tmp_path):
    assert kept.read(tmp_path / "none.json") is None
    (tmp_path / "dir.json").mkdir()
    assert kept.read(tmp_path / "dir.json") is None
    (tmp_path / "bytes.json").write_bytes(b'{"a": "\xff"}')    # not UTF-8
    assert kept.read(tmp_path / "bytes.json") is None


def test_a_write_that_fails_leaves_the_old_record_and_no_temporary_file(tmp_path):
    path = tmp_path / "job.json"
    kept.write(path, {"id": 1})
    with pytest.raises(TypeError):
        kept.write(path, {"id": object()})          # not JSON: refused before the rename
    assert kept.read(path) == {"id": 1}
    assert os.listdir(tmp_path) == ["job.json"]
