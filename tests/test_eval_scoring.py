"""Answer normalisation, metrics, JSONL cache and report helpers of llavakit.eval."""

from __future__ import annotations

import json

import pytest

from llavakit.errors import DataError
from llavakit.eval.records import JsonlCache, read_jsonl
from llavakit.eval.report import md_table, write_report
from llavakit.eval.scoring import (
    binary_metrics,
    is_correct,
    mean_std,
    normalize_text,
    parse_number,
    parse_yes_no,
)


@pytest.mark.parametrize(
    "text,expected",
    [("3", 3), ("Three.", 3), ("three circles", 3), ("There are 3.", 3), ("twenty one", 21), ("twenty-one", 21),
     ("none", 0), ("zero", 0), ("3 or 4", None), ("many", None), ("", None), ("3 (three)", 3)],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [("Yes", True), ("yes.", True), ("Yes, there is a red circle.", True), ("No", False), ("NO!", False),
     ("There is no star.", False), ("There isn't one.", False), ("Yeah", True), ("blue", None), ("", None),
     ("No, yes", False), ("maybe yes maybe no", None)],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


def test_text_match_is_normalised_but_exact():
    assert normalize_text("The  Red.") == "red"
    assert is_correct("Red.", "red")
    assert is_correct("a red", "red")
    assert is_correct("Grey", "gray")
    assert is_correct("The top-left.", "top left")
    assert not is_correct("red circle", "red")
    assert not is_correct("dark red", "red")
    assert not is_correct("", "")  # an empty target never matches
    assert is_correct("Three", "3", "number")
    assert not is_correct("4", "3", "number")
    assert is_correct("Yes, it is.", "yes", "yesno")
    assert not is_correct("I don't know", "yes", "yesno")
    with pytest.raises(ValueError):
        is_correct("a", "a", "colour")


def test_binary_metrics_hand_computed():
    labels = [True, True, True, False, False, False]
    preds = [True, True, None, True, False, False]
    m = binary_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["unparsed"]) == (2, 1, 2, 0, 1)
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    assert m["precision"] == pytest.approx(100 * 2 / 3)
    assert m["recall"] == pytest.approx(100 * 2 / 3)
    assert m["f1"] == pytest.approx(100 * 2 / 3)
    assert m["yes_ratio"] == pytest.approx(50.0)
    assert m["unparsed"] == 1
    zero = binary_metrics([False, False], [True, False])
    assert zero["precision"] == 0.0 and zero["f1"] == 0.0


def test_mean_std():
    assert mean_std([]) == (None, None)
    assert mean_std([5]) == (5.0, 0.0)
    mean, std = mean_std([1, 2, 3])
    assert mean == 2.0 and std == pytest.approx(1.0)


def test_jsonl_cache_resumes_and_drops_a_cut_last_line(tmp_path, capsys):
    path = tmp_path / "cache.jsonl"
    cache = JsonlCache(path, key=lambda r: r["id"])
    cache.add({"id": 1, "v": "a"})
    cache.add({"id": 2, "v": "b"})
    with path.open("a") as fh:
        fh.write('{"id": 3, "v"')  # a crash mid-write
    again = JsonlCache(path, key=lambda r: r["id"])
    assert 1 in again and 2 in again and 3 not in again
    assert "unfinished last line" in capsys.readouterr().err
    again.add({"id": 3, "v": "c"})
    assert [r["id"] for r in read_jsonl(path)] == [1, 2, 3]


def test_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: invalid JSON"):
        read_jsonl(bad, "answers file")
    bad.write_text('{"a": 1}\n')
    with pytest.raises(DataError, match=r"line 1: missing key\(s\) text"):
        read_jsonl(bad, "answers file", required=["text"])
    corrupt = tmp_path / "cache.jsonl"
    corrupt.write_text('{"id": 1}\ngarbage\n{"id": 2}\n')
    with pytest.raises(DataError, match="cache .* line 2"):
        JsonlCache(corrupt, key=lambda r: r["id"])
    corrupt.write_text('{"id": 1}\n{"other": 2}\n')
    with pytest.raises(DataError, match="line 2: not a record of this cache"):
        JsonlCache(corrupt, key=lambda r: r["id"])


def test_report_writes_json_and_markdown(tmp_path):
    table = md_table(["mode", "acc", "n"], [["random", 87.5, 8], ["all", None, 0]])
    assert "| random | 87.50 | 8 |" in table and "| all | — | 0 |" in table
    assert table.splitlines()[1] == "| --- | ---: | ---: |"
    j, m = write_report(tmp_path / "out", "x", {"a": 1}, table)
    assert json.loads(j.read_text()) == {"a": 1}
    assert m.read_text().startswith("| mode |")
