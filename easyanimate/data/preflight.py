"""``easyanimate check-data``: read every metadata entry before training and report each problem with its fix.

Each entry is checked in a thread pool (decord and Pillow release the GIL): both files exist, decode (first and
last frame), have the declared type, the control video is as long as the video and has its aspect ratio, the
caption is not empty, the video is long enough for one clip. Errors make a sample unusable; warnings train but
probably not as intended. The exit status is 1 when errors exceed ``--max_bad_sample_fraction`` of the entries.
``--write_meta`` writes the metadata back with width/height added, so training starts without probing files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .metadata import MetadataError, Sample, parse_entry, read_entries
from .video import MediaError, MediaInfo, VideoClip, read_image

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".mpeg", ".mpg", ".ts"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
ASPECT_TOLERANCE = 0.02

FIXES = {
    "malformed-metadata": "fix the entry so it is an object with file_path, control_file_path, text and type",
    "missing-file": "check the path; relative paths are joined onto --train_data_dir",
    "undecodable": "re-encode it (ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT) or remove the entry",
    "type-mismatch": "set 'type' to match the file (video or image), or point the entry at the right file",
    "control-too-short": "render the control video with as many frames as the video",
    "control-aspect": "render the control at the video's aspect ratio; it would be stretched to fit",
    "control-size": "none needed (resized to match); rendering at the video's size avoids the resize",
    "empty-text": "add a caption (the trainer already drops captions for CFG, --text_drop_ratio)",
    "short-video": "trains with fewer frames or a smaller stride; use longer clips or a smaller "
                   "--video_sample_stride",
}
ERRORS = {"malformed-metadata", "missing-file", "undecodable", "type-mismatch", "control-too-short",
          "control-aspect"}


@dataclass(frozen=True)
class Problem:
    entry: Optional[int]
    kind: str
    path: str
    detail: str

    @property
    def severity(self) -> str:
        return "error" if self.kind in ERRORS else "warning"

    def line(self) -> str:
        where = "file" if self.entry is None else f"entry {self.entry}"
        path = f"{self.path}: " if self.path else ""
        return f"{self.severity:<7} {where}: [{self.kind}] {path}{self.detail}. Fix: {FIXES[self.kind]}."


@dataclass(frozen=True)
class CheckOptions:
    n_frames: int = 49
    stride: int = 1


def _suffix_kind(path: str) -> Optional[str]:
    suffix = Path(path).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "image" if suffix in IMAGE_SUFFIXES else None


def _inspect(path: str, data_type: str) -> MediaInfo:
    """Size and length, decoding the first and last frame (catches truncated files)."""
    if data_type == "image":
        frames = read_image(path)
        return MediaInfo(frames.shape[1], frames.shape[2], 1)
    with VideoClip(path, num_threads=1) as clip:
        if len(clip) == 0:
            raise MediaError(f"{path}: video has no frames.")
        frames = clip.get([0, len(clip) - 1])
        return MediaInfo(frames.shape[1], frames.shape[2], len(clip))


def _open(entry: int, path: str, data_type: str, problems: list[Problem]) -> Optional[MediaInfo]:
    if not os.path.exists(path):
        problems.append(Problem(entry, "missing-file", path, "does not exist"))
        return None
    kind = _suffix_kind(path)
    if kind is not None and kind != data_type:
        problems.append(Problem(entry, "type-mismatch", path, f"entry says {data_type}, the file is a {kind}"))
        return None
    try:
        return _inspect(path, data_type)
    except MediaError as err:
        problems.append(Problem(entry, "undecodable", path, str(err).removeprefix(f"{path}: ").rstrip(".")))
        return None


def _compare(sample: Sample, video: MediaInfo, control: MediaInfo, options: CheckOptions) -> list[Problem]:
    problems = []
    path = sample.control_file_path
    if control.frames < video.frames:
        problems.append(Problem(sample.index, "control-too-short", path,
                                f"{control.frames} frames, the video has {video.frames}"))
    ratio = (control.width / control.height) / (video.width / video.height)
    if abs(ratio - 1) > ASPECT_TOLERANCE:
        problems.append(Problem(sample.index, "control-aspect", path, f"{control.width}x{control.height}, the "
                                f"video is {video.width}x{video.height}"))
    elif (control.width, control.height) != (video.width, video.height):
        problems.append(Problem(sample.index, "control-size", path, f"{control.width}x{control.height}, the "
                                f"video is {video.width}x{video.height}"))
    clip = (options.n_frames - 1) * options.stride + 1
    if sample.data_type == "video" and video.frames < clip:
        problems.append(Problem(sample.index, "short-video", sample.file_path,
                                f"{video.frames} frames, a clip of {options.n_frames} frames at stride "
                                f"{options.stride} spans {clip}"))
    return problems


def check_entry(index: int, raw: Any, data_dir: Optional[str], options: CheckOptions
                ) -> tuple[list[Problem], Optional[MediaInfo]]:
    """Every problem of one entry, and the video's MediaInfo when it is usable."""
    if isinstance(raw, MetadataError):
        return [Problem(index, "malformed-metadata", "", str(raw))], None
    try:
        sample = parse_entry(index, raw, data_dir)
    except MetadataError as err:
        return [Problem(index, "malformed-metadata", "", str(err).removeprefix(f"entry {index}: ").rstrip("."))], None
    problems = [] if sample.text.strip() else [Problem(index, "empty-text", sample.file_path, "caption is empty")]
    video = _open(index, sample.file_path, sample.data_type, problems)
    control = _open(index, sample.control_file_path, sample.data_type, problems)
    if video is None or control is None:
        return problems, None
    return problems + _compare(sample, video, control, options), video


