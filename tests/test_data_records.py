"""Reading LLaVA-format files (JSON, JSONL, parquet, arrow, saved datasets) and validating records."""

from __future__ import annotations

import json

import pytest

from llavakit.data.records import load_records, parse_record, resolve_image
from llavakit.conversation.templates import Message
from llavakit.errors import DataError

# Shapes of the real files, copied field for field (values shortened).
INSTRUCT_150K = {  # LLaVA-Instruct-150K (llava_instruct_150k.json): image given as a COCO file name
    "id": "000000033471",
    "image": "000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."},
    ],
}
MIX_665K_TEXT = {  # llava_v1_5_mix665k.json: ShareGPT text-only records have no "image" key
    "id": "i6IyJda_0",
    "model": "",
    "conversations": [
        {"from": "human", "value": "How to tell if a customer segment is well segmented? In 3 bullet points."},
        {"from": "gpt", "value": "1. Homogeneity: ...\n2. Distinctiveness: ...\n3. Stability: ..."},
    ],
}
MIX_665K_IMAGE = {
    "id": "000000033471",
    "image": "coco/train2017/000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
    ],
}
LCS_558K = {  # blip_laion_cc_sbu_558k.json (stage-1 captions); CC-595K chat.json has the same shape
    "id": "004539375",
    "image": "00453/004539375.jpg",
    "conversations": [
        {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
        {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
    ],
}
REAL = [INSTRUCT_150K, MIX_665K_TEXT, MIX_665K_IMAGE, LCS_558K]


def test_json_list_and_jsonl_load_unchanged(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(REAL, indent=2), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in REAL) + "\n\n", encoding="utf-8")
    (tmp_path / "c.json").write_text("\ufeff" + json.dumps(REAL), encoding="utf-8")  # BOM
    for name in ("a.json", "b.jsonl", "c.json"):
        assert load_records(tmp_path / name) == REAL
    recs = [parse_record(r, i) for i, r in enumerate(REAL)]
    assert [r.id for r in recs] == ["000000033471", "i6IyJda_0", "000000033471", "004539375"]
    assert [r.images for r in recs] == [["000000033471.jpg"], [], ["coco/train2017/000000033471.jpg"], ["00453/004539375.jpg"]]
    assert recs[0].messages[1] == Message("assistant", "The bus in the image is white and red.")


def test_huggingface_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [dict(r, image=r.get("image")) for r in REAL]  # a datasets column holds None where absent
    for r in rows:
        r.pop("model", None)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for path in (tmp_path / "saved", tmp_path / "d.parquet", arrow, tmp_path / "dict"):
        got = load_records(path)
        assert got == rows, path
        assert parse_record(got[1], 1).images == []


def test_embedded_image_column_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"id": ["x"], "image": [{"bytes": b"\x89PNG", "path": None}],
                      "conversations": [[{"from": "human", "value": "<image>"}]]})
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(DataError, match="row 0: column 'image' holds embedded image data"):
        load_records(tmp_path / "e.parquet")


