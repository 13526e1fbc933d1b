"""A short masked PPO training loop in TorchRL (agents.torchrl_masking), not only a rollout.

The env runs under TorchRL's ``GymWrapper`` with the ``ActionMask`` transform, the policy samples
from a ``MaskedCategorical``, and TorchRL's own ``ClipPPOLoss`` and ``GAE`` do the updates: the
loss must stay finite, the weights must move, and no masked-out action may ever be sampled.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torchrl")

from tensordict.nn import set_interaction_type  # noqa: E402
from tiny_settings import TINY_ENV  # noqa: E402
from torchrl.envs.utils import ExplorationType, check_env_specs  # noqa: E402
from torchrl.modules import ValueOperator  # noqa: E402
from torchrl.objectives import ClipPPOLoss  # noqa: E402
from torchrl.objectives.value import GAE  # noqa: E402

from agents.torchrl_masking import (  # noqa: E402
    MASK_KEY,
    make_masked_torchrl_env,
    masked_categorical_actor,
)

TINY = TINY_ENV
STEPS_PER_ROLLOUT = 16
ITERATIONS = 3
EPOCHS = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _as_batch(planes: torch.Tensor, scalars: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Planes ``(..., C, X, Y)`` with the scalars as constant planes, as ``(N, C + S, X, Y)``,
    and the leading shape (a single step has none, a rollout has its time axis)."""
    leading = planes.shape[:-3]
    planes = planes.reshape(-1, *planes.shape[-3:])
    scalars = scalars.reshape(-1, scalars.shape[-1])
    constant = scalars[:, :, None, None].expand(-1, -1, *planes.shape[-2:])
    return torch.cat([planes, constant], dim=1), leading


class TinyScoreMapLogits(nn.Module):
    """One logit per (pixel, block), in the env's action order ``(row * ny + col) * nb + b``."""

    def __init__(self, n_inputs: int, n_blocks: int, channels: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(n_inputs, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, n_blocks, 1)
        )

    def forward(self, planes: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        x, leading = _as_batch(planes, scalars)
        logits = self.net(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return logits.reshape(*leading, -1)


class TinyCritic(nn.Module):
    """State value from the mean of a small convolutional feature map."""

    def __init__(self, n_inputs: int, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n_inputs, channels, 3, padding=1), nn.SiLU())
        self.head = nn.Linear(channels, 1)

    def forward(self, planes: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        x, leading = _as_batch(planes, scalars)
        return self.head(self.conv(x).mean(dim=(2, 3))).reshape(*leading, 1)


def test_the_masked_env_passes_torchrl_spec_checks_with_a_bool_mask():
    env = make_masked_torchrl_env(TINY, seed=0)
    assert env.observation_spec[MASK_KEY].dtype == torch.bool
    check_env_specs(env, seed=0)


def test_masked_ppo_updates_train_and_never_sample_a_masked_action():
    torch.manual_seed(0)
    env = make_masked_torchrl_env(TINY, seed=0)
    n_planes, *grid = env.observation_spec["planes"].shape
    n_inputs = n_planes + env.observation_spec["scalars"].shape[-1]
    n_blocks = env.action_spec.space.n // (grid[0] * grid[1])

    actor = masked_categorical_actor(
        TinyScoreMapLogits(n_inputs, n_blocks), ["planes", "scalars"], env.action_spec
    )
    critic = ValueOperator(TinyCritic(n_inputs), in_keys=["planes", "scalars"])
    advantage = GAE(gamma=1.0, lmbda=0.95, value_network=critic)
    loss_module = ClipPPOLoss(actor, critic, entropy_coeff=0.01)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=1e-2)
    initial = [p.detach().clone() for p in actor.parameters()]

    for _ in range(ITERATIONS):
        # Sample (not the distribution's mode) while collecting, as training does.
        with torch.no_grad(), set_interaction_type(ExplorationType.RANDOM):
            batch = env.rollout(STEPS_PER_ROLLOUT, actor)
        assert batch.batch_size == (STEPS_PER_ROLLOUT,)  # no episode ends this early
        mask, actions = batch[MASK_KEY], batch["action"]
        assert mask.dtype == torch.bool
        assert mask.gather(-1, actions.unsqueeze(-1)).all()  # each action valid when taken
        assert len(set(actions.tolist())) == len(actions)  # so none was measured twice

        with torch.no_grad():
            advantage(batch)
        for _ in range(EPOCHS):
            losses = loss_module(batch)
            total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
            assert torch.isfinite(total), {k: v.item() for k, v in losses.items()}
            optimizer.zero_grad()
            total.backward()
            optimizer.step()

    assert any(not torch.equal(p, q) for p, q in zip(actor.parameters(), initial, strict=True))

    # The distribution the loss sees gives masked-out actions no mass at all.
    with torch.no_grad():
        distribution = actor.get_dist(batch)
        masked_out = (~batch[MASK_KEY]).nonzero()
        step, action = masked_out[0]
        assert distribution.log_prob(torch.full_like(batch["action"], action))[step] == -torch.inf
        samples = distribution.sample((64,))
    assert batch[MASK_KEY].gather(-1, samples.T).all()
