"""Data: what a measurement tensor is, where it comes from, and the synthetic twin.

- :mod:`envs.data.dataset`: the :class:`Dataset` (tensor, named axes with units, provenance).
- :mod:`envs.data.loaders`: reading recorded h5/npy files into a Dataset.
- :mod:`envs.data.twin`: the seeded synthetic twin of the relaxation experiment.
- :mod:`envs.data.sources`: data specs (``"twin:SEED"``, a file path) and the seed ranges.

Imports nothing else of :mod:`envs`: every other room builds on this one.
"""
