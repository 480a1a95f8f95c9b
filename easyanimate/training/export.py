"""`easyanimate export CKPT OUT`: a checkpoint's transformer as one model folder that loads without us.

The weights come from the checkpoint whichever way it was trained: accelerate's ``model.safetensors`` (plain
DDP), or under DeepSpeed ZeRO-2 the fp32 master partitions of every rank merged by DeepSpeed's own
``zero_to_fp32`` (more precise than the bf16 module copy). The config is the ``transformer/config.json`` the
Checkpointer stores in every checkpoint. ``--layout diffusers`` writes what
``EasyAnimateTransformer3DModel.from_pretrained`` reads; ``--layout original`` what EasyAnimate's own class reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch
from diffusers import EasyAnimateTransformer3DModel
from safetensors.torch import load_file

from easyanimate.training.checkpoint import MODEL_CONFIG
from easyanimate.training.manifest import CheckpointError, read_manifest, verify

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Wrappers that prefix parameter names: DDP ("module."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def consolidated_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full fp32 transformer state dict of a checkpoint, plain or ZeRO-2."""
    if read_manifest(checkpoint)["deepspeed"]:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="pytorch_model")
    else:
        state = load_file(checkpoint / "model.safetensors")
    return {_unwrapped(key): value for key, value in state.items()}


def _unwrapped(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def transformer_config(checkpoint: Path, config: Path | None = None) -> dict:
    path = config or checkpoint / MODEL_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} holds no {MODEL_CONFIG} (written by older saves): pass --config "
                              "MODEL/transformer/config.json of the model this run trained")
    return json.loads(path.read_text())


def build_transformer(config: dict, state: dict[str, torch.Tensor], where: str) -> EasyAnimateTransformer3DModel:
    """Build on the meta device and adopt ``state``'s tensors: names and shapes are checked, nothing is copied."""
    from easyanimate.models.weights import check_keys
    with torch.device("meta"):
        model = EasyAnimateTransformer3DModel.from_config(config)
    check_keys(model, state, where)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def export(checkpoint: str | Path, out: str | Path, *, layout: str = "diffusers", dtype: str = "fp32",
           config: str | Path | None = None) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    problems = verify(checkpoint, collective=False)  # may run on rank 0 alone, inside a training run
    if problems:
        raise CheckpointError(f"{checkpoint} does not verify: {'; '.join(problems)}")
    state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v
             for k, v in consolidated_state_dict(checkpoint).items()}
    model = build_transformer(transformer_config(checkpoint, config and Path(config)), state, str(checkpoint))
    temp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(temp, ignore_errors=True)
    if layout == "diffusers":
        model.save_pretrained(temp, safe_serialization=True)
    else:
        from easyanimate.models.original import save_transformer_original
        save_transformer_original(model, temp, state)
    if out.exists():
        shutil.rmtree(out)
    temp.rename(out)
    logger.info("exported %s (step %d, %s, %s layout) to %s", checkpoint, read_manifest(checkpoint)["step"],
                dtype, layout, out)
    return out


def write_run_pipeline(cfg, output_dir: str | Path) -> Path | None:
    """``output_dir/pipeline``: the run's base model with ``output_dir/transformer`` in it (see pipeline_folder)."""
    from easyanimate.models import ModelFolderError, load_model_spec
    from easyanimate.models.pipeline_folder import write_pipeline_folder
    output_dir = Path(output_dir)
    try:
        return write_pipeline_folder(output_dir / "pipeline", transformer=output_dir / "transformer",
                                     base=cfg.model_folder, spec=load_model_spec(cfg.config_path))
    except ModelFolderError as error:  # the training result itself is complete: do not fail the run over it
        logger.error("output_dir/pipeline not written: %s (output_dir/transformer is complete)", error)
        return None


def export_pipeline(checkpoint: str | Path, out: str | Path, *, base: str | None = None,
                    config_path: str | None = None, dtype: str = "fp32") -> Path:
    """A checkpoint as a pipeline folder; the base model and model YAML default to the run's (output_dir/config.json
    beside the checkpoint)."""
    from easyanimate.config import TrainConfig
    from easyanimate.models import load_model_spec
    from easyanimate.models.pipeline_folder import write_pipeline_folder
    checkpoint, out = Path(checkpoint), Path(out)
    run_config = checkpoint.parent / "config.json"
    options = json.loads(run_config.read_text()) if run_config.is_file() else {}
    base = base or options.get("pretrained_model_name_or_path")
    config_path = config_path or options.get("config_path")
    if not base or not config_path:
        raise CheckpointError(f"{checkpoint}: no run config at {run_config}; pass --base MODEL and --config_path YAML")
    model_folder = TrainConfig(pretrained_model_name_or_path=base, revision=options.get("revision")).model_folder
    transformer = export(checkpoint, out.with_name(f".{out.name}.transformer"), dtype=dtype)
    return write_pipeline_folder(out, transformer=transformer, base=model_folder,
                                 spec=load_model_spec(config_path), take_transformer=True)


def main(argv: list[str] | None = None) -> int:
    from easyanimate.logs import setup_logging
    parser = argparse.ArgumentParser(prog="easyanimate export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="output_dir/checkpoint-STEP (plain or DeepSpeed ZeRO-2)")
    parser.add_argument("out", help="folder to write: config.json + diffusion_pytorch_model.safetensors")
    parser.add_argument("--layout", choices=["diffusers", "original"], default="diffusers",
                        help="diffusers: EasyAnimateTransformer3DModel.from_pretrained(out); original: "
                             "EasyAnimate's own class (put the folder in as MODEL/transformer)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weight dtype written")
    parser.add_argument("--config", default=None, help="transformer config.json, for checkpoints without one")
    parser.add_argument("--pipeline", action="store_true",
                        help="write a whole model folder: the base model with this transformer in it, other "
                             "components linked (V5.1: a diffusers pipeline folder; V5: EasyAnimate's layout)")
    parser.add_argument("--base", default=None, help="--pipeline: the base model (default: the run's)")
    parser.add_argument("--config_path", default=None, help="--pipeline: the model YAML (default: the run's)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.pipeline:
            export_pipeline(args.checkpoint, args.out, base=args.base, config_path=args.config_path, dtype=args.dtype)
        else:
            export(args.checkpoint, args.out, layout=args.layout, dtype=args.dtype, config=args.config)
    except CheckpointError as error:
        logger.error("%s", error)
        return 2
    return 0