@dataclass
class Report:
    entries: int
    problems: list[Problem]
    sizes: dict[int, MediaInfo]

    @property
    def bad_entries(self) -> int:
        return len({p.entry for p in self.problems if p.severity == "error"})

    def summary(self) -> str:
        counts = Counter(p.kind for p in self.problems)
        rows = [f"{'problem':<20} {'severity':<8} {'count':>7}  first example"]
        for kind, count in counts.most_common():
            first = next(p for p in self.problems if p.kind == kind)
            where = "file" if first.entry is None else f"entry {first.entry}"
            rows.append(f"{kind:<20} {first.severity:<8} {count:>7}  {where}: {first.path}")
        rows.append(f"{self.entries} entries, {self.bad_entries} unusable, "
                    f"{len({p.entry for p in self.problems}) - self.bad_entries} with warnings only")
        return "\n".join(rows)


def check_data(meta_path: str | Path, data_dir: Optional[str], options: CheckOptions = CheckOptions(),
               workers: int = 16, progress: Optional[Callable[[int, int, int], None]] = None) -> Report:
    """Check every entry of the metadata file; ``progress(done, total, unusable)`` after each entry."""
    if not Path(meta_path).is_file():
        return Report(0, [Problem(None, "missing-file", str(meta_path), "the metadata file does not exist")], {})
    try:
        raws = read_entries(meta_path, lenient=True)
    except MetadataError as err:
        detail = str(err).removeprefix(f"{meta_path}: ").rstrip(".")
        return Report(0, [Problem(None, "malformed-metadata", str(meta_path), detail)], {})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results, unusable = [], 0
        for found, size in pool.map(lambda item: check_entry(*item, data_dir, options), enumerate(raws)):
            results.append((found, size))
            unusable += any(p.severity == "error" for p in found)
            if progress:
                progress(len(results), len(raws), unusable)
    problems = [p for found, _ in results for p in found]
    return Report(len(raws), problems, {i: size for i, (_, size) in enumerate(results) if size is not None})


def write_meta(report: Report, meta_path: str | Path, out: Path) -> int:
    """Usable entries of the metadata, with width and height added; returns how many were written."""
    raws = read_entries(meta_path, lenient=True)
    bad = {p.entry for p in report.problems if p.severity == "error"}
    kept = [dict(raw, width=report.sizes[i].width, height=report.sizes[i].height)
            for i, raw in enumerate(raws) if i not in bad and i in report.sizes]
    out.write_text(json.dumps(kept, indent=1, ensure_ascii=False) + "\n")
    return len(kept)


class ProgressReport:
    """check-data's progress on stderr: a tqdm bar on a terminal, else a count line every ``every_s`` seconds
    and at the end (big datasets take minutes; a silent command looks hung)."""

    def __init__(self, every_s: float, stream=None, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.stream, self.clock = every_s, stream or sys.stderr, clock
        self.started = self.last = clock()
        self.bar = None
        if self.stream.isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(unit="entry", desc="check-data", file=self.stream, dynamic_ncols=True)

    def __call__(self, done: int, total: int, unusable: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(unusable=unusable)
            if done == total:
                self.bar.close()
            return
        now = self.clock()
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        print(f"check-data: {done}/{total} entries checked ({rate:.1f}/s), {unusable} unusable so far",
              file=self.stream, flush=True)


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easyanimate check-data", description=__doc__.splitlines()[0])
    parser.add_argument("--train_data_meta", required=True, help="metadata_control.json (or .jsonl, .csv).")
    parser.add_argument("--train_data_dir", default=None, help="Folder relative paths are joined onto.")
    parser.add_argument("--video_sample_n_frames", type=int, default=49, help="Frames per clip in training.")
    parser.add_argument("--video_sample_stride", type=int, default=1, help="Frame stride in training.")
    parser.add_argument("--max_bad_sample_fraction", type=float, default=0.0,
                        help="Exit 1 when more than this fraction of entries is unusable.")
    parser.add_argument("--workers", type=int, default=16, help="Threads checking entries.")
    parser.add_argument("--progress_every_s", type=float, default=10.0,
                        help="Print a progress count this often (seconds) when stderr is not a terminal.")
    parser.add_argument("--json", type=Path, default=None, help="Also write every problem to this JSON file.")
    parser.add_argument("--write_meta", type=Path, default=None,
                        help="Write the usable entries with width/height added (training then skips probing).")
    args = parser.parse_args(argv)
    report = check_data(args.train_data_meta, args.train_data_dir,
                        CheckOptions(args.video_sample_n_frames, args.video_sample_stride), args.workers,
                        ProgressReport(args.progress_every_s))
    _print(p.line() for p in sorted(report.problems, key=lambda p: (p.entry is not None, p.entry or 0, p.kind)))
    print()
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps([dict(asdict(p), severity=p.severity, fix=FIXES[p.kind])
                                         for p in report.problems], indent=1) + "\n")
    if args.write_meta:
        print(f"wrote {write_meta(report, args.train_data_meta, args.write_meta)} usable entries to "
              f"{args.write_meta}")
    failed = report.entries == 0 or report.bad_entries > args.max_bad_sample_fraction * report.entries
    if failed:
        print(f"check-data: {report.bad_entries} of {report.entries} entries unusable (limit "
              f"{args.max_bad_sample_fraction:.2%}).", file=sys.stderr)
    return 1 if failed else 0