@pytest.mark.parametrize(
    "text, match",
    [
        ('[{"id": "a", "conversations": []},\n {"id": "b",}]', r"line 2 column 13 \(in record \[1\]\): invalid JSON"),
        ('[{"id": "a"}\n {"id": "b"}]', r"line 2 column 2 \(in record \[1\]\): invalid JSON: Expecting ','"),
        ('[{"id": "a"}, 3]', r"record \[1\] is int, expected an object"),
        ('{"id": "a"}\n{"id": "b"\n', r"line 2 column 11: invalid JSON"),
        ('{"id": "a"}\n[1, 2]\n', r"line 2: is list, expected a JSON object"),
        ('{\n  "id": "a"\n}\n', r"line 1 column 2: invalid JSON.*JSON list of records or one JSON object per line"),
        ("  \n", r"the file is empty"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=match) as err:
        load_records(path)
    assert str(path) in str(err.value)


def test_unreadable_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"line 2: not UTF-8"):
        load_records(path)
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nope.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a saved Hugging Face dataset"):
        load_records(tmp_path / "folder")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_records(tmp_path / "x.parquet")


def conv(*turns):
    return [{"from": f, "value": v} for f, v in turns]


@pytest.mark.parametrize(
    "record, match",
    [
        ("just text", r"record #7 is str, expected an object"),
        ({"id": 1.5, "conversations": []}, r"record #7: id is 1.5"),
        ({"id": "r"}, r"record r: has no 'conversations'"),
        ({"id": "r", "conversations": "hi"}, r"record r: conversations is str, expected a list"),
        ({"id": "r", "conversations": []}, r"record r: conversations is empty"),
        ({"id": "r", "conversations": [{"from": "human", "value": 5}]}, r"record r: conversations\[0\].value is int"),
        ({"id": "r", "conversations": [{"from": "human"}]}, r"record r: conversations\[0\] has no 'value'"),
        ({"id": "r", "conversations": conv(("gpt", "a"), ("human", "b"))}, r"record r: conversations\[0\]: the conversation starts with gpt"),
        ({"id": "r", "conversations": conv(("human", "a"), ("human", "b"))}, r"conversations\[1\]: two human turns in a row"),
        ({"id": "r", "conversations": conv(("human", "a"), ("gpt", "  "))}, r"record r: conversations\[1\].value is empty"),
        ({"id": "r", "conversations": conv(("human", ""), ("gpt", "b"))}, r"record r: conversations\[0\].value is empty"),
        ({"id": "r", "conversations": conv(("human", "a"))}, r"record r: has no gpt answer"),
        ({"id": "r", "image": "x.jpg", "conversations": conv(("human", "<image> <image>"), ("gpt", "b"))},
         r"record r: 2 <image> placeholder\(s\) in the conversation but 1 image in 'image'"),
        ({"id": "r", "conversations": conv(("human", "<image>\nq"), ("gpt", "b"))},
         r"record r: 1 <image> placeholder\(s\) in the conversation but 0 images"),
        ({"id": "r", "image": "x.jpg", "conversations": conv(("human", "q"), ("gpt", "b"))},
         r"record r: 0 <image> placeholder\(s\) in the conversation but 1 image"),
        ({"id": "r", "image": "x.jpg", "conversations": conv(("human", "<image>"), ("gpt", "b <image>"))},
         r"conversations\[1\] \(gpt\) contains <image>"),
        ({"id": "r", "image": 3, "conversations": conv(("human", "q"), ("gpt", "b"))}, r"record r: image is int"),
        ({"id": "r", "image": "", "conversations": conv(("human", "<image>"), ("gpt", "b"))}, r"record r: image is an empty path"),
        ({"conversations": conv(("gpt", "a"))}, r"record #7: conversations\[0\]: the conversation starts with gpt"),
        ({"id": "r", "conversations": conv(("human", "a"), ("system", "s"), ("gpt", "b"))}, r"conversations\[1\] is a system turn"),
    ],
)
def test_bad_records_name_id_and_field(record, match):
    with pytest.raises(DataError, match=match):
        parse_record(record, 7)


def test_good_variants():
    r = parse_record({"id": 42, "conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, 0)
    assert r.id == "42" and r.messages == [Message("user", "q"), Message("assistant", "a")]
    r = parse_record({"conversations": conv(("system", "Be brief."), ("human", "q"), ("gpt", "a"))}, 3)
    assert r.id == "#3" and r.messages[0] == Message("system", "Be brief.")
    r = parse_record({"id": "m", "image": ["a.jpg", "b.jpg"],
                      "conversations": conv(("human", "<image> vs <image>"), ("gpt", "same"))}, 0)
    assert r.images == ["a.jpg", "b.jpg"]


def test_resolve_image_stays_inside_folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (root / "link_out.jpg").symlink_to(outside)
    (root / "link_in.jpg").symlink_to(root / "sub" / "a.jpg")
    assert resolve_image(root, "sub/a.jpg", "r") == (root / "sub" / "a.jpg").resolve()
    assert resolve_image(root, "sub/../sub/a.jpg", "r") == (root / "sub" / "a.jpg").resolve()
    assert resolve_image(root, "link_in.jpg", "r") == (root / "sub" / "a.jpg").resolve()
    assert resolve_image(root, "missing.jpg", "r") == root.resolve() / "missing.jpg"  # existence is checked at load
    with pytest.raises(DataError, match=r"record r: image '../secret.jpg' escapes the image folder .*\(it points to"):
        resolve_image(root, "../secret.jpg", "r")
    with pytest.raises(DataError, match="escapes the image folder"):
        resolve_image(root, str(outside), "r")
    with pytest.raises(DataError, match=r"image 'link_out.jpg' escapes the image folder .*a symlink leads to"):
        resolve_image(root, "link_out.jpg", "r")
