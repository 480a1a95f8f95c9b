"""The GPU check's model folder and data, made on the spot (nothing is downloaded).

The model: the seed's V5.1 layout with a transformer of the real 12B model's widths (diffusers' defaults for
EasyAnimateTransformer3DModel: 48 heads x 64, time embedding 512, patch 2) and a few layers, the real VAE
(AutoencoderKLMagvit's defaults: 16 latent channels, 128-512 wide), random weights. The text encoder is the tiny
one of ``make_tiny_model`` (a real-shape Qwen2-VL 7B would take the check's minutes and memory; only its output
width differs, which changes one small input projection of the transformer). ``tiny=True`` (the dry run) keeps
everything at ``make_tiny_model``'s sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from easyanimate.data.demo import make_demo_data
from easyanimate.models import tiny as tiny_models

LATENT_CHANNELS = 16
CONDITIONS = 3  # noisy, control, reference latents (V5.1 control_ref)


def make_model(out: Path, *, layers: int, tiny: bool, device: str = "cpu") -> Path:
    """A V5.1 model folder at ``out``: tiny throughout, or a transformer and VAE at the real widths."""
    if out.exists():
        shutil.rmtree(out)
    tiny_models.make_tiny_model("v5.1", out)
    if tiny:
        return out
    from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel
    text_width = tiny_models.HIDDEN["qwen2_vl"]
    with torch.device(device):
        torch.manual_seed(0)
        transformer = EasyAnimateTransformer3DModel(
            in_channels=CONDITIONS * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=2,
            num_layers=layers, mmdit_layers=layers, text_embed_dim=text_width, enable_text_attention_mask=True)
        vae = AutoencoderKLMagvit(latent_channels=LATENT_CHANNELS)
    for name, module in (("transformer", transformer), ("vae", vae)):
        shutil.rmtree(out / name)
        module.to(torch.bfloat16 if name == "transformer" else torch.float32).save_pretrained(out / name)
    del transformer, vae
    return out


def transformer_parameters(model: Path) -> int:
    """Parameter count from the saved weights' shapes (no weights are loaded)."""
    from safetensors import safe_open
    total = 0
    for file in sorted((model / "transformer").glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                count = 1
                for size in handle.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def make_data(out: Path, *, tiny: bool, copies: int = 4) -> Path:
    """Videos and images with their control files; the metadata lists each pair ``copies`` times (more batches
    per epoch without more decoding work to prepare). Returns the metadata path."""
    if out.exists():
        shutil.rmtree(out)
    if tiny:
        meta = make_demo_data(out)
    else:
        # Longer than 49 frames x stride 3; side 384 (resized to the 256 video buckets), images at 1024.
        meta = make_demo_data(out, num_videos=8, num_images=0, side=384, frames=(150, 160), fps=24)
        images = make_demo_data(out / "images", num_videos=0, num_images=4, side=1024, frames=(1,))
        rows = json.loads(Path(meta).read_text())
        for row in json.loads(Path(images).read_text()):
            rows.append({**row, "file_path": f"images/{row['file_path']}",
                         "control_file_path": f"images/{row['control_file_path']}"})
        Path(meta).write_text(json.dumps(rows, indent=2))
    rows = json.loads(Path(meta).read_text())
    Path(meta).write_text(json.dumps([dict(row, text=f"{row['text']} (copy {k})") for k in range(copies)
                                      for row in rows], indent=2))
    return Path(meta)
