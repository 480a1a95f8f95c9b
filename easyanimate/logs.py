"""Rank-aware logging: every line says which rank wrote it; rank 0 logs INFO, others WARNING and up."""

from __future__ import annotations

import logging
import sys

from easyanimate import distributed


def setup_logging(level: int = logging.INFO) -> None:
    rank = distributed.rank()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else logging.WARNING)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
