"""Model folders: their layout, strict loading into diffusers/transformers classes, text encoding, tiny models."""

from easyanimate.models.layout import Layout, ModelFolderError, detect_layout
from easyanimate.models.loading import Components, load_components, load_scheduler, load_transformer, load_vae
from easyanimate.models.original import ConfigNotHonoured, to_diffusers_layout, to_original_layout
from easyanimate.models.spec import ModelSpec, ModelSpecError, load_model_spec
from easyanimate.models.text import TextEmbeddings, TextEncoder
from easyanimate.models.weights import StrictLoadError

__all__ = [
    "Components", "ConfigNotHonoured", "Layout", "ModelFolderError", "ModelSpec", "ModelSpecError",
    "StrictLoadError", "TextEmbeddings", "TextEncoder", "detect_layout", "load_components", "load_model_spec",
    "load_scheduler", "load_transformer", "load_vae", "to_diffusers_layout", "to_original_layout",
]
