"""Training progress on rank 0: a tqdm bar on a terminal, otherwise a plain ``step N/TOTAL ...`` line on each of
the first few steps and then at least every ``--log_every_s`` seconds; the same fields go to metrics.jsonl.

The arithmetic (smoothing, rates over a window of recent steps, data-wait share, ETA, token counts, the line's
text) is pure and tested on its own; ``Progress`` is the thin edge that reads the clock, times the DataLoader and
writes. A step's time runs from the first batch fetch of the step to its optimizer step, so checkpoint saves and
validation between steps do not count as training speed (the ETA is for training steps only).
"""

from __future__ import annotations

import collections
import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from easyanimate import distributed

logger = logging.getLogger(__name__)

FIRST_STEPS_LOGGED = 5
RATE_WINDOW = 20
LOSS_SMOOTHING = 0.9


class Smoother:
    """Exponential moving average with bias correction (the first value is not pulled towards zero)."""

    def __init__(self, beta: float = LOSS_SMOOTHING):
        self.beta, self.average, self.count = beta, 0.0, 0

    def update(self, value: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * value
        return self.average / (1 - self.beta ** self.count)


def smooth_series(values: list[float], beta: float = LOSS_SMOOTHING) -> list[float]:
    smoother = Smoother(beta)
    return [smoother.update(v) for v in values]


@dataclass
class StepTiming:
    seconds: float
    data_wait_s: float
    samples: int
    tokens: int


class RateWindow:
    """Speed over the last ``size`` optimizer steps (the first steps' warm-up fades out of it)."""

    def __init__(self, size: int = RATE_WINDOW):
        self.steps: collections.deque[StepTiming] = collections.deque(maxlen=size)

    def add(self, timing: StepTiming) -> None:
        self.steps.append(timing)

    def rates(self) -> dict[str, float]:
        seconds = sum(s.seconds for s in self.steps)
        if not self.steps or seconds <= 0:
            return {}
        return {"s_per_step": seconds / len(self.steps),
                "samples_per_s": sum(s.samples for s in self.steps) / seconds,
                "tokens_per_s": sum(s.tokens for s in self.steps) / seconds,
                "data_wait_share": min(1.0, sum(s.data_wait_s for s in self.steps) / seconds)}


def latent_tokens(pixel_shape: tuple[int, ...], spatial: int, temporal: int, patch: int) -> int:
    """Transformer tokens of a (B, F, C, H, W) pixel batch: B x latent frames x (H/spatial/patch) x (W/...)."""
    batch, frames, _, height, width = pixel_shape
    return batch * ((frames - 1) // temporal + 1) * (height // spatial // patch) * (width // spatial // patch)


def eta_seconds(step: int, total: int, s_per_step: float | None) -> float | None:
    return None if s_per_step is None else max(0, total - step) * s_per_step


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.1f}"


def format_line(step: int, total: int, fields: dict) -> str:
    """``step N/TOTAL loss S (last L) lr ... | s/step samples/s tokens/s data-wait % | ETA | peak mem`` (missing
    fields are left out)."""
    return f"step {step}/{total} {format_fields(fields)}"


def format_fields(fields: dict) -> str:
    parts = []
    if "loss" in fields:
        parts.append(f"loss {fields['loss_smoothed']:.4g} (last {fields['loss']:.4g})")
    if "lr" in fields:
        parts.append(f"lr {fields['lr']:.3g}")
    if "grad_norm" in fields:
        parts.append(f"grad norm {fields['grad_norm']:.3g}")
    if "s_per_step" in fields:
        parts.append(f"| {fields['s_per_step']:.3g} s/step {fields['samples_per_s']:.3g} samples/s "
                     f"{_count(fields['tokens_per_s'])} tokens/s data-wait {fields['data_wait_share']:.0%}")
    parts.append(f"| ETA {format_duration(fields.get('eta_s'))}")
    if "peak_mem_gib" in fields:
        parts.append(f"| peak mem {fields['peak_mem_gib']:.2f} GiB")
    return " ".join(parts)


class LogSchedule:
    """When a plain line is due: each of the first ``first`` steps of this attempt, the last step, and then
    whenever ``every_s`` seconds have passed since the previous line."""

    def __init__(self, start_step: int, total: int, every_s: float, first: int = FIRST_STEPS_LOGGED):
        self.first_until, self.total, self.every_s = start_step + first, total, every_s
        self.last: float | None = None

    def due(self, step: int, now: float) -> bool:
        if step <= self.first_until or step >= self.total or self.last is None or now - self.last >= self.every_s:
            self.last = now
            return True
        return False


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak accelerator memory in GiB (CUDA: max allocated), or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu rss"


class Progress:
    """Times the DataLoader and the steps of this attempt; rank 0 shows and returns the progress fields."""

    def __init__(self, start_step: int, total: int, *, every_s: float, world_size: int, token_factors: tuple,
                 device: torch.device, clock: Callable[[], float] = time.monotonic, bar: bool | None = None):
        self.total, self.world_size, self.token_factors, self.device = total, world_size, token_factors, device
        self.clock = clock
        self.main = distributed.is_main()
        self.loss = Smoother()
        self.window = RateWindow()
        self.schedule = LogSchedule(start_step, total, every_s)
        self.logged_one = False
        self._reset()
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = _tqdm_bar(start_step, total) if self.main and use_bar else None
        if self.main:
            logger.info("progress every %g s (and each of the first %d steps); peak memory is %s", every_s,
                        FIRST_STEPS_LOGGED, peak_memory(device)[1])

    def _reset(self) -> None:
        self.step_started: float | None = None
        self.wait, self.samples, self.tokens = 0.0, 0, 0

    def timed(self, batches: Iterator[dict]) -> Iterator[dict]:
        """``batches``, timing each fetch and counting samples and tokens."""
        while True:
            started = self.clock()
            if self.step_started is None:
                self.step_started = started
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.wait += self.clock() - started
            shape = tuple(batch["pixel_values"].shape)
            self.samples += shape[0]
            self.tokens += latent_tokens(shape, *self.token_factors)
            yield batch

    def step(self, step: int, values: dict) -> dict:
        """After an optimizer step: ``values`` plus the progress fields (rank 0 also shows them)."""
        now = self.clock()
        # Samples and tokens are this rank's times the world size: every rank trains the same batch size, and
        # token counts differ between ranks only by their buckets (exact with keep_all_node_same_token_length).
        started = now if self.step_started is None else self.step_started
        self.window.add(StepTiming(now - started, self.wait, self.samples * self.world_size,
                                   self.tokens * self.world_size))
        self._reset()
        fields = dict(values)
        if not self.logged_one:
            fields["attempt_start"] = 1  # where this attempt begins in metrics.jsonl (curves.py marks it)
            self.logged_one = True
        if "loss" in values:
            fields["loss_smoothed"] = self.loss.update(values["loss"])
        fields |= self.window.rates()
        eta = eta_seconds(step, self.total, fields.get("s_per_step"))
        fields |= {"eta_s": eta} if eta is not None else {}
        fields["peak_mem_gib"] = peak_memory(self.device)[0]
        if self.main:
            self._show(step, fields, now)
        return fields

    def _show(self, step: int, fields: dict, now: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(format_fields(fields), refresh=True)
        elif self.schedule.due(step, now):
            logger.info("%s", format_line(step, self.total, fields))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _tqdm_bar(start_step: int, total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start_step, desc="steps", file=sys.stderr, dynamic_ncols=True)


def for_run(run, start_step: int) -> Progress:
    """The run's Progress: token factors from its VAE and transformer, the log interval from --log_every_s."""
    transformer = run.accelerator.unwrap_model(run.model)
    vae = run.objective.vae
    factors = (vae.spatial_compression_ratio, vae.temporal_compression_ratio, transformer.config.patch_size)
    return Progress(start_step, run.max_train_steps, every_s=run.cfg.log_every_s,
                    world_size=distributed.world_size(), token_factors=factors, device=run.accelerator.device)
