"""Reading LLaVA-format files and validating one record at a time.

- :func:`load_records`: a JSON list, JSONL, ``.parquet``, ``.arrow`` or a ``save_to_disk`` folder →
  the raw records, unchanged; malformed files raise DataError with file, line/row and problem,
- :func:`parse_record`: one raw record → :class:`Record` (id, image paths, messages) or a
  DataError naming the record id (``#index`` when it has none) and the field,
- :func:`resolve_image`: an image path inside the image folder (no ``..``/absolute/symlink escape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llavakit.conversation.processor import to_messages
from llavakit.conversation.templates import ASSISTANT, SYSTEM, USER, Message
from llavakit.errors import DataError

HF_SUFFIXES = (".parquet", ".arrow")


# --- reading files ---------------------------------------------------------------------------

def load_records(path: str | Path) -> list[dict]:
    """Records of a LLaVA data file: a JSON list, JSONL (one object per line), a ``.parquet`` or
    ``.arrow`` file, or a directory written by ``datasets``' ``save_to_disk``.

    Malformed files raise :class:`DataError` naming the file, the line (or row) and the problem.
    Records are returned as they are; :func:`parse_record` validates one.
    """
    path = Path(path)
    if path.is_dir():
        return _load_hf_dir(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix in HF_SUFFIXES:
        return _load_hf_file(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: the file is empty")
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = _failing_item(text)
            at = f" (in record [{where}])" if where is not None else ""
            raise DataError(f"{path}: line {exc.lineno} column {exc.colno}{at}: invalid JSON: {exc.msg}") from None
        if not isinstance(data, list):  # pragma: no cover - a text starting with '[' parses to a list
            raise DataError(f"{path}: expected a JSON list of records")
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise DataError(f"{path}: record [{i}] is {type(item).__name__}, expected an object")
        return data
    return _load_jsonl(path, text)


def _failing_item(text: str) -> int | None:
    """Index of the first list item that does not parse (to name the record of a JSON error)."""
    decoder, pos, index = json.JSONDecoder(), text.index("[") + 1, 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return None
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return index
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] != "]":
            return index + 1
        index += 1


def _load_jsonl(path: Path, text: str) -> list[dict]:
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "" if lineno > 1 else " (a data file is a JSON list of records or one JSON object per line)"
            raise DataError(f"{path}: line {lineno} column {exc.colno}: invalid JSON: {exc.msg}{hint}") from None
        if not isinstance(item, dict):
            raise DataError(f"{path}: line {lineno}: is {type(item).__name__}, expected a JSON object")
        records.append(item)
    return records


def _need_pyarrow(path: Path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError(f"{path}: reading Hugging Face datasets files needs pyarrow: pip install 'llavakit[datasets]'") from None


def _rows(rows: list[dict], path: Path) -> list[dict]:
    for i, row in enumerate(rows):
        image = row.get("image")
        if isinstance(image, dict) and "bytes" in image:
            raise DataError(
                f"{path}: row {i}: column 'image' holds embedded image data; llavakit reads images from "
                "files: save them to a folder and store their relative paths in 'image'"
            )
    return rows


def _load_hf_file(path: Path) -> list[dict]:
    _need_pyarrow(path)
    import pyarrow as pa

    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            try:
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file: {exc}") from None
    return _rows(table.to_pylist(), path)


def _load_hf_dir(path: Path) -> list[dict]:
    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(f"{path} is a directory but not a saved Hugging Face dataset (no dataset_info.json)")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a saved dataset needs `datasets`: pip install 'llavakit[datasets]'") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load the saved dataset: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" in ds:
            ds = ds["train"]
        elif len(splits) == 1:
            ds = ds[splits[0]]
        else:
            raise DataError(f"{path}: a dataset with splits {splits} and no 'train'; pass the split's folder")
    return _rows(ds.to_list(), path)


# --- one record --------------------------------------------------------------------------------

@dataclass
class Record:
    """A validated record: id, image paths as written, messages (system first if any)."""

    index: int
    id: str
    images: list[str]
    messages: list[Message]


def record_id(raw, index: int) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) else f"#{index}"


def parse_record(raw, index: int, image_token: str = "<image>") -> Record:
    """Validate one raw record; DataError names the record (its id, else ``#index``) and the field."""
    rid = record_id(raw, index)
    if not isinstance(raw, dict):
        raise DataError(f"record #{index} is {type(raw).__name__}, expected an object")
    if "id" in raw and raw["id"] is not None and rid.startswith("#"):
        raise DataError(f"record #{index}: id is {raw['id']!r}, expected a string or integer")
    if "conversations" not in raw:
        raise DataError(f"record {rid}: has no 'conversations'")
    turns = raw["conversations"]
    if isinstance(turns, (list, tuple)) and not turns:
        raise DataError(f"record {rid}: conversations is empty")
    messages = to_messages(turns, rid)
    images = raw.get("image")
    if images is None:
        images = []
    elif isinstance(images, str):
        images = [images]
    elif not (isinstance(images, list) and all(isinstance(p, str) for p in images)):
        raise DataError(f"record {rid}: image is {type(images).__name__}, expected a path string or a list of them")
    for p in images:
        if not p.strip():
            raise DataError(f"record {rid}: image is an empty path")
    _check_turns(rid, messages, len(images), image_token)
    return Record(index, rid, images, messages)


def _check_turns(rid: str, messages: list[Message], n_images: int, image_token: str) -> None:
    body = messages[1:] if messages and messages[0].role == SYSTEM else messages
    offset = len(messages) - len(body)
    if not body:
        raise DataError(f"record {rid}: has only a system turn")
    for j, msg in enumerate(body):
        where = f"record {rid}: conversations[{j + offset}]"
        if msg.role == SYSTEM:
            raise DataError(f"{where} is a system turn; only the first turn may be")
        expected = USER if j % 2 == 0 else ASSISTANT
        if msg.role != expected:
            if j == 0:
                raise DataError(f"{where}: the conversation starts with gpt; it must start with human")
            raise DataError(f"{where}: two {_llava_role(msg.role)} turns in a row; turns must alternate")
        if not msg.content.strip():
            raise DataError(f"{where}.value is empty")
        if msg.role == ASSISTANT and image_token in msg.content:
            raise DataError(f"{where} (gpt) contains {image_token}; images go in human turns")
    if len(body) < 2:
        raise DataError(f"record {rid}: has no gpt answer")
    placeholders = sum(m.content.count(image_token) for m in body)
    if placeholders != n_images:
        what = "image" if n_images == 1 else "images"
        raise DataError(
            f"record {rid}: {placeholders} {image_token} placeholder(s) in the conversation but {n_images} {what} "
            "in 'image'"
        )


def _llava_role(role: str) -> str:
    return {USER: "human", ASSISTANT: "gpt"}.get(role, role)


def resolve_image(folder: Path, rel: str, rid: str) -> Path:
    """``folder/rel`` resolved; DataError if it leads outside ``folder`` (``..``, absolute, symlink)."""
    root = folder.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        lexical = (root / rel).absolute()
        how = "a symlink leads" if ".." not in Path(rel).parts and lexical.is_relative_to(root) else "it points"
        raise DataError(f"record {rid}: image {rel!r} escapes the image folder {folder} ({how} to {target})")
    return target
