"""Exact model sizes from a model folder's configs alone: the transformer, VAE and text encoders are built on the
meta device (no weights read, no memory allocated) with the same effective config the loader uses.

``sizing.py`` (standard library) takes parameter counts as numbers; this module is where they come from when
torch is at hand. Both layouts: an original-layout folder's absent keys mean EasyAnimate's own defaults and the
model YAML's ``transformer_additional_kwargs`` / ``vae_kwargs`` apply on top, exactly as in ``models/loading.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from easyanimate.models import original
from easyanimate.models.meta import count, meta_module, meta_transformer
from easyanimate.models.layout import detect_layout
from easyanimate.models.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
# A model folder that is not on the sizing machine (the login node) is sized from the published shapes of the model
# its YAML describes (data, not code: configs/shapes/*/README.md).
PUBLISHED_SHAPES = {"easyanimate_video_v5.1_magvit_qwen.yaml": REPO / "configs" / "shapes" / "v5.1-12b-control"}


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of one model folder (text encoders in the order the transformer takes them)."""

    transformer: int
    vae: int
    text_encoders: tuple[tuple[str, int], ...]

    @property
    def text_encoder_total(self) -> int:
        return sum(count for _, count in self.text_encoders)


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{path}: cannot read the config ({err}); pass the model root that holds "
                                "transformer/, vae/ and text_encoder/.") from err


def sized_folder(model_folder: str | Path | None, config_path: str | Path | None) -> tuple[Path, str | None]:
    """The folder whose configs give the sizes, and a note when it is not the model folder itself."""
    folder = Path(model_folder or "")
    if (folder / "transformer" / "config.json").is_file():
        return folder, None
    published = PUBLISHED_SHAPES.get(Path(config_path or "").name)
    if published is None:
        raise FileNotFoundError(f"--pretrained_model_name_or_path {folder}: no transformer/config.json here, and "
                                f"no published shapes for --config_path {config_path}; size the job where the "
                                "model folder is.")
    return published, (f"model folder {folder} is not on this machine: sized from the published shapes in "
                       f"{published.relative_to(REPO)}")


def transformer_kwargs(folder: str | Path, spec: ModelSpec) -> dict:
    """The kwargs diffusers' EasyAnimateTransformer3DModel is built with from this folder (either layout)."""
    from easyanimate.models.loading import _second_stream_rule

    folder = Path(folder)
    is_original = detect_layout(folder, require_weights=False) == "original"
    where = f"{folder / 'transformer'} ({'original' if is_original else 'diffusers'} layout)"
    kwargs = original.transformer_kwargs(_config(folder / "transformer"), spec.transformer_additional_kwargs,
                                         original=is_original, where=where)
    _second_stream_rule(kwargs, {}, spec, where)  # one text encoder: text_proj_t5 is dropped, as when loading
    return kwargs


def vae_kwargs(folder: str | Path, spec: ModelSpec) -> dict:
    folder = Path(folder)
    is_original = detect_layout(folder, require_weights=False) == "original"
    return original.vae_kwargs(_config(folder / "vae"), spec.vae_kwargs, original=is_original,
                               where=str(folder / "vae"))


def transformer_parameters(folder: str | Path, spec: ModelSpec) -> int:
    """Parameters of the transformer the trainer builds from ``folder`` + the model YAML."""
    return count(meta_transformer(transformer_kwargs(folder, spec)))


def vae_parameters(folder: str | Path, spec: ModelSpec) -> int:
    from diffusers import AutoencoderKLMagvit
    return count(meta_module(AutoencoderKLMagvit, vae_kwargs(folder, spec)))


def text_encoder_parameters(folder: str | Path, spec: ModelSpec) -> tuple[tuple[str, int], ...]:
    """(kind, parameters) of each text encoder the YAML asks for, from its config.json (transformers)."""
    import accelerate
    from transformers import AutoConfig

    from easyanimate.models.text import MODEL_CLASSES

    counts = []
    for slot in spec.text_encoders:
        sub = Path(folder) / slot.encoder_subfolder
        _config(sub)  # a clear error when it is missing
        config = AutoConfig.from_pretrained(sub)
        with accelerate.init_empty_weights(include_buffers=True):
            model = MODEL_CLASSES[slot.kind]._from_config(config)
        counts.append((slot.kind, count(model)))
    return tuple(counts)


def model_sizes(folder: str | Path, spec: ModelSpec) -> ModelSizes:
    return ModelSizes(transformer=transformer_parameters(folder, spec), vae=vae_parameters(folder, spec),
                      text_encoders=text_encoder_parameters(folder, spec))
