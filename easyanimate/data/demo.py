"""A small real dataset: mp4 videos (H.264) with aligned control videos, images with control images, metadata.

Each clip shows a ball and a block moving over a coloured gradient; its control clip is a pose-like drawing
of the same scene (the ball's outline, the block's outline and a limb joining them, white on black), rendered
from the same positions frame by frame, so control and video stay aligned. A few aspect ratios are mixed.
``easyanimate make-demo-data OUT`` writes it; tests call ``make_demo_data`` directly.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ASPECTS = ((1, 1), (3, 5), (5, 3))  # (h, w) proportions
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def _scene(height: int, width: int, frames: int, seed: int) -> list[dict]:
    """Per-frame positions of the ball and the block, moving on straight lines."""
    rand = np.random.default_rng(seed)
    start, end = rand.uniform(0.2, 0.8, size=(2, 2, 2))
    radius = max(3.0, min(height, width) / 8)
    path = []
    for t in np.linspace(0.0, 1.0, frames):
        ball, block = (1 - t) * start + t * end
        path.append({"ball": (ball[0] * height, ball[1] * width), "block": (block[0] * height, block[1] * width),
                     "radius": radius})
    return path


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:height, 0:width].astype(np.float32)


def _render_frame(state: dict, height: int, width: int, colour: tuple[int, int, int], phase: float) -> np.ndarray:
    yy, xx = _grid(height, width)
    frame = np.empty((height, width, 3), np.float32)
    frame[..., 0] = 60 + 80 * xx / width
    frame[..., 1] = 40 + 100 * yy / height
    frame[..., 2] = 90 + 60 * np.sin(phase + xx / width * np.pi)
    ball = np.hypot(yy - state["ball"][0], xx - state["ball"][1]) <= state["radius"]
    block = (np.abs(yy - state["block"][0]) <= state["radius"]) & (np.abs(xx - state["block"][1]) <= state["radius"])
    frame[ball] = colour
    frame[block] = (240, 240, 240)
    return frame.astype(np.uint8)


def _render_control(state: dict, height: int, width: int) -> np.ndarray:
    yy, xx = _grid(height, width)
    r = state["radius"]
    ring = np.abs(np.hypot(yy - state["ball"][0], xx - state["ball"][1]) - r) <= 1.0
    dy, dx = np.abs(yy - state["block"][0]), np.abs(xx - state["block"][1])
    square = (np.maximum(dy, dx) <= r) & (np.maximum(dy, dx) >= r - 1.5)
    (y0, x0), (y1, x1) = state["ball"], state["block"]
    t = np.clip(((yy - y0) * (y1 - y0) + (xx - x0) * (x1 - x0)) / max((y1 - y0) ** 2 + (x1 - x0) ** 2, 1e-6), 0, 1)
    limb = np.hypot(yy - (y0 + t * (y1 - y0)), xx - (x0 + t * (x1 - x0))) <= 0.8
    drawing = np.zeros((height, width, 3), np.uint8)
    drawing[ring | square | limb] = 255
    return drawing


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=fps)


def _write_image(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(image).save(path, **options)


def _size(side: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of about side^2 pixels with the given proportions, both even (H.264 needs even sides)."""
    scale = side / np.sqrt(aspect[0] * aspect[1])
    return int(round(aspect[0] * scale / 2)) * 2, int(round(aspect[1] * scale / 2)) * 2


def make_demo_data(out: Path, *, num_videos: int = 6, num_images: int = 4, side: int = 64,
                   frames: tuple[int, ...] = (17, 21, 25), fps: int = 8, seed: int = 0) -> Path:
    """Write the dataset under ``out``; returns the path of metadata_control.json (paths in it are relative)."""
    out = Path(out)
    entries = []
    names = list(COLOURS)
    for i in range(num_videos + num_images):
        is_video = i < num_videos
        height, width = _size(side, ASPECTS[i % len(ASPECTS)])
        length = frames[i % len(frames)] if is_video else 1
        colour = names[i % len(names)]
        path = _scene(height, width, length, seed * 1000 + i)
        clip = np.stack([_render_frame(s, height, width, COLOURS[colour], 0.3 * k) for k, s in enumerate(path)])
        control = np.stack([_render_control(s, height, width) for s in path])
        stem = f"{i + 1:08d}"
        if is_video:
            video, control_path = f"train/{stem}.mp4", f"control/{stem}.mp4"
            _write_video(out / video, clip, fps)
            _write_video(out / control_path, control, fps)
        else:
            suffix = ".jpg" if i % 2 else ".png"
            video, control_path = f"train/{stem}{suffix}", f"control/{stem}{suffix}"
            _write_image(out / video, clip[0])
            _write_image(out / control_path, control[0])
        entries.append({"file_path": video, "control_file_path": control_path,
                        "text": f"A {colour} ball and a white block drift across a soft gradient ({width}x{height}).",
                        "type": "video" if is_video else "image"})
    meta = out / "metadata_control.json"
    meta.write_text(json.dumps(entries, indent=2) + "\n")
    logger.info("wrote %d videos and %d images to %s", num_videos, num_images, out)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easyanimate make-demo-data", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Folder to write (created if missing).")
    parser.add_argument("--num_videos", type=int, default=6)
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--side", type=int, default=64, help="Frames hold about side x side pixels.")
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 21, 25], help="Video lengths, cycled.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    meta = make_demo_data(args.out, num_videos=args.num_videos, num_images=args.num_images, side=args.side,
                          frames=tuple(args.frames), seed=args.seed)
    print(meta)
    return 0
