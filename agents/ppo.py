"""A fully convolutional actor-critic for MaskablePPO, and the ``"ppo"`` policy that runs it.

The acquisition env's action space is ``Discrete(P * n_blocks)``, one action per (pixel, voltage
block), with the flat index ``a = (row * ny + col) * n_blocks + block``. A flattened MLP head over
tens of thousands of actions would tie the weights to one grid size and learn slowly, so the actor
here is a *score map*: convolutions over the observation planes give one logit per pixel and block,
flattened in the env's action order. No layer depends on the grid size, so the same weights run on
any ``(X, Y)``. The critic pools the same feature map over space. Its input and head layers do
depend on the number of voltage blocks; :mod:`agents.channel_policy` shares its weights over
blocks instead, so that one model serves any block count.

Network (``ScoreMapExtractor`` + ``ScoreMapHeads``):

- input: the observation planes ``(C, X, Y)`` plus every scalar broadcast as a constant plane,
  plus (``heuristic_prior=True``) derived *prior planes* read by name from the env's planes
  (:class:`envs.acquisition.observation.ObservationSpec`): the log of each block's uncertainty
  plane and the log travel factor ``log(1 + d / travel_pixels)``, ``d`` the distance of each pixel
  from the tip, and, when the observation holds them, the local surprise and the log energy;
- a 3x3 stem, then residual 3x3 convolutions with growing dilation (1, 2, 4, 8 by default), each
  also fed a global-average "context" of the map, so the receptive field spans about 33 pixels
  (several domains) while the cost stays linear in the number of pixels;
- actor: a 1x1 convolution to ``n_blocks`` logits per pixel, over the trunk's features and the
  input planes themselves (a linear skip: scoring by e.g. the uncertainty plane is one weight away);
- critic: mean- and max-pooled features through a small MLP to one value.

Prior. ``log u_b - log(1 + d / d0)`` is, up to a constant, the log of
``gp-uncertainty-per-second``'s score ``u_b / (c0 + k d)`` with ``d0 = c0 / k`` (block seconds
over travel seconds per pixel). With ``heuristic_prior=True`` the actor's 1x1 head starts as
exactly that log score divided by ``temperature`` (all other skip weights zero, trunk weights
small), so the untrained policy's greedy action *is* the cost-aware uncertainty heuristic and its
sampling is near-greedy; PPO then learns corrections through the trunk. A uniform start over
thousands of actions gave no measurable learning in 16k steps, and a learned policy that cannot
first match the heuristic has nothing to improve on.

Optional planes. With a ``surprise`` plane in the observation (:mod:`envs.acquisition.surprise`)
the prior adds ``SURPRISE_WEIGHT * local surprise`` to the log score: the untrained policy is then
``gp-surprise-per-second``; with an ``energy`` plane (:mod:`envs.acquisition.energy`) it adds the
log energy too (``gp-energy-surprise-per-second``), and with ``calibrated-energy`` (the log energy
times the power fitted to the sample) it starts as ``gp-calibrated-energy-per-second``. The model
saves the observation spec it was trained on, and :class:`PPOPolicy` runs only on envs whose
observation has the same spec.

:class:`ScoreMapPolicy` plugs these into sb3-contrib's ``MaskableActorCriticPolicy`` (the logits
are the actor's latent, the action net is the identity), so MaskablePPO trains it unchanged.
:class:`PPOPolicy` is the deployable side: it loads a saved model and acts greedily among the
valid actions, on the grid it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents.policy import Policy
from envs.acquisition.energy import ENERGY_PLANE_SCALE
from envs.acquisition.observation import ObservationSpec
from envs.acquisition.surprise import SURPRISE_PLANE_SCALE, SURPRISE_WEIGHT
from envs.acquisition.view import as_view
from reconstruct.base import resolve_device

#: Where ``train.py`` writes the shipped model, and what ``"ppo"`` without a path loads.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "ppo_default.zip"


def _check_observation_space(observation_space: spaces.Space) -> tuple[int, int]:
    """Number of input planes and scalars; a clear error for anything else."""
    if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != {
        "planes",
        "scalars",
    }:
        raise ValueError(
            "the score-map policy expects a Dict observation space with keys 'planes' (C, X, Y) "
            "and "
            f"'scalars' (S,), got {observation_space}"
        )
    planes, scalars = observation_space["planes"], observation_space["scalars"]
    if len(planes.shape) != 3 or len(scalars.shape) != 1:
        raise ValueError(
            f"expected planes of shape (C, X, Y) and scalars of shape (S,), got {planes.shape} "
            f"and {scalars.shape}"
        )
    return int(planes.shape[0]), int(scalars.shape[0])


class _DilatedBlock(nn.Module):
    """Residual 3x3 dilated convolution with a global-context term.

    ``y = x + act(conv(x) + W mean_xy(x))``
    """

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        # The global mean tells every pixel about the whole map (e.g. how much is measured),
        # which a finite receptive field cannot.
        self.context = nn.Linear(channels, channels, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.context(x.mean(dim=(2, 3)))[:, :, None, None]
        return x + self.act(self.conv(x) + context)


#: Uncertainty planes are floored at this fraction of their maximum before the log (a measured
#: block has zero variance; its action is masked anyway).
UNCERTAINTY_FLOOR = 1e-4


class PriorPlanes(nn.Module):
    """Log uncertainty per block and log travel factor (and local surprise, log energy), read by
    name from the acquisition env's planes.

    Output ``(B, nb + 1 [+ 1] [+ 1], X, Y)``: ``log u_b`` for each block, then ``log(1 + d /
    travel_pixels)`` with ``d`` the Euclidean distance in pixel pitches from the tip (the cost
    model's travel metric), then (with a ``surprise`` plane) the local surprise in log units
    (the plane times ``SURPRISE_PLANE_SCALE``, undoing the env's scaling), then (with an
    ``energy`` or ``calibrated-energy`` plane) the log pixel energy relative to the largest (the
    plane times ``ENERGY_PLANE_SCALE``).

    Parameters
    ----------
    spec
        The observation's :class:`envs.acquisition.observation.ObservationSpec`.
    travel_pixels
        Pixel pitches of travel that cost as much as one block's measurement (``d0 = c0 / k``).
    """

    def __init__(self, spec: ObservationSpec, travel_pixels: float) -> None:
        super().__init__()
        if not travel_pixels > 0:
            raise ValueError(f"travel_pixels must be > 0, got {travel_pixels}")
        self.n_blocks = spec.n_blocks
        self.travel_pixels = float(travel_pixels)
        self.uncertainty = spec.planes_of("uncertainty")
        self.tip = spec.planes_of("tip").start
        self.surprise = spec.planes_of("surprise") if spec.has("surprise") else None
        energy = next((p for p in ("energy", "calibrated-energy") if spec.has(p)), None)
        self.energy = spec.planes_of(energy) if energy else None
        self.n_outputs = self.n_blocks + 1 + int(self.surprise is not None) + int(
            self.energy is not None
        )

    def log_uncertainty(self, planes: torch.Tensor) -> torch.Tensor:
        """``(B, nb, X, Y)``: the log of each block's uncertainty plane, floored."""
        return torch.log(planes[:, self.uncertainty].clamp_min(UNCERTAINTY_FLOOR))

    def tip_distance(self, planes: torch.Tensor) -> torch.Tensor:
        """``(B, X, Y)``: Euclidean distance in pixel pitches from the tip (the cost model's
        travel metric)."""
        batch, _, nx, ny = planes.shape
        tip = planes[:, self.tip].reshape(batch, -1).argmax(dim=1)
        rows = torch.arange(nx, device=planes.device, dtype=planes.dtype)
        cols = torch.arange(ny, device=planes.device, dtype=planes.dtype)
        tip_row = torch.div(tip, ny, rounding_mode="floor").to(planes.dtype)
        tip_col = (tip % ny).to(planes.dtype)
        return torch.hypot(
            rows[None, :, None] - tip_row[:, None, None],
            cols[None, None, :] - tip_col[:, None, None],
        )

    def pixel_terms(self, planes: torch.Tensor) -> list[torch.Tensor]:
        """The terms of the log score shared by every block of a pixel, each ``(B, 1, X, Y)``:
        the local surprise and the log energy, where the observation has them."""
        parts = []
        if self.surprise is not None:
            parts.append(planes[:, self.surprise] * SURPRISE_PLANE_SCALE)
        if self.energy is not None:
            parts.append(planes[:, self.energy] * ENERGY_PLANE_SCALE)
        return parts

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        travel = torch.log1p(self.tip_distance(planes) / self.travel_pixels)[:, None]
        parts = [self.log_uncertainty(planes), travel, *self.pixel_terms(planes)]
        return torch.cat(parts, dim=1)


class ScoreMapExtractor(BaseFeaturesExtractor):
    """Convolutional trunk over ``{"planes": (B, C, X, Y), "scalars": (B, S)}``.

    Returns ``(B, F + C + S [+ nb + 1 [+ 1]], X, Y)``: the trunk's ``F`` feature channels followed
    by the input planes, the broadcast scalars and (with ``n_blocks`` given) the
    :class:`PriorPlanes`.

    Parameters
    ----------
    observation_space
        The env's Dict space with ``planes`` and ``scalars``.
    channels
        Feature channels ``F`` throughout the trunk.
    dilations
        Dilation of each residual block; the receptive field is ``3 + 2 * sum(dilations)`` pixels.
    observation_spec
        The observation's spec (:meth:`ObservationSpec.to_dict`) for the prior planes; ``None``
        for no prior planes (any plane layout).
    travel_pixels
        See :class:`PriorPlanes`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        channels: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        observation_spec: dict[str, Any] | None = None,
        travel_pixels: float = 44.0,
    ) -> None:
        n_planes, n_scalars = _check_observation_space(observation_space)
        if channels < 1 or not dilations or min(dilations) < 1:
            raise ValueError(f"need channels >= 1 and dilations >= 1, got {channels}, {dilations}")
        prior = (
            None
            if observation_spec is None
            else PriorPlanes(ObservationSpec.from_dict(observation_spec), travel_pixels)
        )
        n_inputs = n_planes + n_scalars + (0 if prior is None else prior.n_outputs)
        super().__init__(observation_space, features_dim=channels + n_inputs)
        self.prior = prior
        self.stem = nn.Sequential(nn.Conv2d(n_inputs, channels, 3, padding=1), nn.SiLU())
        self.blocks = nn.Sequential(*[_DilatedBlock(channels, int(d)) for d in dilations])

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        planes, scalars = observations["planes"], observations["scalars"]
        batch, _, nx, ny = planes.shape
        scalar_planes = scalars[:, :, None, None].expand(batch, scalars.shape[1], nx, ny)
        parts = [planes, scalar_planes]
        if self.prior is not None:
            parts.append(self.prior(planes))
        inputs = torch.cat(parts, dim=1)
        return torch.cat([self.blocks(self.stem(inputs)), inputs], dim=1)


class ScoreMapHeads(nn.Module):
    """Actor and critic latents from the trunk's feature map.

    ``forward_actor`` gives the action logits ``(B, X * Y * n_blocks)`` in the env's action order
    (pixel-major: ``(row * ny + col) * n_blocks + block``); ``forward_critic`` gives pooled features
    ``(B, value_hidden)`` for the value head.
    """

    def __init__(
        self, channels: int, n_blocks: int, value_hidden: int = 64, logit_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.n_blocks = n_blocks
        self.logit_scale = float(logit_scale)
        self.logits = nn.Conv2d(channels, n_blocks, 1)
        self.value = nn.Sequential(nn.Linear(2 * channels, value_hidden), nn.SiLU())
        self.latent_dim_vf = value_hidden
        self.latent_dim_pi = -1  # depends on the grid; never used to build a layer

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.logits(features)  # (B, nb, X, Y)
        if self.logit_scale != 1.0:
            scores = scores * self.logit_scale
        return scores.permute(0, 2, 3, 1).reshape(scores.shape[0], -1)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.value(pooled)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)


def _spec_from_flags(
    n_planes: int, n_blocks: int, surprise: bool, energy: bool, calibrated: bool
) -> ObservationSpec | None:
    """The spec of an acquisition observation with these optional planes (the flags that
    models saved before the spec carry); None when the plane count fits no acquisition layout."""
    if calibrated and not (surprise and energy):
        raise ValueError("calibrated_energy needs surprise_plane=True and energy_plane=True")
    energy_name = "calibrated-energy" if calibrated else "energy"
    optional = ("surprise",) * surprise + (energy_name,) * energy
    n_components = n_planes - 2 * n_blocks - 1 - len(optional)
    if n_components < 1:
        return None
    return ObservationSpec(n_blocks, n_components, optional)


class ScoreMapPolicy(MaskableActorCriticPolicy):
    """MaskableActorCriticPolicy whose actor is a convolutional score map (grid-size independent).

    Extra keyword arguments ``channels``, ``dilations`` and ``value_hidden`` size the network;
    ``heuristic_prior`` (default True) adds the prior planes and starts the actor as
    ``gp-uncertainty-per-second`` at ``temperature`` with travel measured in units of
    ``travel_pixels`` (see the module docstring; ``train.py`` takes it from the env's cost model).
    ``scaled_head=True`` divides the head's output by ``temperature`` instead of folding
    ``1 / temperature`` into its weights: the head's weights then live in log-score units (the
    prior's are +-1), so an optimiser step of a given size moves the scores as much at any
    temperature; folded into the weights (the default, as in models saved before), the prior
    weights are ``1 / temperature`` (20 at 0.05) and Adam's steps of ~lr per weight barely move
    them or the trunk's share of the score. ``observation_spec`` (a
    :meth:`envs.acquisition.observation.ObservationSpec.to_dict`, saved with the model) names the
    planes;
    with a ``surprise`` plane and the prior the actor starts as ``gp-surprise-per-second``, with
    an ``energy`` plane too as ``gp-energy-surprise-per-second``, with ``calibrated-energy`` as
    ``gp-calibrated-energy-per-second``. Models saved before the spec existed carry the flags
    ``surprise_plane``, ``energy_plane`` and ``calibrated_energy`` instead; they are read into a
    spec. Everything else is as in sb3-contrib. ``net_arch`` and ``features_extractor_class``
    are fixed.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Any,
        channels: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        value_hidden: int = 64,
        heuristic_prior: bool = True,
        temperature: float = 0.2,
        travel_pixels: float = 44.0,
        scaled_head: bool = False,
        observation_spec: dict[str, Any] | None = None,
        surprise_plane: bool = False,
        energy_plane: bool = False,
        calibrated_energy: bool = False,
        **kwargs: Any,
    ) -> None:
        n_planes, _ = _check_observation_space(observation_space)
        nx, ny = observation_space["planes"].shape[1:]
        if not isinstance(action_space, spaces.Discrete) or int(action_space.n) % (nx * ny):
            raise ValueError(
                f"expected a Discrete action space with a multiple of the {nx} x {ny} pixels as "
                "its size, "
                f"got {action_space}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.n_blocks = int(action_space.n) // (nx * ny)
        self.value_hidden = value_hidden
        self.heuristic_prior = bool(heuristic_prior)
        self.temperature = float(temperature)
        self.scaled_head = bool(scaled_head)
        if observation_spec is not None:
            self.observation_spec: ObservationSpec | None = ObservationSpec.from_dict(
                observation_spec
            )
        else:
            self.observation_spec = _spec_from_flags(
                n_planes, self.n_blocks, surprise_plane, energy_plane, calibrated_energy
            )
        if self.observation_spec is not None and self.observation_spec.n_planes != n_planes:
            raise ValueError(
                f"the observation has {n_planes} planes, its spec "
                f"({self.observation_spec.describe()}) names {self.observation_spec.n_planes}"
            )
        if self.heuristic_prior and self.observation_spec is None:
            optional = "a surprise plane, " * surprise_plane + "an energy plane, " * energy_plane
            raise ValueError(
                f"prior planes need the acquisition env's layout (2 x {self.n_blocks} block "
                f"planes, >= 1 component map, {optional}a tip plane), but the observation has "
                f"only {n_planes} planes; pass heuristic_prior=False for other observations"
            )
        kwargs.pop("net_arch", None)
        kwargs["features_extractor_class"] = ScoreMapExtractor
        kwargs["features_extractor_kwargs"] = {
            "channels": channels,
            "dilations": tuple(dilations),
            "observation_spec": (
                self.observation_spec.to_dict() if self.heuristic_prior else None
            ),
            "travel_pixels": float(travel_pixels),
        }
        kwargs.setdefault("share_features_extractor", True)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = ScoreMapHeads(
            self.features_dim,
            self.n_blocks,
            self.value_hidden,
            logit_scale=1.0 / self.temperature if self.scaled_head else 1.0,
        )

    def _build(self, lr_schedule: Any) -> None:
        self._build_mlp_extractor()
        # The score map already holds one logit per action: no linear layer over all of them.
        self.action_net = nn.Identity()
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            # SB3's gains: sqrt(2) in the trunk, a small actor output (near-uniform start),
            # 1 for the value.
            self.features_extractor.apply(lambda m: self.init_weights(m, gain=np.sqrt(2)))
            self.mlp_extractor.value.apply(lambda m: self.init_weights(m, gain=np.sqrt(2)))
            self.init_weights(self.mlp_extractor.logits, gain=0.01)
            self.init_weights(self.value_net, gain=1.0)
        if self.heuristic_prior:
            self._start_from_heuristic()
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _start_from_heuristic(self) -> None:
        """Make the actor's head score ``(log u_b - log travel factor) / temperature``, plus
        ``SURPRISE_WEIGHT * local surprise / temperature`` with the surprise plane and
        ``log energy / temperature`` with the energy plane.

        Every other head weight starts at zero, the trunk's included: the greedy action is then
        exactly the heuristic's (even small random trunk weights broke its many near-ties and
        cost about 0.03 AUC on a 16 x 16 twin). The head's trunk weights get gradients from the
        first update on, and through them the trunk."""
        head = self.mlp_extractor.logits
        prior_start = self.features_dim - self.features_extractor.prior.n_outputs
        weight = 1.0 if self.scaled_head else 1.0 / self.temperature
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            for block in range(self.n_blocks):
                head.weight[block, prior_start + block] = weight
            head.weight[:, prior_start + self.n_blocks] = -weight
            extra = prior_start + self.n_blocks + 1
            prior = self.features_extractor.prior
            if prior.surprise is not None:
                head.weight[:, extra] = SURPRISE_WEIGHT * weight
                extra += 1
            if prior.energy is not None:
                head.weight[:, extra] = weight

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        kwargs = data.pop("features_extractor_kwargs")
        data.pop("features_extractor_class", None)
        data.pop("net_arch", None)
        data.update(
            channels=kwargs["channels"],
            dilations=kwargs["dilations"],
            value_hidden=self.value_hidden,
            heuristic_prior=self.heuristic_prior,
            temperature=self.temperature,
            travel_pixels=kwargs["travel_pixels"],
            scaled_head=self.scaled_head,
            observation_spec=(
                None if self.observation_spec is None else self.observation_spec.to_dict()
            ),
        )
        return data

    def score_logits(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """Action logits ``(B, X * Y * n_blocks)`` for a batch of observations on any grid size."""
        return self.mlp_extractor.forward_actor(self.features_extractor(observation))


def travel_pixels_of(env: Any) -> float:
    """Pixel pitches of tip travel that cost as much as one block measured at the tip, now, in
    an acquisition env (after ``reset``; an env, a wrapper of one, or its view): the ``d0`` of
    the travel prior, from its cost model."""
    view = as_view(env)
    here = np.asarray([view.tip_pixel])
    block_seconds = float(view.block_seconds(here, 0)[0])
    return block_seconds / view.cost_model.travel_s_per_pixel


def observation_to_tensors(
    observation: dict[str, np.ndarray], device: torch.device
) -> dict[str, torch.Tensor]:
    """One env observation (or a batch) as float32 tensors with a batch axis."""
    try:
        planes = torch.as_tensor(
            np.asarray(observation["planes"]), dtype=torch.float32, device=device
        )
        scalars = torch.as_tensor(
            np.asarray(observation["scalars"]), dtype=torch.float32, device=device
        )
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(
            "observation must be a dict with arrays 'planes' (C, X, Y) and 'scalars' (S,)"
        ) from err
    if planes.ndim == 3:
        planes, scalars = planes[None], scalars[None]
    if planes.ndim != 4 or scalars.ndim != 2:
        raise ValueError(
            f"planes must be (C, X, Y) and scalars (S,), got {tuple(planes.shape)}, "
            f"{tuple(scalars.shape)}"
        )
    return {"planes": planes, "scalars": scalars}


class PPOPolicy(Policy):
    """A trained score-map MaskablePPO model acting greedily among the valid actions.

    Parameters
    ----------
    model_path
        A ``.zip`` written by ``train.py``: MaskablePPO with :class:`ScoreMapPolicy` (tied to
        its training block count) or with :class:`agents.channel_policy.ChannelScoreMapPolicy`
        (any block count: :meth:`reset` gives it the env's blocks, their descriptors and prices).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ...

    The grid of the observations may differ from the training grid; the observation contract
    (:attr:`observation_spec`: blocks, component maps, optional planes; the blocks only for a
    :class:`ScoreMapPolicy`) must be the model's:
    :meth:`env_settings` says which env settings give it, and :meth:`reset` refuses an env
    whose spec differs, naming the difference. With the heuristic prior, :meth:`reset` takes the
    travel prior's ``d0`` from the env's cost model (the instrument's public prices, as
    ``gp-uncertainty-per-second`` reads them), so a model trained with short read-outs still
    weighs travel correctly on an instrument with long ones.
    """

    name = "ppo"

    @classmethod
    def from_argument(cls, argument: str | None) -> PPOPolicy:
        """``"ppo"`` loads the shipped default model, ``"ppo:PATH"`` the model at PATH."""
        return cls(argument or DEFAULT_MODEL_PATH)

    def __init__(self, model_path: str | Path, device: str | torch.device = "auto") -> None:
        super().__init__()
        from sb3_contrib import MaskablePPO

        path = Path(model_path)
        if not path.is_file() and path.with_suffix(".zip").is_file():
            path = path.with_suffix(".zip")
        if not path.is_file():
            raise FileNotFoundError(
                f"no PPO model at {model_path!s}; train one with `python train.py`"
            )
        self.device = resolve_device(device)
        self.model_path = path
        model = MaskablePPO.load(path, device=self.device)
        #: Whether the weights fit any number of voltage blocks: a network that says so
        #: (agents.channel_policy.ChannelScoreMapPolicy, which builds on this module and so is
        #: recognised by this flag rather than imported here) takes the env's blocks at reset.
        self.block_count_free = bool(getattr(model.policy, "block_count_free", False))
        if not (isinstance(model.policy, ScoreMapPolicy) or self.block_count_free):
            raise ValueError(
                f"{path} holds a {type(model.policy).__name__}, expected a ScoreMapPolicy or "
                "a ChannelScoreMapPolicy"
            )
        self.network = model.policy
        self.network.set_training_mode(False)
        if self.network.observation_spec is None:
            raise ValueError(f"{path} was trained on observations no acquisition env gives")
        self.observation_spec: ObservationSpec = self.network.observation_spec

    @property
    def label(self) -> str:
        """``ppo`` for the shipped default model, ``ppo:NAME`` (the file's stem) for others, so
        that two models in one evaluation keep their own rows and curves."""
        if self.model_path.resolve() == DEFAULT_MODEL_PATH.resolve():
            return self.name
        return f"{self.name}:{self.model_path.stem}"

    def env_settings(self) -> dict[str, Any]:
        """The env settings (:class:`envs.acquisition.factory.EnvConfig` fields) that give this
        model's
        observation: its component maps and optional planes (the voltage blocks are the data's
        choice: :meth:`reset` refuses a different number unless the model's weights fit any,
        :attr:`block_count_free`)."""
        spec = self.observation_spec
        return {"n_components": spec.n_components, "planes": list(spec.optional)}

    def reset(self, env: Any, seed: int | None = None) -> None:
        super().reset(env, seed)
        if self.view is None:
            raise ValueError(f"{self.model_path} runs on an acquisition env (its view)")
        shown = self.view.observation_spec
        difference = self.observation_spec.mismatch(shown, compare_blocks=not self.block_count_free)
        if difference:
            raise ValueError(
                f"{self.model_path.name} was trained on {self.observation_spec.describe()}, the "
                f"env observes {shown.describe()} ({difference}); build the env with the "
                f"model's settings {self.env_settings()}"
            )
        if self.block_count_free:
            self.network.adapt_to(self.view)  # the env's blocks, their descriptors and prices
            return
        prior = self.network.features_extractor.prior
        if prior is not None:
            prior.travel_pixels = travel_pixels_of(self.view)

    @property
    def n_blocks(self) -> int:
        """Voltage blocks the model serves: those it was trained with, or (block-count free)
        those of the env it was last reset on."""
        return self.network.n_blocks

    def action_logits(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """Unmasked logits ``(X * Y * n_blocks,)`` of one observation, in the env's action order."""
        tensors = observation_to_tensors(observation, self.device)
        expected = self.network.observation_space
        n_planes, n_scalars = expected["planes"].shape[0], expected["scalars"].shape[0]
        if self.block_count_free:
            n_planes = tensors["planes"].shape[1]  # the network names a mismatch itself
        if tensors["planes"].shape[1] != n_planes or tensors["scalars"].shape[1] != n_scalars:
            raise ValueError(
                f"the observation has {tensors['planes'].shape[1]} planes and "
                f"{tensors['scalars'].shape[1]} scalars, the model was trained on {n_planes} and "
                f"{n_scalars}: use an env with {self.n_blocks} blocks per pixel and the model's "
                f"settings {self.env_settings()}"
            )
        with torch.no_grad():
            logits = self.network.score_logits(tensors)
        return logits[0].double().cpu().numpy()

    def act(self, observation: dict[str, np.ndarray], action_mask: np.ndarray) -> int:
        mask = np.asarray(action_mask, dtype=bool)
        logits = self.action_logits(observation)
        if logits.shape != mask.shape:
            raise ValueError(
                f"the model scores {logits.size} actions ({self.n_blocks} blocks per pixel) but "
                "the mask has "
                f"{mask.size}: the env's number of voltage blocks must match the model's"
            )
        if not mask.any():
            raise RuntimeError("no valid action left")
        return int(np.argmax(np.where(mask, logits, -np.inf)))
