"""Is the per-step reward learnable? True one-step action values on the states a policy visits.

PPO learns which (pixel, block) to measure from the reward, the gain in R^2 per second of each
step. This study measures how much of that gain an observation could predict at all: it runs
``gp-uncertainty-per-second`` (with a share of random actions, for varied states) in the training
environment of ``train.py``, and every ``every`` steps simulates ``candidates`` actions on copies
of the reconstructor: half the heuristic's best-scored blocks, half drawn at random among the
others. Each candidate's *true* one-step value is the R^2 gain its replayed block would give,
against the env's reference, per second of instrument time (travel included). It reports:

- how often a measurement lowers R^2 (a gain below 0);
- the mean value of the heuristic's pick, of its other top candidates, of the random ones, and of
  the best candidate (what a one-step oracle would take);
- how well the heuristic's score ranks the candidates (mean within-state Spearman correlation)
  and how often its pick is the best one.

With ``--fit``, a fresh score-map policy (``agents.ppo``, the heuristic prior of ``train.py``'s
defaults) is then trained by supervision on the same states: a listwise cross-entropy between
its logits over each state's candidates and the softmax of the candidates' standardised values
(``--target value``), or of their current squared reconstruction error per second, the greedy
oracle's criterion (``--target error``). The held-out states (the last sixth of the episodes)
show whether the network ranks candidates better than the heuristic; the saved model can be
compared as a policy with ``python -m studies.ppo_compare DIR/model.zip``.

``python -m studies.action_values --episodes 60 --out DIR [--fit --target value|error]``; any
other option is ``train.py``'s (e.g. ``--grid 12``) and sets the environment and network.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agents.baselines import UncertaintyPerSecondPolicy, block_errors
from envs.acquisition.view import PrivilegedView


def _replayed_block(env, pixel: int, block: int) -> np.ndarray:
    reference = env.reference_blocks
    values = reference[pixel, block]
    return values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)


def candidate_values(env, actions: np.ndarray) -> np.ndarray:
    """True one-step R^2 gain per second of each flat action, each simulated on a copy of the
    env's reconstructor (the env itself is not changed); 0 for a block whose data is lost."""
    seconds = env.action_seconds()[actions]
    gains = np.zeros(len(actions))
    for i, action in enumerate(actions):
        pixel, block = divmod(int(action), env.n_blocks)
        values = _replayed_block(env, pixel, block)
        if not np.isfinite(values).all():
            continue
        trial = copy.deepcopy(env.reconstructor)
        trial.add(pixel, block, values)
        gains[i] = trial.r2(env.reference_blocks) - env.r2_now
    return gains / seconds


def local_error_per_second(env, actions: np.ndarray) -> np.ndarray:
    """The greedy oracle's criterion for each action: the block's current squared
    reconstruction error per second."""
    return (block_errors(PrivilegedView(env.unwrapped)) / env.action_seconds())[actions]


