"""Env settings small enough for a training loop inside a test: an 8 x 8 twin, 8 read-outs and
a fast reconstructor give 256 actions and about 60 decisions an episode."""

TINY_ENV = {
    "data": "twin",
    "twin_seeds": [0, 50],
    "twin_overrides": {"grid": [8, 8], "n_times": 8},
    "reconstructor": "idw",
    "initial_stride": 4,
    "budget_fraction": 0.3,
    "device": "cpu",
}
