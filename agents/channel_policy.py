"""A score-map actor-critic whose weights do not depend on the grid, the number of voltage blocks
or the number of action channels per pixel.

:class:`agents.ppo.ScoreMapPolicy` reads every plane of the observation as one input channel of
its first convolution and emits ``n_blocks`` logits per pixel from one 1x1 convolution, so its
weights only fit observations with the block count it was trained on. Here every place that
depends on a count is either shared or pooled:

- **per-block planes** (:data:`envs.acquisition.observation.PER_BLOCK_PLANES`: the measured mask
and the
  uncertainty of each block, plus the log uncertainty) go through one *block encoder* whose
  weights every block shares, together with the block's descriptor (below);
- the block features are **pooled over blocks** (mean and max) and join the **per-pixel planes**
  (component maps, optional planes such as the surprise and energy, the tip, the broadcast
  scalars and the log travel factor) in the dilated convolutional trunk of
  :class:`agents.ppo.ScoreMapPolicy`; its input width thus depends only on the component maps and
  optional planes, which the observation contract fixes;
- the **actor head** is applied to each *action channel* of a pixel with shared weights. Its
  inputs are the trunk's features, the features of the channel's block, the channel's prior
  planes (its block's log uncertainty, its own log travel factor, the pixel terms) and the
  channel's *descriptor*, a short vector that says which part of the measurement the channel is
  (:data:`DESCRIPTOR_FEATURES`: where in the pulse sequence its voltages lie, what share of the
  voltages it applies, its cost relative to the other channels);
- the critic pools the trunk over space.

Everything is fully convolutional in space. An action channel is one of the actions a pixel
offers, in the env's action order within the pixel; :class:`ActionChannels` lists them, each
with the block it measures and its descriptor. Without read windows there is one channel per
voltage block. With read windows (actions ``(pixel * n_blocks + block) * n_windows + window``)
the observation's blocks are *units*, a voltage block's curve segments
(``unit = block * n_segments + segment``), and there is one channel per (block, window): it
reads the unit where its window ends, and its descriptor's share and cost are those of its
window (a short window reads a smaller share of the pixel for fewer seconds). Each unit gets the
descriptor of the shortest window that reaches it. So the same descriptor features, and the same
weights, serve any number of blocks, windows and segments.

Heuristic start. The head has a linear skip path beside its hidden layer. With
``heuristic_prior=True`` the skip starts as ``(log u_b - log r_c - log(1 + d / (d0 r_c)) +
pixel terms) / temperature`` and the hidden layer's output weights at zero, where ``u_b`` is the
channel's block uncertainty, ``r_c`` its cost relative to the mean channel (the descriptor's
``log_relative_cost``), ``d`` the tip distance and ``d0`` the travel that costs as much as a
mean channel: the log of ``u_b / seconds_c`` up to a constant, so the untrained greedy policy
is the cost-aware uncertainty heuristic that reads the same optional planes (as for
:class:`agents.ppo.ScoreMapPolicy`), now also for blocks of uneven size. The descriptors and
``d0`` come from the env (:func:`action_channels`): :class:`agents.ppo.PPOPolicy` gives them to
the network at every reset, so one set of weights runs on 3, 4, 9 or 16 blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents.ppo import PriorPlanes, _check_observation_space, _DilatedBlock
from envs.acquisition.observation import PER_BLOCK_PLANES, ObservationSpec
from envs.acquisition.surprise import SURPRISE_WEIGHT
from envs.acquisition.view import AcquisitionView, as_view

#: What each action channel's descriptor holds, in order. Voltage positions are indices along
#: the pulse sequence as fractions of its length (0 first, 1 last); the share is the fraction of
#: the pixel's entries (voltages x reads) the channel reads, which without read windows is the
#: fraction of the sequence's voltages it applies; the cost is the log of the channel's seconds
#: at the tip over the mean channel's.
DESCRIPTOR_FEATURES = (
    "voltage_mean",
    "voltage_min",
    "voltage_max",
    "voltage_share",
    "log_relative_cost",
)


@dataclass(frozen=True)
class ActionChannels:
    """The actions one pixel offers, in the env's action order within a pixel.

    Parameters
    ----------
    blocks
        ``(n_channels,)`` the voltage block each channel measures.
    descriptors
        ``(n_channels, len(features))`` what describes each channel to the network.
    travel_pixels
        Pixel pitches of tip travel that cost as much as the mean channel (``d0``).
    features
        The descriptor's feature names; they must include ``log_relative_cost``.
    block_descriptors
        ``(n_blocks, len(features))`` the descriptor the block encoder reads for each
        observation block; default the mean over each block's channels (which must then cover
        every block). Read windows give units that no channel ends at their own descriptors.
    """

    blocks: np.ndarray
    descriptors: np.ndarray
    travel_pixels: float
    features: tuple[str, ...] = field(default=DESCRIPTOR_FEATURES)
    block_descriptors: np.ndarray | None = None

    def __post_init__(self) -> None:
        blocks = np.asarray(self.blocks, dtype=np.int64).reshape(-1)
        descriptors = np.asarray(self.descriptors, dtype=np.float32)
        features = tuple(self.features)
        if descriptors.shape != (blocks.size, len(features)) or blocks.size == 0:
            raise ValueError(
                f"need one descriptor of {len(features)} features per channel, got "
                f"{descriptors.shape} for {blocks.size} channels"
            )
        if "log_relative_cost" not in features:
            raise ValueError("the descriptor needs a 'log_relative_cost' feature")
        if self.block_descriptors is None:
            if sorted(set(blocks.tolist())) != list(range(blocks.max() + 1)):
                raise ValueError(f"channels must cover blocks 0 .. n - 1, got {blocks.tolist()}")
        else:
            per_block = np.asarray(self.block_descriptors, dtype=np.float32)
            if per_block.ndim != 2 or per_block.shape[1] != len(features):
                raise ValueError(
                    f"need one block descriptor of {len(features)} features per block, got "
                    f"{per_block.shape}"
                )
            if blocks.min() < 0 or blocks.max() >= per_block.shape[0]:
                raise ValueError(f"channel blocks {blocks.tolist()} outside the block descriptors")
            object.__setattr__(self, "block_descriptors", per_block)
        if not self.travel_pixels > 0:
            raise ValueError(f"travel_pixels must be > 0, got {self.travel_pixels}")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "descriptors", descriptors)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "travel_pixels", float(self.travel_pixels))

    @property
    def n_channels(self) -> int:
        return int(self.blocks.size)

    @property
    def n_blocks(self) -> int:
        if self.block_descriptors is not None:
            return int(self.block_descriptors.shape[0])
        return int(self.blocks.max()) + 1

    def per_block(self, like: torch.Tensor) -> torch.Tensor:
        """``(n_blocks, D)`` the block encoder's descriptors, as ``like``'s dtype and device."""
        if self.block_descriptors is not None:
            return torch.as_tensor(self.block_descriptors, dtype=like.dtype, device=like.device)
        descriptors = torch.as_tensor(self.descriptors, dtype=like.dtype, device=like.device)
        blocks = torch.as_tensor(self.blocks, device=like.device)
        return _block_means(descriptors, blocks, self.n_blocks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (saved in the model's constructor arguments)."""
        stored = {
            "blocks": self.blocks.tolist(),
            "descriptors": self.descriptors.tolist(),
            "travel_pixels": self.travel_pixels,
            "features": list(self.features),
        }
        if self.block_descriptors is not None:
            stored["block_descriptors"] = self.block_descriptors.tolist()
        return stored

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ActionChannels:
        per_block = stored.get("block_descriptors")
        return cls(
            np.asarray(stored["blocks"]),
            np.asarray(stored["descriptors"]),
            float(stored["travel_pixels"]),
            tuple(stored["features"]),
            None if per_block is None else np.asarray(per_block),
        )


