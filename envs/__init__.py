"""Data, instruments, the acquisition environment and the live loop, one room each.

- :mod:`envs.data`: the Dataset, file loaders, data specs and the synthetic twin.
- :mod:`envs.instruments`: the instrument protocol, the cost model, the replay, the twin with
  its sample's memory, and the network client and server.
- :mod:`envs.acquisition`: the Gymnasium environment, its factory, observation and wrappers.
- :mod:`envs.live`: the live loop, its session file and its accuracy estimate.
- :mod:`envs.command_line`: the programs' one command-line style (settings dataclasses whose
  fields are options); it imports nothing of the rooms, so every room and program may use it.

Each room imports only the rooms listed before it (``tests/test_layering.py``).

Importing the package registers the Gymnasium environments (string entry points, JSON-safe
keyword arguments, so ``gymnasium.make("envs:PFMAcquisition/Relaxation-v0")`` works from a fresh
process):

- ``PFMAcquisition/Relaxation-v0``: the (60, 60, 16, 128) relaxation twin, a new twin drawn from
  seeds [0, 1000) at every reset, GP reconstruction, 4 contiguous voltage blocks measured in
  pulse order on a sample whose memory is simulated (:mod:`envs.acquisition.programs`).
- ``PFMAcquisition/RelaxationSmall-v0``: the same on a 16 x 16 grid with 16 read-outs, for tests
  and quick experiments.

Any setting of :class:`envs.acquisition.factory.EnvConfig` can be overridden in ``make``; in code,
:func:`envs.acquisition.factory.make_env` takes the same settings.
"""

from typing import Any

from gymnasium.envs.registration import register, registry

from envs.data.dataset import Axis, DataError, Dataset
from envs.instruments.cost import CostModel
from envs.instruments.instrument import Instrument, ReplayInstrument

ENV_ID = "PFMAcquisition/Relaxation-v0"
SMALL_ENV_ID = "PFMAcquisition/RelaxationSmall-v0"
_ENTRY_POINT = "envs.acquisition.factory:make_env"
_REGISTERED: dict[str, dict[str, Any]] = {
    ENV_ID: {"data": "twin", "twin_seeds": [0, 1000], "reconstructor": "gp"},
    SMALL_ENV_ID: {
        "data": "twin",
        "twin_seeds": [0, 1000],
        "twin_overrides": {"grid": [16, 16], "n_times": 16},
        "reconstructor": "gp",
    },
}
for _env_id, _kwargs in _REGISTERED.items():
    if _env_id not in registry:  # a re-import must not warn about overriding
        register(id=_env_id, entry_point=_ENTRY_POINT, kwargs=_kwargs)


def __getattr__(name: str) -> Any:
    # The environment pulls in torch and the reconstructors: import it only when asked for.
    if name == "AcquisitionEnv":
        from envs.acquisition.env import AcquisitionEnv

        return AcquisitionEnv
    if name in ("EnvConfig", "make_env"):
        import envs.acquisition.factory

        return getattr(envs.acquisition.factory, name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


__all__ = [
    "ENV_ID",
    "SMALL_ENV_ID",
    "AcquisitionEnv",
    "Axis",
    "CostModel",
    "DataError",
    "EnvConfig",
    "Dataset",
    "Instrument",
    "ReplayInstrument",
    "make_env",
]
