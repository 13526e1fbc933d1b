"""Reconstructors and metrics on plain tensors (no dependency on `envs` or `agents`)."""

from reconstruct.base import BlockLayout, Reconstructor, SegmentedLayout, resolve_device
from reconstruct.registry import make_reconstructor, reconstructor_names

__all__ = [
    "BlockLayout",
    "Reconstructor",
    "SegmentedLayout",
    "make_reconstructor",
    "reconstructor_names",
    "resolve_device",
]
