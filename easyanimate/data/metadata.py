"""Reading the metadata file: a JSON list, JSON lines or CSV of {file_path, control_file_path, text, type}.

Paths are joined onto ``train_data_dir`` unless absolute. Optional ``width`` / ``height`` (native size) let the
sampler bucket a sample without opening its file. A malformed file or entry raises ``MetadataError`` naming the
entry number and the fix; ``read_entries`` + ``parse_entry`` let the preflight report every bad entry instead.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

DataType = Literal["video", "image"]
REQUIRED_KEYS = ("file_path", "control_file_path", "text")


class MetadataError(ValueError):
    """The metadata file or one of its entries cannot be used; the message names the entry and the fix."""


@dataclass(frozen=True)
class Sample:
    """One metadata entry, paths resolved."""

    index: int
    file_path: str
    control_file_path: str
    text: str
    data_type: DataType
    width: Optional[int] = None
    height: Optional[int] = None


def read_entries(meta_path: str | Path, lenient: bool = False) -> list[Any]:
    """Raw entries of a .json (list), .jsonl or .csv file. Raises MetadataError for an unreadable file.

    ``lenient``: a bad JSON line comes back as a MetadataError in its place instead of raising (for the preflight).
    """
    path = Path(meta_path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MetadataError(f"{path}: cannot read the metadata file ({err}).") from err
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix == ".jsonl":
        return [_json_line(path, number, line, lenient) for number, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise MetadataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}. Fix the "
                            "file (a JSON list of objects), or use .jsonl with one object per line.") from err
    if not isinstance(entries, list):
        raise MetadataError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}.")
    return entries


def _json_line(path: Path, number: int, line: str, lenient: bool) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        error = MetadataError(f"{path}: invalid JSON on line {number}: {err.msg}.")
        if lenient:
            return error
        raise error from err


def resolve(path: str, data_dir: str | Path | None) -> str:
    """A metadata path joined onto the data folder unless it is absolute."""
    if data_dir is None or Path(path).is_absolute():
        return str(path)
    return str(Path(data_dir) / path)


def _optional_int(entry: dict, key: str, where: str) -> Optional[int]:
    value = entry.get(key)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError) as err:
        raise MetadataError(f"{where}: '{key}' must be an integer, got {value!r}.") from err
    if number <= 0:
        raise MetadataError(f"{where}: '{key}' must be positive, got {number}.")
    return number


def parse_entry(index: int, entry: Any, data_dir: str | Path | None) -> Sample:
    """One raw entry -> Sample. A missing ``type`` means image, as in the original."""
    where = f"entry {index}"
    if not isinstance(entry, dict):
        raise MetadataError(f"{where}: expected an object with file_path, control_file_path, text, type; "
                            f"got {type(entry).__name__}.")
    missing = [key for key in REQUIRED_KEYS if entry.get(key) in (None, "") and key != "text"]
    missing += [] if "text" in entry else ["text"]
    if missing:
        raise MetadataError(f"{where}: missing {', '.join(missing)}; every entry (images too) needs "
                            "file_path, control_file_path and text.")
    data_type = entry.get("type") or "image"
    if data_type not in ("video", "image"):
        raise MetadataError(f"{where}: type must be 'video' or 'image', got {data_type!r}.")
    if not isinstance(entry["text"], str):
        raise MetadataError(f"{where}: text must be a string, got {type(entry['text']).__name__}.")
    return Sample(index=index, file_path=resolve(entry["file_path"], data_dir),
                  control_file_path=resolve(entry["control_file_path"], data_dir), text=entry["text"],
                  data_type=data_type, width=_optional_int(entry, "width", where),
                  height=_optional_int(entry, "height", where))


def load_metadata(meta_path: str | Path, data_dir: str | Path | None = None) -> list[Sample]:
    """Every entry of the metadata file, or MetadataError at the first bad one (run check-data for all)."""
    entries = read_entries(meta_path)
    if not entries:
        raise MetadataError(f"{meta_path}: no entries.")
    try:
        return [parse_entry(i, entry, data_dir) for i, entry in enumerate(entries)]
    except MetadataError as err:
        raise MetadataError(f"{meta_path}: {err} Run `easyanimate check-data` for a report of every "
                            "entry.") from err
