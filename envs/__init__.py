"""Data sources, the instrument and its cost model, and the acquisition environment."""

from envs.dataset import Axis, DataError, Dataset

__all__ = ["Axis", "DataError", "Dataset"]
