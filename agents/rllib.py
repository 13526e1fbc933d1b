"""Training the acquisition env with Ray RLlib (new API stack), locally or on a Ray cluster.

This module needs the optional ``distributed`` extra (``pip install '.[distributed]'``); nothing
else in :mod:`agents` imports it, so the rest of the library works without Ray.

Three parts:

- :func:`~envs.acquisition.wrappers.make_rllib_env` (imported here), the env creator: the project
env from JSON-safe settings
  (:func:`envs.acquisition.factory.make_env`), with the action mask in the observation
  (:class:`envs.acquisition.wrappers.MaskObservation`) because RLlib's new stack hands an RLModule
  only the observation, never ``action_masks()``; and a count of masked-out actions in ``info``, so
  a run can prove that none was ever taken.
- :class:`MaskedScoreMapModule`, a small fully convolutional actor-critic: one logit per (pixel,
  voltage block) from convolutions over the observation planes, flattened in the env's action
  order ``(row * ny + col) * n_blocks + block``. Masked-out actions get the lowest finite float
  as their logit, so sampling (exploration), argmax (inference) and the PPO loss (training) all
  see a distribution with zero mass on them; a finite value rather than ``-inf`` keeps the
  entropy and KL terms free of NaN.
- :func:`ppo_config`, a PPO configuration with the number of env runners (remote sampling
  workers), envs per runner and learners as arguments, and :func:`init_ray`, which joins a
  cluster (``address="auto"`` or ``"ray://host:10001"``) or starts a local Ray instance.

On a cluster every node needs the project's dependencies installed; :func:`init_ray` ships the
project's own packages (``envs``, ``agents``, ``reconstruct``) to the workers with the job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

try:
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.core.rl_module.torch import TorchRLModule
    from ray.tune.registry import register_env
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "agents.rllib needs Ray RLlib: install the 'distributed' extra "
        "(pip install -e '.[distributed]')"
    ) from err

from agents.policy import Policy
from envs.acquisition.factory import EnvConfig
from envs.acquisition.wrappers import INVALID_ACTION_KEY, MASK_KEY, make_rllib_env

#: Name under which :func:`register_acquisition_env` registers the env creator with Ray.
RLLIB_ENV_NAME = "pfm_acquisition"
#: Metric names (summed over the whole run) logged by the step callback.
INVALID_ACTIONS_METRIC = "invalid_actions_taken"
CHECKED_ACTIONS_METRIC = "actions_checked"


# --------------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------------


def register_acquisition_env(name: str = RLLIB_ENV_NAME) -> str:
    """Registers :func:`make_rllib_env` with Ray under ``name`` (returned)."""
    register_env(name, make_rllib_env)
    return name


def count_invalid_actions(*, episode: Any, metrics_logger: Any = None, **_: Any) -> None:
    """RLlib ``on_episode_step`` callback: logs whether the last action was masked out.

    Both metrics are summed over the run (``result["env_runners"][INVALID_ACTIONS_METRIC]``),
    so a run can assert ``invalid == 0`` and ``checked > 0``.
    """
    if metrics_logger is None:
        return
    invalid = bool(episode.get_infos(-1).get(INVALID_ACTION_KEY, False))
    metrics_logger.log_value(INVALID_ACTIONS_METRIC, int(invalid), reduce="lifetime_sum")
    metrics_logger.log_value(CHECKED_ACTIONS_METRIC, 1, reduce="lifetime_sum")


# --------------------------------------------------------------------------------------------
# The RLModule
# --------------------------------------------------------------------------------------------


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` where ``mask`` is true, the lowest finite value of their dtype elsewhere."""
    return logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min)


