"""The memory plan: what one GPU of a training job will hold, estimated before the job is submitted.

Resident: the transformer's weights, gradients, optimizer state and EMA as the trainer lays them out (``sizing``'s
bytes per parameter for ZeRO-2 or plain DDP), the VAE and text encoder every rank keeps (``models/loading.py``:
VAE on the GPU, text encoder on the GPU unless ``--low_vram`` / ``--enable_text_encoder_in_dataloader``), the
CUDA context. Transient, one at a time on top of it: the forward + backward at the largest batch the token budget
allows (counted at real shapes by ``activations``), the VAE encode of that batch, the text encoder's visit to the
GPU when it is offloaded, and on rank 0 the validation video (a no-grad forward with guidance, then the decode).
Parameter counts come from the model folder's configs (``shapes``); nothing is loaded or allocated.

``python slurm/submit.py ... --dry-run`` prints the plan and warns before sbatch when it will not fit the GPU the
request names; ``easyanimate memory-plan`` does the same for a plain ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from easyanimate import sizing
from easyanimate.config import TrainConfig

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    """What decides memory: the training flags and where they run."""
    cfg: TrainConfig
    nodes: int = 1
    gpus_per_node: int = 8
    deepspeed: bool = False
    zero: dict = field(default_factory=dict)     # the ZeRO JSON's zero_optimization block
    gpu: str | None = None


@dataclass(frozen=True)
class Batch:
    kind: str
    frames: int
    height: int
    width: int
    batch: int      # train_batch_size x the collate's tiling
    tiled: int

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // 4 + 1


def largest_batch(cfg: TrainConfig) -> Batch:
    """The batch with the most transformer tokens the bucket and token-budget rules can produce."""
    from easyanimate.data import buckets

    rules = buckets.SizeRules.from_config(cfg)
    found = []
    for kind in ("image", "video"):
        for bucket in range(len(buckets.ASPECT_BUCKETS)) if cfg.enable_bucket else [buckets.SQUARE]:
            for side in buckets.candidate_sides(rules, kind, bucket, None):
                height, width = buckets.bucket_size(bucket, side)
                frames = 1 if kind == "image" else buckets.frame_count(rules, height, width)
                tiled = buckets.tile_factor(rules, frames, height, width)
                tokens = buckets.latent_tokens(frames, height, width) * tiled
                found.append((tokens, frames * height * width, Batch(kind, frames, height, width,
                                                                      cfg.train_batch_size * tiled, tiled)))
    return max(found, key=lambda item: item[:2])[2]


@dataclass
class Plan:
    job: Job
    folder: str
    folder_note: str | None
    sizes: object                      # shapes.ModelSizes
    trainable: int
    batch: Batch
    text_tokens: int
    resident: list[tuple[str, float, str]]
    activations: dict[bool, float]     # gradient checkpointing on/off -> peak bytes
    transients: list[tuple[str, float, str]]
    validation: float | None           # rank 0's extra peak during validation, None without validation

    @property
    def resident_bytes(self) -> float:
        return sum(b for _, b, _ in self.resident)

    @property
    def training_peak(self) -> float:
        return self.resident_bytes + max(b for _, b, _ in self.transients)

    @property
    def peak(self) -> float:
        return max(self.training_peak, self.resident_bytes + (self.validation or 0))

    @property
    def gpu_bytes(self) -> int | None:
        return sizing.gpu_memory_bytes(self.job.gpu) if self.job.gpu else None

    def warnings(self) -> list[str]:
        capacity = self.gpu_bytes
        if capacity is None:
            return [] if self.job.gpu is None else [f"GPU type {self.job.gpu!r} unknown to the memory plan "
                                                    f"(known: {', '.join(sorted(sizing.GPU_MEMORY_MIB))})."]
        out = []
        where = "validation on rank 0" if self.peak > self.training_peak else "training"
        if self.peak > sizing.FIT_FRACTION * capacity:
            verdict = "will not fit" if self.peak > capacity else "leaves under " \
                f"{100 * (1 - sizing.FIT_FRACTION):.0f}% head-room (allocator fragmentation makes an OOM likely)"
            out.append(f"memory: the estimated per-GPU peak ({where}) {_gib(self.peak)} {verdict} on "
                       f"{self.job.gpu} ({_gib(capacity)}). {self._advice()}")
        return out

    def _advice(self) -> str:
        cfg, tips = self.job.cfg, []
        if not cfg.gradient_checkpointing and self.activations[False] > self.activations[True]:
            tips.append(f"--gradient_checkpointing (activations {_gib(self.activations[False])} -> "
                        f"{_gib(self.activations[True])})")
        if not self.job.deepspeed:
            tips.append("DeepSpeed ZeRO-2 (--deepspeed / --use_deepspeed)")
            if cfg.master_weights_dtype == "fp32":
                tips.append("--master_weights_dtype bf16 (the original's footprint)")
        elif self.job.nodes * self.job.gpus_per_node < 64:
            tips.append("more GPUs (ZeRO-2 shards the optimizer state)")
        if not (cfg.low_vram or cfg.enable_text_encoder_in_dataloader) and self.sizes.text_encoder_total:
            tips.append("--low_vram (text encoder on the CPU between uses)")
        tips.append("a smaller --token_sample_size / --video_sample_n_frames")
        return "Try: " + "; ".join(tips) + "."

    def text(self) -> str:
        job, sizes = self.job, self.sizes
        world = job.nodes * job.gpus_per_node
        gpu = f", {job.gpu} {_gib(self.gpu_bytes)}" if self.gpu_bytes else \
            ", GPU type not named in the request (--constraint/--gres/partition)" if job.gpu is None else ""
        encoders = ", ".join(f"text encoder {kind} {n / 1e9:.2f}B" for kind, n in sizes.text_encoders)
        b = self.batch
        lines = [
            f"per-GPU memory estimate: {job.nodes} node(s) x {job.gpus_per_node} GPUs = {world} ranks, "
            f"{'DeepSpeed ZeRO-2' if job.deepspeed else 'no DeepSpeed'}, {job.cfg.mixed_precision}{gpu}",
            *([f"note: {self.folder_note}"] if self.folder_note else []),
            f"model {self.folder}: transformer {sizes.transformer / 1e9:.2f}B parameters ({self.trainable / 1e9:.2f}B "
            f"trained), VAE {sizes.vae / 1e9:.2f}B, {encoders}",
            f"largest batch under the token budget: {b.kind} {b.frames} frame(s) {b.height}x{b.width}, batch "
            f"{b.batch}{f' ({b.tiled}x tiled)' if b.tiled > 1 else ''}: "
            f"{b.batch * b.latent_frames * (b.height // 16) * (b.width // 16):,} latent tokens + {self.text_tokens} text",
        ]
        lines += [_row(name, size, how) for name, size, how in self.resident]
        lines.append(_row("= resident", self.resident_bytes, "held through the whole run"))
        gc = job.cfg.gradient_checkpointing
        lines.append(f"  activations at that batch: {_gib(self.activations[True])} with gradient checkpointing, "
                     f"{_gib(self.activations[False])} without (this job: {'with' if gc else 'without'})")
        lines += [_row(f"+ {name}", size, how) for name, size, how in self.transients]
        lines.append(_row("= training peak", self.training_peak, "resident + the largest transient"))
        if self.validation is not None:
            lines.append(_row("= validation peak", self.resident_bytes + self.validation,
                              "rank 0: resident + guided no-grad forward or the decode"))
        if self.gpu_bytes:
            lines.append(f"  fits {job.gpu}: {'yes' if self.peak <= sizing.FIT_FRACTION * self.gpu_bytes else 'NO'}"
                         f" ({100 * self.peak / self.gpu_bytes:.0f}% of {_gib(self.gpu_bytes)})")
        return "\n".join(lines) + "\n"


def _gib(size: float) -> str:
    return f"{size / sizing.GIB:.1f} GiB"


def _row(name: str, size: float, how: str) -> str:
    return f"  {name:<28}{_gib(size):>11}  {how}"


def _trainable(model, cfg: TrainConfig) -> int:
    keys = [*cfg.trainable_modules, *(cfg.trainable_modules_low_learning_rate or [])]
    return sum(p.numel() for name, p in model.named_parameters() if any(k in name for k in keys))


def plan(job: Job) -> Plan:
    import torch

    from easyanimate import activations, shapes
    from easyanimate.models import load_model_spec

    cfg = job.cfg
    folder, note = shapes.sized_folder(cfg.pretrained_model_name_or_path, cfg.config_path)
    spec = load_model_spec(cfg.config_path)
    sizes = shapes.model_sizes(folder, spec)
    kwargs = shapes.transformer_kwargs(folder, spec)
    trainable = _trainable(shapes.meta_transformer(kwargs), cfg)
    layout = sizing.Layout(nodes=job.nodes, gpus_per_node=job.gpus_per_node, deepspeed=job.deepspeed)
    low = cfg.mixed_precision in ("bf16", "fp16")
    state = sizing.TrainingState(
        params=sizes.transformer, trainable=trainable, layout=layout, mixed_precision=cfg.mixed_precision,
        master_dtype_bytes=sizing.BF16 if cfg.master_weights_dtype == "bf16" else sizing.FP32,
        eight_bit_adam=cfg.use_8bit_adam, ema="sharded" if cfg.use_ema else "none",
        reduce_bucket_elements=int(float(job.zero.get("reduce_bucket_size", 5e8))),
        overlap_comm=bool(job.zero.get("overlap_comm", True)))
    weight_bytes = sizing.BF16 if low else sizing.FP32
    offload = cfg.low_vram or cfg.enable_text_encoder_in_dataloader
    text_bytes = weight_bytes * sizes.text_encoder_total
    resident = sizing.state_terms(state) + [
        ("VAE", weight_bytes * sizes.vae, "on the GPU on every rank"),
        ("text encoder", 0 if offload else text_bytes,
         "on the CPU between uses (--low_vram)" if offload else "on the GPU on every rank (--low_vram: CPU)"),
        ("CUDA context", sizing.CUDA_CONTEXT_BYTES, "context, cuBLAS and NCCL workspaces (typical)"),
    ]
    batch = largest_batch(cfg)
    text_tokens = cfg.tokenizer_max_length
    tb = activations.TransformerBatch(batch.batch, batch.latent_frames, batch.height // 8, batch.width // 8,
                                      text_tokens)
    # DeepSpeed runs the module in the training dtype; DDP/single keeps master weights under accelerate's autocast.
    master_fp32 = not job.deepspeed and cfg.master_weights_dtype == "fp32"
    run_dtype = torch.bfloat16 if low and not master_fp32 else torch.float32
    autocast = low and master_fp32
    acts = {gc: activations.transformer_activations(kwargs, tb, dtype=run_dtype, autocast=autocast,
                                                    checkpointing=gc) for gc in (True, False)}
    vae_kwargs = shapes.vae_kwargs(folder, spec)
    vae_dtype = torch.bfloat16 if low else torch.float32
    frames, clips = batch.frames, min(cfg.vae_mini_batch, batch.batch)
    encode = activations.vae_peak(vae_kwargs, (clips, frames, batch.height, batch.width), dtype=vae_dtype)
    transients = [
        ("forward + backward", acts[cfg.gradient_checkpointing],
         f"activations, gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}"),
        ("VAE encode", encode, f"{clips} clip(s) of {frames}x{batch.height}x{batch.width} at a time"),
    ]
    if offload and text_bytes:
        transients.append(("text encoder visit", text_bytes, "--low_vram: moved to the GPU to encode captions"))
    return Plan(job=job, folder=str(folder), folder_note=note, sizes=sizes, trainable=trainable, batch=batch,
                text_tokens=text_tokens, resident=resident, activations=acts, transients=transients,
                validation=_validation_peak(cfg, kwargs, vae_kwargs, run_dtype, autocast, vae_dtype,
                                            text_bytes if offload else 0) if cfg.validation_prompts else None)


def _validation_peak(cfg: TrainConfig, kwargs: dict, vae_kwargs: dict, dtype, autocast: bool, vae_dtype,
                     text_visit: float) -> float:
    """Rank 0 generates at video_sample_size^2 x video_sample_n_frames: a guided (batch 2) no-grad forward per
    denoising step, then the VAE decode; an offloaded text encoder visits first."""
    from easyanimate import activations

    side, frames = cfg.video_sample_size, (cfg.video_sample_n_frames - 1) // 4 * 4 + 1
    tb = activations.TransformerBatch(1, (frames - 1) // 4 + 1, side // 8, side // 8, cfg.tokenizer_max_length)
    forward = activations.transformer_peak(kwargs, tb, dtype=dtype, autocast=autocast, train=False, cfg_batch=2)
    decode = activations.vae_peak(vae_kwargs, (1, frames, side, side), dtype=vae_dtype, decode=True)
    return max(forward, decode, text_visit)


# --- entry points ------------------------------------------------------------------------------------------------

def zero_config(path: str | Path | None) -> dict:
    if not path:
        return {}
    return json.loads(Path(path).read_text()).get("zero_optimization", {})


def job_report(spec) -> tuple[str, list[str]]:
    """(plan text, warnings) for a SLURM job spec (slurm/spec.py JobSpec); never raises: a plan that cannot be
    made says why in the text, so a dry run or a submission is never blocked by it."""
    from easyanimate.config import parse_args

    if spec.gpus_per_node == 0:
        return "memory plan: CPU job (gpus_per_node 0), nothing to estimate\n", []
    try:
        gpu = sizing.find_gpu(getattr(spec, "gres", None), getattr(spec, "gpu_type", None), spec.constraint,
                              spec.partition)
        cfg = parse_args(list(spec.train_args))
        config = Path(spec.root) / spec.deepspeed_config if spec.deepspeed else None
        result = plan(Job(cfg=cfg, nodes=spec.nodes, gpus_per_node=spec.procs_per_node, deepspeed=spec.deepspeed,
                          zero=zero_config(config), gpu=gpu))
        return result.text(), result.warnings()
    except Exception as err:  # the plan is advice: report, never block the submission
        return f"memory plan: not available ({type(err).__name__}: {err})\n", []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="easyanimate memory-plan",
        description="Per-GPU memory estimate of a training run, from the model folder's configs (no weights "
                    "loaded). Training flags follow '--', as for easyanimate/train_control.py.")
    parser.add_argument("--nodes", type=int, default=1, help="Nodes (default 1).")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (training processes) per node.")
    parser.add_argument("--gpu", help="GPU type to check the fit against (h100, h200, a100-80gb, b200, ...).")
    parser.add_argument("--deepspeed-config", default=str(REPO / "configs" / "zero_stage2_config.json"),
                        help="ZeRO JSON, used when the training flags include --use_deepspeed.")
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    from easyanimate.config import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    ours, train = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    cfg = parse_args(train)
    if args.gpu and sizing.gpu_memory_bytes(args.gpu) is None:
        print(f"--gpu {args.gpu}: unknown; known: {', '.join(sorted(sizing.GPU_MEMORY_MIB))}", file=sys.stderr)
        return 2
    result = plan(Job(cfg=cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, deepspeed=cfg.use_deepspeed,
                      zero=zero_config(args.deepspeed_config) if cfg.use_deepspeed else {}, gpu=args.gpu))
    sys.stdout.write(result.text())
    for warning in result.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if result.warnings() and result.gpu_bytes else 0
