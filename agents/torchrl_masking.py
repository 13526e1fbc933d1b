"""The acquisition env and a masked stochastic policy for TorchRL training loops.

TorchRL reads an action mask from the observation, not from ``action_masks()``, so the env is
wrapped in :class:`envs.acquisition.wrappers.MaskObservation` before TorchRL's ``GymWrapper``, and
its ``ActionMask`` transform keeps the action spec's mask up to date (random rollouts and
``action_spec.rand()`` then respect it). A policy samples from a ``MaskedCategorical`` over its
logits and that mask, so a masked-out action has probability zero; its log-probability, entropy
and the PPO ratio are computed over the valid actions only.

TorchRL is an optional dependency (the ``test`` extra); it is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from envs.acquisition.factory import make_env
from envs.acquisition.wrappers import MaskObservation

#: Key of the action mask in the TorchRL tensordicts (the ``MaskObservation`` entry).
MASK_KEY = "action_mask"


def make_masked_torchrl_env(settings: dict[str, Any], *, seed: int | None = None) -> Any:
    """The env of ``settings`` (:func:`envs.acquisition.factory.make_env`) as a TorchRL env with
    the mask.

    Actions are integer indices (``categorical_action_encoding``), the same numbers the
    Gymnasium env takes; ``seed`` seeds the env's draws (twin samples, resets).
    """
    import torch
    from torchrl.envs import GymWrapper, TransformedEnv
    from torchrl.envs.transforms import ActionMask, Compose, DTypeCastTransform

    base = GymWrapper(
        MaskObservation(make_env(**settings), key=MASK_KEY), categorical_action_encoding=True
    )
    # The Gymnasium mask is int8 (MultiBinary); TorchRL's masks must be bool: ``~mask`` of an
    # int8 tensor is a bitwise not, which would silently mask nothing.
    to_bool = DTypeCastTransform(torch.int8, torch.bool, in_keys=[MASK_KEY])
    env = TransformedEnv(base, Compose(to_bool, ActionMask(mask_key=MASK_KEY)))
    if seed is not None:
        env.set_seed(seed)
    return env


def masked_categorical_actor(
    logits_network: nn.Module,
    in_keys: Sequence[str],
    action_spec: Any = None,
    *,
    logits_key: str = "logits",
) -> Any:
    """A TorchRL ``ProbabilisticActor`` sampling from ``MaskedCategorical(logits, mask)``.

    ``logits_network`` maps the tensors under ``in_keys`` (e.g. ``"planes"``, ``"scalars"``)
    to one logit per action; the mask is read from :data:`MASK_KEY` at every call, so the same
    actor serves rollouts (sampling) and losses (log-probabilities of stored actions). The
    actor writes ``"action"`` and its log-probability (``return_log_prob``), which TorchRL's
    PPO and A2C losses read.
    """
    from tensordict.nn import TensorDictModule
    from torchrl.modules import MaskedCategorical, ProbabilisticActor

    logits_module = TensorDictModule(logits_network, in_keys=list(in_keys), out_keys=[logits_key])
    return ProbabilisticActor(
        module=logits_module,
        in_keys={"logits": logits_key, "mask": MASK_KEY},
        out_keys=["action"],
        spec=action_spec,
        distribution_class=MaskedCategorical,
        return_log_prob=True,
    )