class MaskedScoreMapModule(TorchRLModule, ValueFunctionAPI):
    """Fully convolutional actor-critic that never gives mass to a masked-out action.

    Observation: ``{"planes": (C, X, Y), "scalars": (S,), "action_mask": (X * Y * n_blocks,)}``.
    The scalars are broadcast as constant planes; a 3x3 stem and dilated 3x3 residual layers
    build a feature map; a 1x1 convolution gives ``n_blocks`` logits per pixel; the critic
    pools the feature map (mean and max) into a small MLP. No weight depends on the grid size.

    ``model_config`` keys: ``channels`` (feature width, default 32) and ``dilations`` (one
    residual layer per entry, default ``[1, 2, 4]``).
    """

    def setup(self) -> None:
        space = self.observation_space
        if not isinstance(space, gym.spaces.Dict) or MASK_KEY not in space.spaces:
            raise ValueError(
                f"MaskedScoreMapModule needs a Dict observation with an {MASK_KEY!r} entry "
                f"(wrap the env in envs.acquisition.wrappers.MaskObservation), got {space}"
            )
        n_planes, *grid = space["planes"].shape
        n_scalars = int(space["scalars"].shape[0])
        n_pixels = int(np.prod(grid))
        n_actions = int(self.action_space.n)
        if len(grid) != 2 or n_actions % n_pixels:
            raise ValueError(
                f"{n_actions} actions do not split into blocks over a {tuple(grid)} pixel grid"
            )
        self.n_blocks = n_actions // n_pixels
        channels = int(self.model_config.get("channels", 32))
        dilations = list(self.model_config.get("dilations", [1, 2, 4]))

        self.stem = nn.Sequential(
            nn.Conv2d(n_planes + n_scalars, channels, 3, padding=1), nn.SiLU()
        )
        self.residual = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.SiLU())
            for d in dilations
        )
        self.actor = nn.Conv2d(channels, self.n_blocks, 1)
        # Small initial logits: the untrained policy is close to uniform over valid actions.
        nn.init.normal_(self.actor.weight, std=0.01)
        nn.init.zeros_(self.actor.bias)
        self.critic = nn.Sequential(
            nn.Linear(2 * channels, channels), nn.SiLU(), nn.Linear(channels, 1)
        )

    def _features(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        planes = observation["planes"].float()
        scalars = observation["scalars"].float()
        batch, _, nx, ny = planes.shape
        constant_planes = scalars[:, :, None, None].expand(batch, scalars.shape[1], nx, ny)
        x = self.stem(torch.cat([planes, constant_planes], dim=1))
        for layer in self.residual:
            x = x + layer(x)
        return x

    def _masked_logits(
        self, observation: dict[str, torch.Tensor], features: torch.Tensor
    ) -> torch.Tensor:
        # (B, n_blocks, X, Y) -> (B, X, Y, n_blocks) -> flat, the env's action order.
        logits = self.actor(features).permute(0, 2, 3, 1).reshape(features.shape[0], -1)
        return mask_logits(logits, observation[MASK_KEY])

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        observation = batch[Columns.OBS]
        features = self._features(observation)
        return {Columns.ACTION_DIST_INPUTS: self._masked_logits(observation, features)}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        observation = batch[Columns.OBS]
        features = self._features(observation)
        # The features come back as embeddings so the value head does not recompute them.
        return {
            Columns.ACTION_DIST_INPUTS: self._masked_logits(observation, features),
            Columns.EMBEDDINGS: features,
        }

    def compute_values(
        self, batch: dict[str, Any], embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        if embeddings is None:
            embeddings = self._features(batch[Columns.OBS])
        pooled = torch.cat([embeddings.mean(dim=(2, 3)), embeddings.amax(dim=(2, 3))], dim=1)
        return self.critic(pooled).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Ray and the PPO configuration
# --------------------------------------------------------------------------------------------


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    ship_code: bool | None = None,
    **kwargs: Any,
) -> None:
    """Joins the Ray cluster at ``address`` or, with ``None``, starts a local instance.

    ``ship_code`` (default: only when joining a cluster) uploads the project's packages with
    the job, so worker nodes need the dependencies but not a checkout. ``num_cpus`` caps a
    local instance. Worker processes get one BLAS/OpenMP thread each: many small tensors and
    factorisations run far slower with threads contending.
    """
    import envs
    import reconstruct

    if ray.is_initialized():
        return
    runtime_env: dict[str, Any] = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
    if ship_code if ship_code is not None else address is not None:
        # This package by its folder: importing ``agents`` here would close an import cycle
        # (agents -> agents.catalog -> agents.rllib -> agents).
        agents_folder = str(Path(__file__).resolve().parent)
        runtime_env["py_modules"] = [envs, agents_folder, reconstruct]
    if address is None:
        kwargs.setdefault("include_dashboard", False)
        ray.init(num_cpus=num_cpus, runtime_env=runtime_env, **kwargs)
    else:
        ray.init(address=address, runtime_env=runtime_env, **kwargs)


def ppo_config(
    env_settings: dict[str, Any],
    *,
    num_env_runners: int = 2,
    num_envs_per_env_runner: int = 1,
    num_learners: int = 0,
    train_batch_size: int = 512,
    minibatch_size: int = 128,
    num_epochs: int = 4,
    lr: float = 3e-4,
    gamma: float = 1.0,
    entropy_coeff: float = 0.01,
    channels: int = 32,
    seed: int | None = 0,
) -> PPOConfig:
    """A PPO configuration on the new API stack for the acquisition env of ``env_settings``.

    Parameters
    ----------
    env_settings
        :class:`envs.acquisition.factory.EnvConfig` fields, JSON-safe (they are sent to every env
        runner).
    num_env_runners
        Remote sampling workers (Ray actors, one CPU each); 0 samples in the driver process.
    num_envs_per_env_runner
        Envs each runner steps as one vector env.
    num_learners
        Remote learner workers (0: one learner in the driver process).
    train_batch_size, minibatch_size, num_epochs, lr, entropy_coeff
        PPO's batch (env steps per learner and iteration), SGD minibatch, epochs, learning rate,
        entropy bonus.
    gamma
        Discount; 1.0 (as in ``train.py``) keeps the return equal to the episode's normalised
        AUC under the ``"auc"`` reward.
    channels
        Feature width of :class:`MaskedScoreMapModule`.
    seed
        Seed of the env runners' envs and of the module's initialisation (None: unseeded).
    """
    try:
        json.dumps(env_settings)
    except TypeError as err:
        raise TypeError(f"env settings must be JSON-safe to reach remote workers: {err}") from None
    EnvConfig.from_kwargs(**env_settings)  # an unknown setting fails here, not in a worker
    env_name = register_acquisition_env()
    return (
        PPOConfig()
        .environment(env=env_name, env_config=dict(env_settings))
        .env_runners(
            num_env_runners=num_env_runners,
            num_envs_per_env_runner=num_envs_per_env_runner,
        )
        .learners(num_learners=num_learners)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=MaskedScoreMapModule, model_config={"channels": channels}
            )
        )
        .training(
            train_batch_size_per_learner=train_batch_size,
            # A minibatch larger than the batch is an RLlib error; a small test batch is one.
            minibatch_size=min(minibatch_size, train_batch_size),
            num_epochs=num_epochs,
            lr=lr,
            gamma=gamma,
            entropy_coeff=entropy_coeff,
        )
        .callbacks(on_episode_step=count_invalid_actions)
        .debugging(seed=seed)
    )


