"""Every random stream a rank draws from, captured into a picklable dict and put back exactly.

The global streams (python ``random``, numpy's legacy global state, torch's CPU and CUDA default generators) are
saved alongside any named ``torch.Generator`` the training step owns (noise, timesteps, dropout), so a resumed
rank continues the same sequences it would have drawn without the interruption. A run resumed on another number
of processes cannot continue the old ranks' streams: ``derive`` gives each new rank fresh ones from the seed, step,
world size and rank, so that resume is itself reproducible.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture(generators: dict[str, torch.Generator] | None = None) -> dict:
    """This process's RNG states; ``generators`` are the named generators the caller owns."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        # Only the current device: a rank draws on its own GPU, and the index of that GPU may change on resume.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }


def restore(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what ``capture`` returned. Every generator passed in must have been captured under its name."""
    generators = generators or {}
    missing = sorted(set(generators) - set(state["generators"]))
    if missing:
        raise KeyError(f"the saved RNG state has no generator named {missing}; it holds "
                       f"{sorted(state['generators'])}. Was the checkpoint written by a different training setup?")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])


def derive(seed: int, step: int, rank: int, world_size: int, generators: dict[str, torch.Generator] | None = None
           ) -> None:
    """Fresh streams for ``rank`` of a run resumed at ``step`` on ``world_size`` processes after the world size
    changed (the saved per-rank streams belong to ranks that no longer exist). Every stream is a function of
    (seed, step, world size, rank, stream name) only, so two resumes from one checkpoint draw the same numbers."""
    def stream_seed(name: str) -> int:
        words = np.random.SeedSequence([int(seed) % 2**64, int(step), int(world_size), int(rank),
                                        *name.encode()]).generate_state(2, np.uint32)
        return int(words[0]) << 32 | int(words[1])

    random.seed(stream_seed("python"))
    np.random.seed(stream_seed("numpy") % 2**32)
    torch.manual_seed(stream_seed("torch"))  # seeds the CUDA generators too
    for name, gen in (generators or {}).items():
        gen.manual_seed(stream_seed(f"generator:{name}"))
