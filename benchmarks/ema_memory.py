"""EMA memory on the CPU: diffusers' EMAModel (a whole copy) against our sharded fp32 EMA (rank 0 of WORLD).

Each variant runs in its own process; the number is the growth of the peak RSS while the EMA is built and
stepped 6 times (the time is the mean of the last 5 steps), next to the model's own bytes. Usage: python benchmarks/ema_memory.py [--params 50e6] [--world 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, params: int, world: int, dtype: str) -> dict:
    import torch

    from diffusers.training_utils import EMAModel

    from easyanimate.training.ema import ShardedEMA

    torch.manual_seed(0)
    width = 1024
    layers = max(1, params // (width * width))
    # Built layer by layer in its dtype, so the model's creation leaves no larger peak behind.
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False, dtype=getattr(torch, dtype))
                                  for _ in range(layers)])
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = _peak_mib()
    if kind == "diffusers":
        ema = EMAModel(model.parameters(), decay=0.999)
    else:
        ema = ShardedEMA(model.named_parameters(), rank=0, world=world, decay=0.999)
    ema.step(model.parameters())
    started = time.perf_counter()
    for _ in range(5):
        ema.step(model.parameters())
    return {"kind": kind, "model_dtype": dtype, "params": layers * width * width, "model_mib": model_bytes / 2**20,
            "ema_rss_growth_mib": _peak_mib() - before, "step_s": (time.perf_counter() - started) / 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=float, default=50e6)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.params), args.world, args.child[1])))
        return
    rows = []
    for dtype in ("float32", "bfloat16"):
        for kind in ("diffusers", "sharded"):
            out = subprocess.run([sys.executable, __file__, "--params", str(args.params), "--world", str(args.world),
                                  "--child", kind, dtype], capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    for row in rows:
        print(f"{row['kind']:>9} EMA of a {row['model_dtype']:>8} model ({row['params'] / 1e6:.0f}M params, "
              f"{row['model_mib']:.0f} MiB): +{row['ema_rss_growth_mib']:.0f} MiB peak RSS, "
              f"{row['step_s'] * 1000:.0f} ms/step")
    for dtype in ("float32", "bfloat16"):
        full, sharded = (r for r in rows if r["model_dtype"] == dtype)
        print(f"{dtype}: sharded (rank 0 of {args.world}) / diffusers = "
              f"{sharded['ema_rss_growth_mib'] / full['ema_rss_growth_mib']:.3f}")


if __name__ == "__main__":
    main()