#: File an algorithm checkpoint written by :func:`save_checkpoint` holds beside RLlib's own:
#: the JSON-safe env settings it was trained on (so a policy can build its env).
ENV_SETTINGS_FILE = "pfm_env_settings.json"


def save_checkpoint(algorithm: Any, path: str | Path, env_settings: dict[str, Any]) -> str:
    """Saves ``algorithm`` to ``path`` (``Algorithm.save_to_path``) with the env settings it
    trained on (:data:`ENV_SETTINGS_FILE`); returns the checkpoint folder."""
    folder = Path(path).expanduser().resolve()
    checkpoint = algorithm.save_to_path(str(folder))
    (Path(checkpoint) / ENV_SETTINGS_FILE).write_text(json.dumps(env_settings, indent=2))
    return checkpoint


def module_from_checkpoint(checkpoint: str | Path) -> MaskedScoreMapModule:
    """The trained module of an algorithm checkpoint written by ``Algorithm.save_to_path``
    (a relative path is taken from the working directory: RLlib needs an absolute one)."""
    from ray.rllib.core import (
        COMPONENT_LEARNER,
        COMPONENT_LEARNER_GROUP,
        COMPONENT_RL_MODULE,
        DEFAULT_MODULE_ID,
    )
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = (
        Path(checkpoint).expanduser().resolve()
        / COMPONENT_LEARNER_GROUP
        / COMPONENT_LEARNER
        / COMPONENT_RL_MODULE
        / DEFAULT_MODULE_ID
    )
    if not path.is_dir():
        raise FileNotFoundError(
            f"no RLlib algorithm checkpoint at {checkpoint!s} (no module in it); train one "
            "with `python train_distributed.py`"
        )
    return RLModule.from_checkpoint(path)


