"""Metadata files: JSON, JSON lines and CSV; relative paths; errors that name the entry and the fix."""

from __future__ import annotations

import json

import pytest

from easyanimate.data.metadata import MetadataError, load_metadata

ROWS = [{"file_path": "train/a.mp4", "control_file_path": "control/a.mp4", "text": "a", "type": "video"},
        {"file_path": "/abs/b.jpg", "control_file_path": "control/b.jpg", "text": "b", "extra": 1}]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_every_format_gives_the_same_samples(tmp_path, suffix):
    path = tmp_path / f"meta{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    else:
        path.write_text("file_path,control_file_path,text,type\ntrain/a.mp4,control/a.mp4,a,video\n"
                        "/abs/b.jpg,control/b.jpg,b,\n")
    a, b = load_metadata(path, "/data")
    assert (a.file_path, a.control_file_path, a.data_type) == ("/data/train/a.mp4", "/data/control/a.mp4", "video")
    assert (b.file_path, b.control_file_path, b.data_type, b.index) == ("/abs/b.jpg", "/data/control/b.jpg",
                                                                        "image", 1)


def test_width_and_height_are_read_when_present(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps([dict(ROWS[0], width=1920, height=1080)]))
    (sample,) = load_metadata(tmp_path / "m.json")
    assert (sample.width, sample.height) == (1920, 1080)


@pytest.mark.parametrize("content, message", [
    ('[{"file_path": "a.mp4",', "line 1"),
    ('{"file_path": "a.mp4"}', "JSON list"),
    (json.dumps([ROWS[0], {"file_path": "x.mp4", "text": "t"}]), "entry 1: missing control_file_path"),
    (json.dumps([dict(ROWS[0], type="gif")]), "entry 0: type must be"),
    ("[]", "no entries"),
])
def test_malformed_metadata_names_the_entry(tmp_path, content, message):
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(MetadataError, match=message):
        load_metadata(tmp_path / "m.json")
