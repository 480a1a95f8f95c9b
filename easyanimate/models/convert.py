"""``easyanimate convert-model SRC OUT``: write a complete diffusers-layout folder from either layout.

The transformer and VAE go through the same strict loader as training (so a folder that converts is a folder
that trains), then are saved by diffusers in their stored precision. Text encoders, tokenizers and the scheduler
are already in transformers'/diffusers' format and are copied. The result loads with diffusers'
``from_pretrained`` without a warning; model_index.json names each component's class.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import diffusers

from easyanimate.models.layout import detect_layout
from easyanimate.models.loading import load_transformer, load_vae
from easyanimate.models.spec import ModelSpec, load_model_spec
from easyanimate.models.weights import stored_dtype

logger = logging.getLogger(__name__)


def _model_type(encoder_folder: Path) -> str | None:
    config = encoder_folder / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def spec_from_folder(folder: Path) -> ModelSpec:
    """Text-encoder switches read from the folder itself, for conversions without a model YAML."""
    types = {_model_type(folder / "text_encoder"), _model_type(folder / "text_encoder_2")}
    return ModelSpec(enable_multi_text_encoder=(folder / "text_encoder_2").is_dir(),
                     replace_t5_to_llm="qwen2_vl" in types)


def _index_entry(folder: Path) -> list[str]:
    if (folder / "scheduler_config.json").is_file():
        return ["diffusers", json.loads((folder / "scheduler_config.json").read_text())["_class_name"]]
    if (folder / "tokenizer_config.json").is_file():
        return ["transformers", json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]]
    return ["transformers", json.loads((folder / "config.json").read_text())["architectures"][0]]


def convert_model(src: str | Path, out: str | Path, spec: ModelSpec | None = None) -> Path:
    src, out = Path(src), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    layout = detect_layout(src)
    spec = spec or spec_from_folder(src)
    logger.info("converting %s (%s layout) to a diffusers-layout folder at %s", src, layout, out)
    transformer = load_transformer(src, spec, layout=layout, dtype=stored_dtype(src / "transformer"))
    vae = load_vae(src, spec, layout=layout, dtype=stored_dtype(src / "vae"))
    transformer.save_pretrained(out / "transformer")
    vae.save_pretrained(out / "vae")
    index = {"transformer": ["diffusers", type(transformer).__name__], "vae": ["diffusers", type(vae).__name__]}
    subfolders = ["scheduler"] + [name for slot in spec.text_encoders
                                  for name in (slot.encoder_subfolder, slot.tokenizer_subfolder)]
    for name in subfolders:
        shutil.copytree(src / name, out / name)
        index[name] = _index_entry(out / name)
    index = {"_class_name": "EasyAnimateControlPipeline", "_diffusers_version": diffusers.__version__, **index}
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    logger.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easyanimate convert-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="model folder, EasyAnimate's original layout or diffusers'")
    parser.add_argument("out", type=Path, help="new folder to write (must not exist or be empty)")
    parser.add_argument("--config_path", type=Path, default=None,
                        help="the model YAML you train with; its transformer/vae kwargs become part of the "
                             "converted config (default: text encoders read from the folder, no extra kwargs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = load_model_spec(args.config_path) if args.config_path else None
    convert_model(args.src, args.out, spec)
    return 0
