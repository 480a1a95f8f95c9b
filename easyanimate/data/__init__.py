"""Training data: metadata, decoding, aspect/token-length buckets, a resumable distributed sampler, preflight."""

from .dataset import TooManyBadSamples
from .loader import TrainData, build_train_dataloader
from .metadata import MetadataError, Sample, load_metadata

__all__ = ["TooManyBadSamples", "TrainData", "build_train_dataloader", "MetadataError", "Sample", "load_metadata"]
