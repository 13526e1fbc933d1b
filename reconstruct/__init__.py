"""Reconstructors and metrics on plain tensors (no dependency on `envs` or `agents`)."""

from reconstruct.base import BlockLayout, Reconstructor, resolve_device

__all__ = ["BlockLayout", "Reconstructor", "resolve_device"]
