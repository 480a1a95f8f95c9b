"""Data loader throughput next to raw decord decoding of the same frames, in one run.

Generates H.264 clips at 512x512 and 1024x576 (each its own control video) for 512 buckets, 1344x768 clips (the
16:9 bucket itself) for the seed's 1024 video buckets and 1024x1024 JPEG images for its 1024 image buckets, then
for each case measures:
- raw: decord ``get_batch`` of exactly the frames the loader reads (video + control), or Pillow's decode of the
  image and its control, nothing else;
- loader: the full training DataLoader (decode + frame selection + resize/crop + collate to float [-1, 1]),
  with 1 worker and with N workers;
and reports samples/s, frames/s (video + control frames decoded), the loader/raw throughput ratio, the CPU-time
ratio (raw CPU per sample / loader CPU per sample over the main process and its workers: a measure that a busy
machine disturbs less) and the peak RSS of each worker process. Raw and loader are timed in pairs, one right
after the other on the same epoch's frames, ``--rounds`` times; each ratio is the median over the pairs, so a
machine whose load changes during the run moves both sides of a pair alike. The first batch of every pass
(worker start-up, the prefetch filling) is not timed.

    python benchmarks/data_loader.py --uint8_pixels  # about 3 minutes on 2 cores
    python benchmarks/data_loader.py --workers 8 --samples 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from easyanimate.config import parse_args  # noqa: E402
from easyanimate.data import build_train_dataloader  # noqa: E402
from easyanimate.data.allocator import keep_freed_memory  # noqa: E402
from easyanimate.data.demo import _render_frame, _scene, _write_image, _write_video  # noqa: E402
from easyanimate.data.video import VideoClip, read_image  # noqa: E402

# (data type, source width, source height, bucket side: None = --size); the last two are the seed's 1024 buckets.
CASES = (("video", 512, 512, None), ("video", 1024, 576, None), ("video", 1344, 768, 1024),
         ("image", 1024, 1024, 1024))


def make_media(folder: Path, kind: str, width: int, height: int, count: int, length: int, copies: int) -> Path:
    """``count`` clips of ``length`` frames (or images), each its own control, listed ``copies`` times."""
    entries = []
    for i in range(count):
        path = folder / f"{width}x{height}_{i}.{'mp4' if kind == 'video' else 'jpg'}"
        if not path.exists():
            frames = np.stack([_render_frame(s, height, width, (200, 60, 60), 0.2 * k)
                               for k, s in enumerate(_scene(height, width, length if kind == "video" else 1, i))])
            if kind == "video":
                _write_video(path, frames, fps=24)
            else:
                _write_image(path, frames[0])
        entries.append({"file_path": str(path), "control_file_path": str(path), "text": f"clip {i}",
                        "type": kind, "width": width, "height": height})
    meta = folder / f"meta_{kind}_{width}x{height}.json"
    meta.write_text(json.dumps(entries * copies))
    return meta


def config(meta: Path, args, workers: int, repeat: int, size: int):
    return parse_args([f"--train_data_meta={meta}", "--enable_bucket", "--train_batch_size=1", "--seed=0",
                       f"--video_sample_size={size}", f"--image_sample_size={size}",
                       f"--token_sample_size={size}", f"--video_sample_n_frames={args.frames}",
                       f"--video_sample_stride={args.stride}", f"--video_repeat={repeat}",
                       f"--dataloader_num_workers={workers}", "--text_drop_ratio=0"])


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def time_raw(train) -> tuple[float, float]:
    """(wall, CPU) seconds per sample for decord alone (full-size decode), reading the frames the loader reads
    in the sampler's current epoch."""
    dataset, requests = train.dataset, [b[0] for b in train.sampler]

    def decode(request):
        sample = dataset.samples[request.index]
        if sample.data_type == "image":
            read_image(sample.file_path), read_image(sample.control_file_path)
            return
        with VideoClip(sample.file_path) as video:
            indices = dataset.clip_indices(request, len(video))
            video.get(indices)
        with VideoClip(sample.control_file_path) as control:
            control.get(indices)

    decode(requests[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for request in requests[1:]:
        decode(request)
    return (time.perf_counter() - wall) / (len(requests) - 1), (time.process_time() - cpu) / (len(requests) - 1)


def time_loader(train) -> tuple[float, float, list[float], tuple]:
    """(wall, CPU of main + workers) seconds per sample of the full DataLoader over the sampler's current epoch,
    its workers' peak RSS, the batch shape."""
    iterator = iter(train.loader)
    first = next(iterator)
    pids = [os.getpid()] + [w.pid for w in train.loader._iterator._workers]  # private; only to read the pids
    wall, cpu, count = time.perf_counter(), cpu_seconds(pids), 0
    for _ in iterator:
        count += 1
    wall, cpu = time.perf_counter() - wall, cpu_seconds(pids) - cpu
    rss = [peak_rss_mib(pid) for pid in pids[1:]]
    return wall / max(count, 1), cpu / max(count, 1), rss, tuple(first["pixel_values"].shape)


def time_pairs(train, rounds: int) -> dict:
    """Raw then loader on the same epoch, ``rounds`` times (epochs 0, 1, ...): medians of the pairs."""
    pairs = []
    for epoch in range(rounds):
        train.sampler.set_epoch(epoch)
        raw, raw_cpu = time_raw(train)
        per_sample, cpu, rss, shape = time_loader(train)
        pairs.append((raw, raw_cpu, per_sample, cpu))
    raw, raw_cpu, per_sample, cpu = (statistics.median(column) for column in zip(*pairs))
    decoded = 2 * shape[1]  # video + control frames per sample
    return {"target": f"{shape[-1]}x{shape[-2]}x{shape[1]}", "raw_samples_s": 1 / raw,
            "loader_samples_s": 1 / per_sample, "loader_frames_s": decoded / per_sample,
            "ratio": statistics.median(r / p for r, _, p, _ in pairs),
            "cpu_ratio": statistics.median(rc / c for _, rc, _, c in pairs),
            "peak_rss_mib_per_worker": [round(r) for r in rss]}


def run(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, width, height, size in CASES:
            size = size or args.size
            samples = args.image_samples if kind == "image" else args.samples
            repeat = -(-samples // args.clips)
            # Images appear once per epoch: list them `repeat` times instead of repeating videos.
            copies = repeat if kind == "image" else 1
            meta = make_media(Path(tmp), kind, width, height, args.clips, args.length, copies)
            for workers in sorted({1, args.workers}):
                train = build_train_dataloader(config(meta, args, workers, repeat, size), rank=0, world_size=1,
                                               float_pixels=not args.uint8_pixels)
                rows.append({"source": f"{kind} {width}x{height}", "bucket": size, "workers": workers,
                             **time_pairs(train, args.rounds)})
                del train
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="N for the N-worker run.")
    parser.add_argument("--samples", type=int, default=16, help="Video samples per epoch (one timed pass).")
    parser.add_argument("--image_samples", type=int, default=128,
                        help="Image samples per epoch (an image decodes ~20x faster than a 25-frame clip).")
    parser.add_argument("--rounds", type=int, default=3, help="Raw/loader pairs per case; ratios are medians.")
    parser.add_argument("--clips", type=int, default=4, help="Distinct clips per resolution.")
    parser.add_argument("--length", type=int, default=49, help="Frames per generated clip.")
    parser.add_argument("--frames", type=int, default=25, help="--video_sample_n_frames.")
    parser.add_argument("--stride", type=int, default=2, help="--video_sample_stride.")
    parser.add_argument("--size", type=int, default=512, help="--video_sample_size (bucket side).")
    parser.add_argument("--uint8_pixels", action="store_true",
                        help="Leave pixels uint8 (float_pixels=False): the conversion then belongs to the GPU.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args(argv)
    # Raw decoding runs here with the allocator the loader's workers use, so the ratio compares the same decode.
    keep_freed_memory()
    rows = run(args)
    print(f"{'source':<16} {'bucket':>6} {'batch WxHxF':<13} {'workers':>7} {'raw smp/s':>10} {'loader smp/s':>13} "
          f"{'frames/s':>9} {'loader/raw':>10} {'CPU raw/loader':>15}  peak RSS/worker MiB")
    for r in rows:
        print(f"{r['source']:<16} {r['bucket']:>6} {r['target']:<13} {r['workers']:>7} {r['raw_samples_s']:>10.2f} "
              f"{r['loader_samples_s']:>13.2f} {r['loader_frames_s']:>9.1f} {r['ratio']:>10.2f} "
              f"{r['cpu_ratio']:>15.2f}  {r['peak_rss_mib_per_worker']}")
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"main process peak RSS {main_rss:.0f} MiB; cpu count {os.cpu_count()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
