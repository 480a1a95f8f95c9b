"""Random streams keyed by (seed, purpose, epoch, position): no global RNG, so workers and resumes are exact."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """What a random stream decides; part of its key so streams never collide."""

    SHUFFLE = 0
    BATCH_ORDER = 1
    BATCH_SHAPE = 2
    SHARED_BUDGET = 3
    FRAMES = 4
    TEXT_DROP = 5
    REFERENCE = 6
    REPLACEMENT = 7


def rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """A generator that depends only on its arguments."""
    return np.random.default_rng([int(seed) % 2**64, int(stream), *(int(k) for k in keys)])