def block_channels(
    block_voltages: list[np.ndarray],
    n_voltages: int,
    seconds: np.ndarray,
    travel_s_per_pixel: float,
) -> ActionChannels:
    """One action channel per voltage block.

    Parameters
    ----------
    block_voltages
        Each block's voltage indices along the pulse sequence.
    n_voltages
        Length of the pulse sequence.
    seconds
        ``(n_blocks,)`` each block's seconds measured at the tip (no travel).
    travel_s_per_pixel
        The cost model's travel seconds per pixel pitch.
    """
    seconds = np.asarray(seconds, dtype=np.float64)
    if seconds.shape != (len(block_voltages),) or not (seconds > 0).all():
        raise ValueError(f"need one positive cost per block, got {seconds}")
    span = max(n_voltages - 1, 1)
    positions = [np.asarray(v, dtype=np.float64) / span for v in block_voltages]
    mean_seconds = float(seconds.mean())
    descriptors = np.asarray(
        [
            [p.mean(), p.min(), p.max(), len(p) / n_voltages, np.log(s / mean_seconds)]
            for p, s in zip(positions, seconds, strict=True)
        ]
    )
    return ActionChannels(
        np.arange(len(block_voltages)), descriptors, mean_seconds / travel_s_per_pixel
    )


def action_channels(env: Any) -> ActionChannels:
    """The action channels of an acquisition env now (after ``reset``), read from its view (an
    env, a wrapper of one, or its :class:`~envs.acquisition.view.AcquisitionView`): one per
    voltage block (and read window), described by its layout and priced by its cost model (the
    instrument's public prices, as the cost-aware heuristics read them)."""
    view = as_view(env)
    here = np.asarray([view.tip_pixel])
    layout = view.layout
    if view.n_windows == 1:
        seconds = [float(view.block_seconds(here, b)[0]) for b in range(layout.n_blocks)]
        return block_channels(
            [layout.voltages(b) for b in range(layout.n_blocks)],
            layout.n_voltages,
            np.asarray(seconds),
            view.cost_model.travel_s_per_pixel,
        )
    return _window_channels(view, here)


