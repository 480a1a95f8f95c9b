"""When should decord scale a video while decoding, rather than decode full frames and resize them in torch?

For each source size, times (best of ``--repeats``) one clip's 25 frames: decord at full size plus the loader's
torch resize, against decord scaling to the same cover size inside the decoder; both with the allocator the
loader's workers use. ``easyanimate.data.transforms.SCALE_IN_DECODER_BELOW`` comes from this table.

    python benchmarks/decoder_scaling.py        # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from easyanimate.data.allocator import keep_freed_memory  # noqa: E402
from easyanimate.data.demo import _render_frame, _scene, _write_video  # noqa: E402
from easyanimate.data.transforms import cover_size, resize_clip  # noqa: E402
from easyanimate.data.video import VideoClip  # noqa: E402

# (source width, height, target height, width): the 512 video bucket's 384x672 and a halved square.
CASES = ((1920, 1080, 384, 672), (1280, 720, 384, 672), (1024, 576, 384, 672), (512, 512, 256, 256))


def best_ms(work, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=25)
    args = parser.parse_args(argv)
    keep_freed_memory()
    indices = list(range(0, 2 * args.frames, 2))
    print(f"{'source':<11} {'cover':<9} {'pixels':>6} {'full+resize ms':>15} {'in decoder ms':>14} {'decoder/full':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for width, height, target_h, target_w in CASES:
            path = Path(tmp) / f"{width}x{height}.mp4"
            _write_video(path, np.stack([_render_frame(s, height, width, (200, 60, 60), 0.2 * k)
                                         for k, s in enumerate(_scene(height, width, 2 * args.frames, 0))]), fps=24)
            cover = cover_size(height, width, target_h, target_w)

            def full():
                with VideoClip(str(path)) as clip:
                    resize_clip(clip.get(indices), target_h, target_w).contiguous()

            def scaled():
                with VideoClip(str(path), size=cover) as clip:
                    clip.get(indices)

            full_ms, scaled_ms = best_ms(full, args.repeats), best_ms(scaled, args.repeats)
            share = cover[0] * cover[1] / (height * width)
            print(f"{width}x{height:<6} {cover[1]}x{cover[0]:<5} {share:>6.2f} {full_ms:>15.1f} {scaled_ms:>14.1f} "
                  f"{scaled_ms / full_ms:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