def collect(
    env_kwargs: dict[str, Any],
    episodes: int,
    *,
    seed_start: int = 0,
    every: int = 4,
    candidates: int = 16,
    explore: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Visit states and label candidates (module notes). Returns stacked arrays: ``planes``,
    ``scalars``, ``masks``, ``candidates`` (flat actions; the heuristic's pick first, then its
    next best, then the random ones), and per candidate the heuristic's ``score``, the true
    ``value`` and the current ``error`` per second; ``episode``."""
    from envs.acquisition.factory import make_env

    if candidates < 2 or candidates % 2:
        raise ValueError(f"candidates must be an even number >= 2, got {candidates}")
    rng = np.random.default_rng(seed)
    heuristic = UncertaintyPerSecondPolicy()
    rows: dict[str, list[np.ndarray]] = {
        k: []
        for k in ("planes", "scalars", "masks", "candidates", "score", "value", "error", "episode")
    }
    for episode in tqdm(range(episodes), desc="states", disable=not progress):
        env = make_env(**env_kwargs)
        observation, _ = env.reset(seed=seed_start + episode)
        heuristic.reset(env, seed=seed_start + episode)
        done, step = False, 0
        while not done:
            mask = env.action_masks()
            valid = np.flatnonzero(mask)
            if step % every == 0 and valid.size >= candidates:
                scores = heuristic.scores()
                order = valid[np.argsort(-scores[valid], kind="stable")]
                top = order[: candidates // 2]
                others = rng.choice(order[candidates // 2 :], candidates // 2, replace=False)
                chosen = np.concatenate([top, others])
                rows["planes"].append(observation["planes"].copy())
                rows["scalars"].append(observation["scalars"].copy())
                rows["masks"].append(mask.copy())
                rows["candidates"].append(chosen)
                rows["score"].append(scores[chosen])
                rows["value"].append(candidate_values(env, chosen))
                rows["error"].append(local_error_per_second(env, chosen))
                rows["episode"].append(np.array(episode))
            if rng.random() < explore:
                action = int(rng.choice(valid))
            else:
                action = heuristic.act(observation, mask)
            observation, _, terminated, truncated, _ = env.step(action)
            done, step = terminated or truncated, step + 1
        env.close()
    if not rows["value"]:
        raise ValueError("no state was labelled: use more episodes or a smaller --every")
    return {k: np.stack(v) for k, v in rows.items()}


def _spearman_rows(scores: np.ndarray, values: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation between ``scores`` and ``values``."""
    from scipy.stats import spearmanr

    rhos = [spearmanr(s, v).statistic for s, v in zip(scores, values, strict=True)]
    return float(np.nanmean(rhos))


def summarise(samples: dict[str, np.ndarray]) -> dict[str, float]:
    """The module's statistics over all labelled states."""
    value = samples["value"]
    half = value.shape[1] // 2
    return {
        "states": int(value.shape[0]),
        "candidates": int(value.shape[1]),
        "fraction_negative": float((value < 0).mean()),
        "heuristic_pick": float(value[:, 0].mean()),
        "heuristic_top_half": float(value[:, :half].mean()),
        "random_half": float(value[:, half:].mean()),
        "best_candidate": float(value.max(1).mean()),
        "pick_is_best": float((value.argmax(1) == 0).mean()),
        "heuristic_spearman": _spearman_rows(samples["score"], value),
        "error_criterion_spearman": _spearman_rows(samples["error"], value),
    }


def fit_score_map(
    samples: dict[str, np.ndarray],
    model,
    *,
    target: str = "value",
    epochs: int = 8,
    learning_rate: float = 3e-4,
    sharpness: float = 2.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Supervise ``model.policy``'s logits on each state's candidates (module notes); the last
    sixth of the episodes is held out. Returns ``heuristic``: the held-out Spearman correlation
    of the heuristic's scores with the candidates' values and the mean value of its pick, and
    ``epochs``: the same for the network's logits after each epoch."""
    import torch

    if target not in ("value", "error"):
        raise ValueError(f"target must be 'value' or 'error', got {target!r}")
    policy = model.policy
    episodes = samples["episode"]
    held_out = episodes >= np.quantile(episodes, 5 / 6)
    tensors = {k: torch.as_tensor(v) for k, v in samples.items()}

    def logits(index: torch.Tensor) -> torch.Tensor:
        obs = {"planes": tensors["planes"][index], "scalars": tensors["scalars"][index]}
        features = policy.extract_features(obs, policy.features_extractor)
        flat = policy.mlp_extractor.forward_actor(features)
        return flat.gather(1, tensors["candidates"][index].long())

    def soft_target(index: torch.Tensor) -> torch.Tensor:
        raw = tensors[target][index].double()
        if target == "error":
            raw = torch.log(raw.clamp_min(1e-12))
        z = (raw - raw.mean(1, keepdim=True)) / (raw.std(1, keepdim=True) + 1e-12)
        return torch.softmax(sharpness * z, 1).float()

    test = torch.as_tensor(np.flatnonzero(held_out))
    train = np.flatnonzero(~held_out)
    optimiser = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    test_values = samples["value"][test.numpy()]
    heuristic = {
        "held_out_spearman": _spearman_rows(samples["score"][test.numpy()], test_values),
        "held_out_pick_value": float(test_values[:, 0].mean()),
    }
    history = []
    for epoch in tqdm(range(epochs), desc="fit", disable=not progress):
        shuffled = rng.permutation(train)
        for start in range(0, len(shuffled), 64):
            index = torch.as_tensor(shuffled[start : start + 64])
            loss = -(soft_target(index) * torch.log_softmax(logits(index), 1)).sum(1).mean()
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimiser.step()
        with torch.no_grad():
            held = logits(test).numpy()
        picked = test_values[np.arange(len(test_values)), held.argmax(1)]
        history.append(
            {
                "epoch": epoch,
                "held_out_spearman": _spearman_rows(held, test_values),
                "held_out_pick_value": float(picked.mean()),
            }
        )
    return {"heuristic": heuristic, "epochs": history}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns what it wrote to ``DIR/action_values.json``."""
    parser = argparse.ArgumentParser(prog="python -m studies.action_values", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--episodes", type=int, default=60, help="training-env episodes to visit")
    parser.add_argument("--seed-start", type=int, default=0, help="twin seed of the first episode")
    parser.add_argument("--every", type=int, default=4, help="label every N-th state")
    parser.add_argument("--candidates", type=int, default=16, help="simulated actions per state")
    parser.add_argument("--explore", type=float, default=0.2, help="share of random actions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices and fit")
    parser.add_argument("--fit", action="store_true", help="train a score map on the states")
    parser.add_argument("--target", default="value", choices=("value", "error"))
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the supervised fit")
    parser.add_argument("--states", default="", help="reuse a states.npz instead of collecting")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args, train_options = parser.parse_known_args(argv)

    import torch

    from agents import training

    torch.manual_seed(args.seed)
    # Every other option is train.py's (agents.training.TrainArgs): the same environment and
    # network as training.
    train_args = training.parse_args([*train_options, "--out", args.out])
    env_kwargs = training.env_kwargs(
        train_args, [train_args.train_seed_start, train_args.train_seed_end]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.states:
        with np.load(args.states) as saved:
            samples = {k: saved[k] for k in saved.files}
    else:
        samples = collect(
            env_kwargs,
            args.episodes,
            seed_start=args.seed_start,
            every=args.every,
            candidates=args.candidates,
            explore=args.explore,
            seed=args.seed,
            progress=not args.quiet,
        )
        np.savez_compressed(out / "states.npz", **samples)
    result: dict[str, Any] = {"args": vars(args), "summary": summarise(samples)}
    result["collect_seconds"] = time.perf_counter() - start
    print(json.dumps(result["summary"], indent=1))
    if args.fit:
        from envs.acquisition.factory import make_env

        env = make_env(**env_kwargs)
        model = training.new_model(train_args, env)
        result["fit"] = fit_score_map(
            samples,
            model,
            target=args.target,
            epochs=args.epochs,
            seed=args.seed,
            progress=not args.quiet,
        )
        model.save(out / "model.zip")
        print("heuristic", result["fit"]["heuristic"])
        for row in result["fit"]["epochs"]:
            print(row)
        print(f"saved {out / 'model.zip'}")
    (out / "action_values.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
