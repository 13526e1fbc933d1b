"""Reconstructors and metrics on plain tensors (no dependency on `envs` or `agents`)."""

from reconstruct.base import BlockLayout, Reconstructor, SegmentedLayout, resolve_device
from reconstruct.registry import make_reconstructor, reconstructor_names
from reconstruct.scoring import ReferenceScorer

__all__ = [
    "BlockLayout",
    "Reconstructor",
    "ReferenceScorer",
    "SegmentedLayout",
    "make_reconstructor",
    "reconstructor_names",
    "resolve_device",
]