def _window_channels(view: AcquisitionView, here: np.ndarray) -> ActionChannels:
    """One channel per (block, read window), in action order; see the module docstring."""
    layout, windows = view.layout, view.read_windows
    n_segments, segments = windows.n_segments, windows.segments
    cells = [(b, w) for b in range(layout.n_blocks) for w in range(windows.n_windows)]
    voltages = [layout.voltages(b) for b, _ in cells]
    seconds = np.asarray([float(view.block_seconds(here, b, w)[0]) for b, w in cells])
    plain = block_channels(voltages, layout.n_voltages, seconds, view.cost_model.travel_s_per_pixel)
    share = DESCRIPTOR_FEATURES.index("voltage_share")
    descriptors = plain.descriptors.copy()
    read_share = np.asarray([segments[w] / n_segments for _, w in cells])
    descriptors[:, share] *= read_share
    # Each unit: the descriptor of the shortest window of its block that reaches it.
    shortest = np.searchsorted(segments, np.arange(n_segments), side="right")
    per_unit = np.stack(
        [descriptors[b * windows.n_windows + shortest[s]]
         for b in range(layout.n_blocks) for s in range(n_segments)]
    )  # fmt: skip
    ends = np.asarray([b * n_segments + segments[w] - 1 for b, w in cells])
    return ActionChannels(ends, descriptors, plain.travel_pixels, DESCRIPTOR_FEATURES, per_unit)


class ChannelFeatures(NamedTuple):
    """What the trunk hands to the heads."""

    trunk: torch.Tensor  # (B, F, X, Y) per-pixel features
    blocks: torch.Tensor  # (B, nb, Fb, X, Y) each block's features
    prior: torch.Tensor  # (B, n_channels, K, X, Y) each channel's prior planes
    channel_blocks: torch.Tensor  # (n_channels,) long: the block of each channel
    descriptors: torch.Tensor  # (n_channels, D)


