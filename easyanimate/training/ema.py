"""EMA of the transformer, sharded: each rank keeps fp32 averages of a contiguous 1/world slice of the parameters.

diffusers' ``EMAModel`` keeps a whole fp32 copy on every GPU (48 GB for the 12B transformer, on top of ZeRO-2's
share). Every rank already holds the whole current model (DDP, and ZeRO-2's bf16 module), so each rank can update
its own slice without any communication: fp32 EMA at 4 / world bytes per parameter, with diffusers' decay schedule
(``min(decay, (1 + k) / (10 + k))`` at the k-th update after the first, which copies).

Checkpoints: every rank writes ``ema/rankRRRRR.pt`` (its slice, its range of the flat parameter order and the
names and shapes that order stands for) through accelerate's save/load hooks. A rank loading takes the pieces of
every shard file that overlap its own range, so a checkpoint resumes under any number of ranks, and
``export_from_checkpoint`` assembles the whole fp32 EMA on the CPU for ``output_dir/transformer_ema``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
FOLDER = "ema"


def shard_range(total: int, rank: int, world: int) -> tuple[int, int]:
    per = math.ceil(total / world)
    return min(total, rank * per), min(total, (rank + 1) * per)


def _overlaps(sizes: list[int], lo: int, hi: int):
    """(parameter index, start inside the parameter, start inside [lo, hi), length) for every overlap."""
    start = 0
    for index, size in enumerate(sizes):
        a, b = max(start, lo), min(start + size, hi)
        if a < b:
            yield index, a - start, a - lo, b - a
        start += size


class ShardedEMA:
    def __init__(self, named_parameters, *, rank: int, world: int, decay: float = 0.9999, min_decay: float = 0.0):
        named = list(named_parameters)
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.total = sum(self.sizes)
        self.lo, self.hi = shard_range(self.total, rank, world)
        self.rank, self.decay, self.min_decay = rank, decay, min_decay
        self.optimization_step = 0
        device = named[0][1].device if named else torch.device("cpu")
        self.shard = torch.empty(self.hi - self.lo, dtype=torch.float32, device=device)
        self._pieces = list(_overlaps(self.sizes, self.lo, self.hi))
        self.copy_from([p for _, p in named])

    def _views(self, params):
        for index, start, offset, length in self._pieces:
            yield self.shard[offset:offset + length], params[index].detach().reshape(-1)[start:start + length]

    def current_decay(self) -> float:
        step = self.optimization_step - 1
        if step <= 0:
            return 0.0
        return max(min(self.decay, (1 + step) / (10 + step)), self.min_decay)

    @torch.no_grad()
    def copy_from(self, params) -> None:
        for mine, theirs in self._views(list(params)):
            mine.copy_(theirs)

    @torch.no_grad()
    def step(self, params) -> None:
        """One update from the model's current parameters (every rank calls it with its whole model)."""
        self.optimization_step += 1
        weight = 1.0 - self.current_decay()
        for mine, theirs in self._views(list(params)):
            mine.lerp_(theirs.to(torch.float32), weight)

    # ---- checkpoints ----

    def state(self) -> dict:
        return {"range": [self.lo, self.hi], "total": self.total, "names": self.names,
                "shapes": [list(s) for s in self.shapes], "optimization_step": self.optimization_step,
                "decay": self.decay, "shard": self.shard.detach().cpu()}

    def save(self, folder: str | Path) -> None:
        path = Path(folder) / FOLDER / f"rank{self.rank:05d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state(), path)

    def load(self, folder: str | Path) -> None:
        """Fill this rank's range from the shard files of a checkpoint written under any number of ranks."""
        files = sorted((Path(folder) / FOLDER).glob("rank*.pt"))
        if not files:
            raise FileNotFoundError(f"{folder}: no {FOLDER}/rank*.pt; the checkpoint was saved without --use_ema.")
        filled = 0
        for path in files:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["names"] != self.names or [tuple(s) for s in saved["shapes"]] != self.shapes:
                raise ValueError(f"{path}: the EMA was saved for other parameters than this transformer's.")
            lo, hi = saved["range"]
            a, b = max(lo, self.lo), min(hi, self.hi)
            if a < b:
                self.shard[a - self.lo:b - self.lo].copy_(saved["shard"][a - lo:b - lo])
                filled += b - a
            self.optimization_step = saved["optimization_step"]
        if filled != self.hi - self.lo:
            raise ValueError(f"{folder}/{FOLDER}: the shard files cover {filled} of this rank's "
                             f"{self.hi - self.lo} values; a rank's file is missing.")

    def register(self, accelerator) -> None:
        """Save and load with every ``accelerator.save_state`` / ``load_state`` (the hooks run on every rank)."""
        accelerator.register_save_state_pre_hook(lambda models, weights, folder: self.save(folder))
        accelerator.register_load_state_pre_hook(lambda models, folder: self.load(folder))


def full_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The whole fp32 EMA of a checkpoint, assembled on the CPU from every rank's shard."""
    files = sorted((Path(checkpoint) / FOLDER).glob("rank*.pt"))
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no {FOLDER}/rank*.pt (trained without --use_ema?).")
    saved = [torch.load(path, map_location="cpu", weights_only=True) for path in files]
    first = saved[0]
    flat = torch.empty(first["total"], dtype=torch.float32)
    covered = 0
    for part in saved:
        lo, hi = part["range"]
        flat[lo:hi] = part["shard"]
        covered += hi - lo
    if covered != first["total"]:
        raise ValueError(f"{checkpoint}/{FOLDER}: shards cover {covered} of {first['total']} values.")
    state, start = {}, 0
    for name, shape in zip(first["names"], first["shapes"]):
        size = math.prod(shape)
        state[name] = flat[start:start + size].view(shape).clone()
        start += size
    return state


def export_from_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """``out`` as a diffusers transformer folder (config.json + safetensors) holding the checkpoint's EMA."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(checkpoint) / "transformer" / "config.json", out / "config.json")
    save_file(full_state_dict(checkpoint), out / "diffusion_pytorch_model.safetensors")
    logger.info("EMA weights of %s written to %s", checkpoint, out)
    json.loads((out / "config.json").read_text())  # a readable config, or fail here rather than at load time
    return out
