"""Training curves of a run folder, read from output_dir/logs/metrics.jsonl: the latest step's summary and a PNG
(loss raw and smoothed, learning rate, samples/s against step, attempt boundaries marked).

Torch-free, so that ``slurm/submit.py status`` on a login node can use it; matplotlib (Agg, no display) is imported
only to draw. Used by ``easyanimate plot OUTPUT_DIR`` and by ``submit.py status``.

    easyanimate plot OUTPUT_DIR [--out PNG] [--logging_dir logs]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
PNG_NAME = "curves.png"
SMOOTHING = 0.9  # as the trainer's log (easyanimate.training.progress.LOSS_SMOOTHING)


@dataclass
class Curves:
    """One value per step on the current timeline (a step re-trained after a resume keeps its newest value)."""
    steps: list[int] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)
    attempt_starts: list[int] = field(default_factory=list)  # first step logged by each attempt after the first
    last: dict = field(default_factory=dict)


def metrics_path(output_dir: Path, logging_dir: str = "logs") -> Path:
    return Path(output_dir) / logging_dir / METRICS_FILE


def read_records(path: Path) -> list[dict]:
    """Every complete JSON line (a line cut by a kill mid-write is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict) and "step" in r]


def build_curves(records: list[dict]) -> Curves:
    by_step: dict[int, dict] = {}
    starts = []
    for record in records:
        if record.get("attempt_start") and by_step:
            starts.append(int(record["step"]))
        by_step[int(record["step"])] = record
    steps = sorted(by_step)
    # Steps past a resume point belong to the abandoned timeline and are overwritten above; keep the latest.
    starts = sorted(set(s for s in starts if s in by_step))
    names = ("loss", "loss_smoothed", "lr", "samples_per_s", "s_per_step", "grad_norm")
    series = {name: [by_step[s].get(name) for s in steps] for name in names}
    # Smoothed again over the whole timeline: each attempt's log restarts its own average.
    series["loss_smoothed"] = _smooth(series["loss"])
    return Curves(steps, series, starts, by_step[steps[-1]] if steps else {})


def _smooth(values: list[float | None]) -> list[float | None]:
    average, count, out = 0.0, 0, []
    for value in values:
        if value is None:
            out.append(None)
            continue
        count += 1
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        out.append(average / (1 - SMOOTHING ** count))
    return out


def summary_line(curves: Curves, logged_at: float | None = None) -> str:
    """``last logged step 120, loss 0.41 (smoothed 0.43), 1.9 s/step, 4.2 samples/s, ETA 0:31:00 as of 12:00:01``"""
    last = curves.last
    if not last:
        return "no training step logged yet"
    parts = [f"last logged step {last['step']}"]
    if "loss" in last:
        smoothed = last.get("loss_smoothed")
        parts.append(f"loss {last['loss']:.4g}" + (f" (smoothed {smoothed:.4g})" if smoothed is not None else ""))
    if "s_per_step" in last:
        parts.append(f"{last['s_per_step']:.3g} s/step, {last['samples_per_s']:.3g} samples/s")
    if last.get("eta_s"):  # 0 at the last step
        from_time = f" as of {time.strftime('%H:%M:%S', time.localtime(logged_at))}" if logged_at else ""
        parts.append(f"ETA {_duration(last['eta_s'])}{from_time}")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def plot(curves: Curves, out: Path, title: str) -> Path:
    """Three panels against step: loss (raw and smoothed, log scale when it spans a decade), learning rate,
    samples/s; a dashed line where each later attempt started."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True, constrained_layout=True)
    panels = ((axes[0], (("loss", "loss", 0.35), ("loss_smoothed", "loss (smoothed)", 1.0)), "loss"),
              (axes[1], (("lr", "learning rate", 1.0),), "learning rate"),
              (axes[2], (("samples_per_s", "samples/s", 1.0),), "samples/s"))
    for ax, lines, ylabel in panels:
        for name, label, alpha in lines:
            points = [(s, v) for s, v in zip(curves.steps, curves.series[name]) if v is not None]
            if points:
                ax.plot(*zip(*points), label=label, alpha=alpha, marker="." if len(points) < 50 else None)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        for index, step in enumerate(curves.attempt_starts):
            ax.axvline(step - 0.5, color="tab:red", linestyle="--", linewidth=1,
                       label="a new attempt resumed here" if index == 0 and ax is axes[0] else None)
            if ax is axes[0]:
                ax.annotate(f"attempt {index + 2}", (step - 0.5, 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -12), textcoords="offset points", color="tab:red", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    loss = [v for v in curves.series["loss"] if v is not None and v > 0]
    if loss and max(loss) / min(loss) > 10:
        axes[0].set_yscale("log")
    axes[2].set_xlabel("optimizer step")
    axes[0].set_title(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def report(output_dir: Path, png: Path, title: str, logging_dir: str = "logs") -> tuple[str, Path | None]:
    """The summary line and the written PNG (None when nothing is logged yet)."""
    path = metrics_path(output_dir, logging_dir)
    if not path.is_file():
        return f"no metrics yet ({path} does not exist)", None
    curves = build_curves(read_records(path))
    line = summary_line(curves, path.stat().st_mtime)
    if not curves.steps:
        return line, None
    return line, plot(curves, png, f"{title}: step {curves.last['step']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easyanimate plot", description="Summarise a run folder's training "
                                     "curves and draw them as a PNG (default OUTPUT_DIR/curves.png).")
    parser.add_argument("output_dir", type=Path, help="The run's --output_dir.")
    parser.add_argument("--out", type=Path, help="Where to write the PNG.")
    parser.add_argument("--logging_dir", default="logs", help="The run's --logging_dir (relative to output_dir).")
    args = parser.parse_args(argv)
    if not args.output_dir.is_dir():
        print(f"easyanimate plot: {args.output_dir} is not a folder; pass the run's --output_dir", file=sys.stderr)
        return 2
    line, png = report(args.output_dir, args.out or args.output_dir / PNG_NAME, args.output_dir.resolve().name,
                       args.logging_dir)
    print(line)
    if png is None:
        return 1
    print(f"curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