class ChannelScoreMapExtractor(BaseFeaturesExtractor):
    """Block encoder, block pooling and the dilated trunk (see the module docstring).

    Parameters
    ----------
    observation_space
        The env's Dict space with ``planes`` and ``scalars`` (its block count is not used).
    observation_spec
        The training observation's spec (:meth:`ObservationSpec.to_dict`): which planes are
        per block, which per pixel; observations with other block counts are read with the
        same per-pixel planes (:meth:`ObservationSpec.for_plane_count`).
    action_channels
        :meth:`ActionChannels.to_dict` of the training env; :meth:`set_action_channels`
        replaces it for another env.
    channels, block_features, dilations
        Trunk width ``F``, block encoder width ``Fb``, dilations of the trunk's residual blocks.
    """

    #: Prior planes of a channel before the pixel terms: log uncertainty of its block, its log
    #: travel factor.
    N_CHANNEL_PRIOR = 2

    def __init__(
        self,
        observation_space: spaces.Dict,
        observation_spec: dict[str, Any],
        action_channels: dict[str, Any],
        channels: int = 16,
        block_features: int = 8,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
    ) -> None:
        n_planes, n_scalars = _check_observation_space(observation_space)
        if channels < 1 or block_features < 1 or not dilations or min(dilations) < 1:
            raise ValueError(
                f"need channels, block_features and dilations >= 1, got {channels}, "
                f"{block_features}, {dilations}"
            )
        super().__init__(observation_space, features_dim=channels)
        self.spec = ObservationSpec.from_dict(observation_spec)
        self.spec.for_plane_count(n_planes)  # a clear error for a space of another contract
        self.set_action_channels(ActionChannels.from_dict(action_channels))
        self._priors: dict[int, PriorPlanes] = {}
        n_descriptor = len(self.action_channels.features)
        prior = self._prior(self.spec)
        # The heuristic's weight of each prior plane of a channel: log uncertainty, log travel
        # factor, then the pixel terms PriorPlanes gives (surprise, energy) where present.
        self.heuristic_weights = [1.0, -1.0]
        self.heuristic_weights += [SURPRISE_WEIGHT] * (prior.surprise is not None)
        self.heuristic_weights += [1.0] * (prior.energy is not None)
        n_pixel_terms = len(self.heuristic_weights) - self.N_CHANNEL_PRIOR
        self.n_prior = len(self.heuristic_weights)
        block_inputs = len(PER_BLOCK_PLANES) + 1 + n_descriptor  # + log uncertainty
        self.block_encoder = nn.Sequential(
            nn.Conv2d(block_inputs, block_features, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(block_features, block_features, 1),
            nn.SiLU(),
        )
        # per-pixel planes, scalars, log travel factor and pixel terms, pooled block features
        trunk_inputs = len(self.spec.shared_planes()) + n_scalars + 1 + n_pixel_terms
        trunk_inputs += 2 * block_features
        self.stem = nn.Sequential(nn.Conv2d(trunk_inputs, channels, 3, padding=1), nn.SiLU())
        self.blocks = nn.Sequential(*[_DilatedBlock(channels, int(d)) for d in dilations])
        self.block_features = block_features

    def set_action_channels(self, channels: ActionChannels) -> None:
        """Serve an env with these action channels (its blocks, descriptors and travel scale);
        a descriptor with other features than the model's is refused by name."""
        known = getattr(self, "action_channels", None)
        if known is not None and channels.features != known.features:
            raise ValueError(
                f"the model's channel descriptors hold {list(known.features)}, the env's "
                f"{list(channels.features)}"
            )
        self.action_channels = channels

    def _prior(self, spec: ObservationSpec) -> PriorPlanes:
        """The prior planes' reader for observations of ``spec`` (one per block count)."""
        if spec.n_blocks not in self._priors:
            self._priors[spec.n_blocks] = PriorPlanes(spec, self.action_channels.travel_pixels)
        prior = self._priors[spec.n_blocks]
        prior.travel_pixels = self.action_channels.travel_pixels
        return prior

    def forward(self, observations: dict[str, torch.Tensor]) -> ChannelFeatures:
        planes, scalars = observations["planes"], observations["scalars"]
        batch, n_planes, nx, ny = planes.shape
        spec = self.spec.for_plane_count(n_planes)
        channels = self.action_channels
        if spec.n_blocks != channels.n_blocks:
            raise ValueError(
                f"the observation holds {spec.n_blocks} voltage blocks, the policy's action "
                f"channels {channels.n_blocks}: give it the env's channels "
                "(set_action_channels(action_channels(env)); PPOPolicy.reset does)"
            )
        prior = self._prior(spec)
        descriptors = torch.as_tensor(
            channels.descriptors, dtype=planes.dtype, device=planes.device
        )
        channel_blocks = torch.as_tensor(channels.blocks, device=planes.device)
        block_descriptors = channels.per_block(planes)

        # Each block's planes and its descriptor, blocks folded into the batch: one encoder.
        log_uncertainty = prior.log_uncertainty(planes)  # (B, nb, X, Y)
        per_block = planes[:, torch.as_tensor(spec.block_planes(), device=planes.device)]
        per_block = torch.cat([per_block, log_uncertainty[:, None]], dim=1).transpose(1, 2)
        described = block_descriptors[None, :, :, None, None].expand(batch, -1, -1, nx, ny)
        encoded = self.block_encoder(
            torch.cat([per_block, described], dim=2).flatten(0, 1)
        ).unflatten(0, (batch, spec.n_blocks))  # (B, nb, Fb, X, Y)

        distance = prior.tip_distance(planes)  # (B, X, Y)
        pixel_terms = prior.pixel_terms(planes)
        scalar_planes = scalars[:, :, None, None].expand(batch, scalars.shape[1], nx, ny)
        trunk_inputs = [
            planes[:, torch.as_tensor(spec.shared_planes(), device=planes.device)],
            scalar_planes,
            torch.log1p(distance / channels.travel_pixels)[:, None],
            *pixel_terms,
            encoded.mean(dim=1),
            encoded.amax(dim=1),
        ]
        trunk = self.blocks(self.stem(torch.cat(trunk_inputs, dim=1)))

        # Each channel's prior planes: its block's log uncertainty, its own travel factor
        # (travel costs the same seconds for every channel, so it weighs less against a dearer
        # channel), then the pixel terms.
        relative_cost = torch.exp(descriptors[:, channels.features.index("log_relative_cost")])
        channel_travel = torch.log1p(
            distance[:, None] / (channels.travel_pixels * relative_cost)[None, :, None, None]
        )
        n_channels = channels.n_channels
        channel_prior = [
            log_uncertainty[:, channel_blocks],
            channel_travel,
            *(term.expand(batch, n_channels, nx, ny) for term in pixel_terms),
        ]
        return ChannelFeatures(
            trunk, encoded, torch.stack(channel_prior, dim=2), channel_blocks, descriptors
        )


def _block_means(values: torch.Tensor, blocks: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """``(n_blocks, D)``: the mean of ``values`` ``(n_channels, D)`` over each block's
    channels."""
    sums = torch.zeros(n_blocks, values.shape[1], dtype=values.dtype, device=values.device)
    sums.index_add_(0, blocks, values)
    counts = torch.bincount(blocks, minlength=n_blocks).to(values.dtype)
    return sums / counts[:, None]


class ChannelHeads(nn.Module):
    """The actor head, shared by every action channel, and the pooled critic.

    For channel ``c`` of block ``b`` at a pixel, with trunk features ``t``, block features
    ``e_b``, prior planes ``q_c`` and descriptor ``z_c``::

        pre    = A t + B [e_b, q_c] + C z_c + bias      (hidden units and one skip unit)
        logit  = w . silu(pre_hidden) + pre_skip

    The trunk's part ``A t`` is computed once per pixel, not once per channel. The output is
    ``(B, X * Y * n_channels)`` in the env's action order (pixel-major).
    """

    def __init__(
        self,
        trunk_dim: int,
        block_dim: int,
        prior_dim: int,
        descriptor_dim: int,
        hidden: int = 16,
        value_hidden: int = 64,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden, self.block_dim = int(hidden), int(block_dim)
        self.logit_scale = float(logit_scale)
        self.from_trunk = nn.Conv2d(trunk_dim, hidden + 1, 1)
        self.from_channel = nn.Conv2d(block_dim + prior_dim, hidden + 1, 1, bias=False)
        self.from_descriptor = nn.Linear(descriptor_dim, hidden + 1, bias=False)
        self.out = nn.Linear(hidden, 1)
        self.value = nn.Sequential(nn.Linear(2 * trunk_dim, value_hidden), nn.SiLU())
        self.latent_dim_vf = value_hidden
        self.latent_dim_pi = -1  # depends on the grid and the channels; never builds a layer

    def channel_logits(
        self,
        trunk: torch.Tensor,
        block_features: torch.Tensor,
        prior: torch.Tensor,
        channel_blocks: torch.Tensor,
        descriptors: torch.Tensor,
    ) -> torch.Tensor:
        """``(B, n_channels, X, Y)`` logits from the parts of :class:`ChannelFeatures`."""
        batch, n_channels = prior.shape[:2]
        own = torch.cat([block_features[:, channel_blocks], prior], dim=2)
        pre = (
            self.from_trunk(trunk)[:, None]
            + self.from_channel(own.flatten(0, 1)).unflatten(0, (batch, n_channels))
            + self.from_descriptor(descriptors)[None, :, :, None, None]
        )  # (B, n_channels, hidden + 1, X, Y)
        hidden = nn.functional.silu(pre[:, :, : self.hidden])
        logits = self.out(hidden.movedim(2, -1)).squeeze(-1) + pre[:, :, self.hidden]
        return logits * self.logit_scale if self.logit_scale != 1.0 else logits

    def forward_actor(self, features: ChannelFeatures) -> torch.Tensor:
        logits = self.channel_logits(*features)
        return logits.permute(0, 2, 3, 1).reshape(logits.shape[0], -1)

    def forward_critic(self, features: ChannelFeatures) -> torch.Tensor:
        trunk = features.trunk
        return self.value(torch.cat([trunk.mean(dim=(2, 3)), trunk.amax(dim=(2, 3))], dim=1))

    def forward(self, features: ChannelFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def start_from_heuristic(
        self, prior_weights: list[float], descriptor_cost: int, cost_weight: float
    ) -> None:
        """Make the skip unit score ``sum_k prior_weights[k] * q_c[k] + cost_weight *
        z_c[descriptor_cost]`` and silence the hidden units' output, so that the logits are
        exactly that score (even small random terms broke the heuristic's near-ties)."""
        skip = self.hidden
        with torch.no_grad():
            for layer in (self.from_trunk, self.from_channel, self.from_descriptor):
                layer.weight[skip].zero_()
            self.from_trunk.bias[skip] = 0.0
            self.out.weight.zero_()
            self.out.bias.zero_()
            weights = torch.as_tensor(prior_weights, dtype=self.from_channel.weight.dtype)
            self.from_channel.weight[skip, self.block_dim :, 0, 0] = weights
            self.from_descriptor.weight[skip, descriptor_cost] = cost_weight


class ChannelScoreMapPolicy(MaskableActorCriticPolicy):
    """MaskableActorCriticPolicy with weights shared over voltage blocks and action channels
    (see the module docstring): one set of weights for any grid and any block count.

    Parameters (beyond sb3-contrib's)
    ----------
    observation_spec
        :meth:`envs.acquisition.observation.ObservationSpec.to_dict` of the training env.
    action_channels
        :meth:`ActionChannels.to_dict` of the training env (:func:`action_channels`).
    channels, block_features, dilations, head_hidden, value_hidden
        Widths: trunk, block encoder, the trunk's dilations, the head's hidden units, critic.
    heuristic_prior, temperature, scaled_head
        As for :class:`agents.ppo.ScoreMapPolicy`: start the actor as the cost-aware
        heuristic that reads the same planes, at ``temperature``, with ``1 / temperature``
        folded into the head's weights or (``scaled_head``) multiplying its output.
    """

    #: The weights fit any number of voltage blocks (:class:`agents.ppo.PPOPolicy` reads this).
    block_count_free = True

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Any,
        observation_spec: dict[str, Any],
        action_channels: dict[str, Any],
        channels: int = 16,
        block_features: int = 8,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
        head_hidden: int = 16,
        value_hidden: int = 64,
        heuristic_prior: bool = True,
        temperature: float = 0.05,
        scaled_head: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_observation_space(observation_space)
        nx, ny = observation_space["planes"].shape[1:]
        n_channels = ActionChannels.from_dict(action_channels).n_channels
        if not isinstance(action_space, spaces.Discrete) or int(action_space.n) != (
            nx * ny * n_channels
        ):
            raise ValueError(
                f"expected Discrete({nx} x {ny} pixels x {n_channels} channels), got {action_space}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.observation_spec = ObservationSpec.from_dict(observation_spec)
        self.head_hidden, self.value_hidden = int(head_hidden), int(value_hidden)
        self.heuristic_prior = bool(heuristic_prior)
        self.temperature, self.scaled_head = float(temperature), bool(scaled_head)
        kwargs.pop("net_arch", None)
        kwargs["features_extractor_class"] = ChannelScoreMapExtractor
        kwargs["features_extractor_kwargs"] = {
            "observation_spec": self.observation_spec.to_dict(),
            "action_channels": dict(action_channels),
            "channels": int(channels),
            "block_features": int(block_features),
            "dilations": tuple(int(d) for d in dilations),
        }
        kwargs.setdefault("share_features_extractor", True)
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], **kwargs)

    def _build(self, lr_schedule: Any) -> None:
        extractor: ChannelScoreMapExtractor = self.features_extractor
        self.mlp_extractor = ChannelHeads(
            self.features_dim,
            extractor.block_features,
            extractor.n_prior,
            len(extractor.action_channels.features),
            hidden=self.head_hidden,
            value_hidden=self.value_hidden,
            logit_scale=1.0 / self.temperature if self.scaled_head else 1.0,
        )
        # The heads already give one logit per action: no layer over all of them.
        self.action_net = nn.Identity()
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            # SB3's gains: sqrt(2) in hidden layers, 0.01 on the actor's output, 1 on the value.
            for module in (self.features_extractor, self.mlp_extractor):
                module.apply(lambda m: self.init_weights(m, gain=np.sqrt(2)))
            self.init_weights(self.mlp_extractor.out, gain=0.01)
            self.init_weights(self.value_net, gain=1.0)
        if self.heuristic_prior:
            # log u_b - log travel_c - log r_c (+ pixel terms), over the temperature unless
            # the head's output is scaled by it.
            weight = 1.0 if self.scaled_head else 1.0 / self.temperature
            self.mlp_extractor.start_from_heuristic(
                [w * weight for w in extractor.heuristic_weights],
                extractor.action_channels.features.index("log_relative_cost"),
                -weight,
            )
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        kwargs = data.pop("features_extractor_kwargs")
        data.pop("features_extractor_class", None)
        data.pop("net_arch", None)
        data.update(
            observation_spec=kwargs["observation_spec"],
            action_channels=self.features_extractor.action_channels.to_dict(),
            channels=kwargs["channels"],
            block_features=kwargs["block_features"],
            dilations=kwargs["dilations"],
            head_hidden=self.head_hidden,
            value_hidden=self.value_hidden,
            heuristic_prior=self.heuristic_prior,
            temperature=self.temperature,
            scaled_head=self.scaled_head,
        )
        return data

    @property
    def n_blocks(self) -> int:
        """Voltage blocks of the env the policy serves now."""
        return self.features_extractor.action_channels.n_blocks

    def adapt_to(self, env: Any) -> None:
        """Serve ``env`` (after its ``reset``; or its view): take its action channels and travel
        scale."""
        self.features_extractor.set_action_channels(action_channels(env))

    def score_logits(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """Action logits ``(B, X * Y * n_channels)`` for a batch of observations."""
        return self.mlp_extractor.forward_actor(self.features_extractor(observation))
