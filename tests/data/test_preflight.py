"""check-data on generated media with planted faults lists exactly the planted faults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from easyanimate.cli import main as cli
from easyanimate.data.demo import _write_video
from easyanimate.data.preflight import CheckOptions, check_data

CLIP = CheckOptions(n_frames=9, stride=1)
from easyanimate.data import build_train_dataloader


@pytest.fixture
def faulty(demo_data, tmp_path) -> tuple[Path, list]:
    """Demo entries (absolute paths) plus one entry per fault kind; returns the metadata and the planted faults."""
    entries = json.loads((demo_data / "metadata_control.json").read_text())
    for entry in entries:
        for key in ("file_path", "control_file_path"):
            entry[key] = str(demo_data / entry[key])
    video = next(e for e in entries if e["type"] == "video")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01 not a video" * 50)
    _write_video(tmp_path / "short.mp4", np.zeros((5, 64, 64, 3), np.uint8), fps=8)
    _write_video(tmp_path / "wide.mp4", np.zeros((30, 32, 96, 3), np.uint8), fps=8)
    _write_video(tmp_path / "big.mp4", np.zeros((30, 128, 128, 3), np.uint8), fps=8)
    _write_video(tmp_path / "base.mp4", np.zeros((30, 64, 64, 3), np.uint8), fps=8)
    base = dict(video, file_path=str(tmp_path / "base.mp4"), control_file_path=str(tmp_path / "base.mp4"))
    planted = [
        (dict(base, file_path=str(tmp_path / "nowhere.mp4")), "missing-file", "nowhere.mp4"),
        (dict(base, file_path=str(tmp_path / "garbage.mp4")), "undecodable", "garbage.mp4"),
        (dict(base, control_file_path=str(tmp_path / "short.mp4")), "control-too-short", "short.mp4"),
        (dict(base, control_file_path=str(tmp_path / "wide.mp4")), "control-aspect", "wide.mp4"),
        (dict(base, control_file_path=str(tmp_path / "big.mp4")), "control-size", "big.mp4"),
        (dict(base, type="image"), "type-mismatch", "base.mp4"),
        (dict(base, text=""), "empty-text", "base.mp4"),
        (dict(base, control_file_path=None), "malformed-metadata", ""),
        ("just a string", "malformed-metadata", ""),
    ]
    all_entries = entries + [entry for entry, _, _ in planted]
    expected = [(len(entries) + i, kind, name) for i, (_, kind, name) in enumerate(planted)]
    expected.append((len(entries) + 5, "type-mismatch", "base.mp4"))  # its control is the same mp4
    expected.sort()
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(all_entries))
    return meta, expected


def found(report) -> list:
    return sorted((p.entry, p.kind, Path(p.path).name if p.path else "") for p in report.problems)


def test_check_data_lists_exactly_the_planted_faults(faulty):
    meta, expected = faulty
    report = check_data(meta, None, CLIP, workers=4)
    assert found(report) == expected
    assert report.bad_entries == 7  # everything but the control-size and empty-text warnings


def test_check_data_on_clean_data_finds_nothing_and_exits_zero(demo_data, capsys):
    assert check_data(demo_data / "metadata_control.json", str(demo_data), CLIP).problems == []
    assert cli(["check-data", f"--train_data_dir={demo_data}", "--video_sample_n_frames=9",
                f"--train_data_meta={demo_data / 'metadata_control.json'}"]) == 0


def test_check_data_command_prints_each_fix_and_a_summary_and_fails_past_the_limit(faulty, capsys, tmp_path):
    meta, expected = faulty
    status = cli(["check-data", f"--train_data_meta={meta}", "--video_sample_n_frames=9",
                  f"--json={tmp_path / 'report.json'}"])
    out = capsys.readouterr().out
    assert status == 1
    assert "control-too-short" in out and "Fix: render the control video" in out and "short.mp4" in out
    assert "unusable" in out.splitlines()[-1]
    assert len(json.loads((tmp_path / "report.json").read_text())) == len(expected)
    assert cli(["check-data", f"--train_data_meta={meta}", "--video_sample_n_frames=9",
                "--max_bad_sample_fraction=0.5"]) == 0


def test_malformed_json_is_reported_with_its_line(tmp_path):
    (tmp_path / "m.json").write_text('[\n {"file_path": "a.mp4",\n')
    (tmp_path / "m.jsonl").write_text('{"file_path": "a.mp4", "control_file_path": "a.mp4", "text": "t"}\n{bad\n')
    (problem,) = check_data(tmp_path / "m.json", None).problems
    assert problem.kind == "malformed-metadata" and "line 3" in problem.detail
    jsonl = check_data(tmp_path / "m.jsonl", None).problems
    assert ("malformed-metadata", 1) in {(p.kind, p.entry) for p in jsonl}
    assert any("line 2" in p.detail for p in jsonl)


def test_write_meta_adds_sizes_so_training_skips_probing(demo_data, tmp_path, tiny_cfg, monkeypatch):
    out = tmp_path / "sized.json"
    assert cli(["check-data", f"--train_data_dir={demo_data}", f"--train_data_meta={demo_data / 'metadata_control.json'}",
                "--video_sample_n_frames=9", f"--write_meta={out}"]) == 0
    entries = json.loads(out.read_text())
    assert all(e["width"] > 0 and e["height"] > 0 for e in entries)

    def no_probe(*_):
        raise AssertionError("probed a file although the metadata has sizes")

    monkeypatch.setattr("easyanimate.data.loader.probe_many", no_probe)
    cfg = tiny_cfg(data_dir=demo_data)
    cfg.train_data_meta = str(out)
    assert len(build_train_dataloader(cfg, rank=0, world_size=1).sampler) > 0


def test_check_data_reports_progress_counts_on_stderr(faulty, capsys):
    import io

    from easyanimate.data.preflight import ProgressReport

    meta, _ = faulty
    cli(["check-data", f"--train_data_meta={meta}", "--video_sample_n_frames=9", "--progress_every_s=0"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "entries checked" in line]
    total = len(json.loads(Path(meta).read_text()))
    assert len(lines) == total and lines[-1].startswith(f"check-data: {total}/{total} entries checked")
    assert lines[-1].endswith("7 unusable so far")

    now = [0.0]
    stream = io.StringIO()
    report = ProgressReport(10, stream=stream, clock=lambda: now[0])
    for done, now[0] in zip(range(1, 6), (1, 5, 11, 12, 13)):
        report(done, 5, 0)
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["3/5", "5/5"]