# --------------------------------------------------------------------------------------------
# The trained module as a policy of agents.policy (evaluate.py, the live loop)
# --------------------------------------------------------------------------------------------


class RLlibPolicy(Policy):
    """An RLlib-trained :class:`MaskedScoreMapModule` behind the one policy interface.

    ``make_policy("rllib:CHECKPOINT")`` (or ``"ppo:CHECKPOINT"``, which
    :mod:`agents.catalog` recognises as an RLlib checkpoint folder) loads the module of an
    algorithm checkpoint written by ``train_distributed.py``. It acts greedily: the valid
    action of the largest logit. Its weights fit the observation planes and the block count it
    was trained with (any grid size); :meth:`env_settings` gives the planes from the
    checkpoint's recorded env settings, and :meth:`reset` refuses an env whose observation does
    not fit, naming the difference.
    """

    name = "rllib"

    def __init__(self, checkpoint: str | Path) -> None:
        super().__init__()
        self.checkpoint = Path(checkpoint).expanduser().resolve()
        self.module = module_from_checkpoint(self.checkpoint)
        self.module.eval()
        recorded = self.checkpoint / ENV_SETTINGS_FILE
        self.trained_env: dict[str, Any] = (
            json.loads(recorded.read_text()) if recorded.is_file() else {}
        )
        space = self.module.observation_space
        self.n_planes = int(space["planes"].shape[0])
        self.n_scalars = int(space["scalars"].shape[0])
        self.n_blocks = int(self.module.n_blocks)

    @classmethod
    def from_argument(cls, argument: str | None) -> RLlibPolicy:
        if not argument:
            raise ValueError("policy 'rllib' needs a checkpoint folder: rllib:PATH")
        return cls(argument)

    def env_settings(self) -> dict[str, Any]:
        """The observation settings it was trained with (component maps, optional planes)."""
        return {k: self.trained_env[k] for k in ("n_components", "planes") if k in self.trained_env}

    def reset(self, env: gym.Env, seed: int | None = None) -> None:
        super().reset(env, seed)
        planes = self.env.observation_space["planes"].shape
        scalars = self.env.observation_space["scalars"].shape[0]
        blocks = int(self.env.action_space.n) // int(np.prod(planes[1:]))
        wanted = (self.n_planes, self.n_scalars, self.n_blocks)
        if (planes[0], scalars, blocks) != wanted:
            raise ValueError(
                f"{self.checkpoint.name} was trained on {self.n_planes} planes, "
                f"{self.n_scalars} scalars and {self.n_blocks} voltage blocks; the env has "
                f"{planes[0]}, {scalars} and {blocks}: build it with the checkpoint's settings "
                f"{self.env_settings()} and --blocks {self.n_blocks}"
            )

    def act(self, observation: dict[str, np.ndarray], action_mask: np.ndarray) -> int:
        mask = np.asarray(action_mask, dtype=bool)
        batch = {
            "planes": torch.as_tensor(np.asarray(observation["planes"]))[None],
            "scalars": torch.as_tensor(np.asarray(observation["scalars"]))[None],
            MASK_KEY: torch.as_tensor(mask)[None],
        }
        with torch.no_grad():
            logits = self.module.forward_inference({Columns.OBS: batch})
        scores = logits[Columns.ACTION_DIST_INPUTS][0].double().numpy()
        scores[~mask] = -np.inf
        return int(np.argmax(scores))
