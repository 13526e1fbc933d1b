"""evaluate.py end to end on a tiny twin: files written, table and verdict printed."""

import csv
import json

import pytest

import evaluate


def test_evaluate_writes_results_and_figures(tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    argv = [
        "--agents",
        "random,gp-uncertainty,greedy-oracle",
        "--seeds",
        "2",
        "--grid",
        "10",
        "--budget-fraction",
        "0.4",
        "--charge-decisions",
        "none",
        "--out",
        str(out),
    ]
    monkeypatch.setattr(
        evaluate, "_twin_overrides", lambda grid: {"grid": [grid, grid], "n_times": 16}
    )
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "challenge (>= 25 % time saved at R^2 >= 0.90)" in printed
    assert "greedy-oracle (privileged)" in printed
    payload = json.loads((out / "results.json").read_text())
    assert len(payload["results"]) == 3
    assert payload["config"]["seeds"] == 2
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["agent"] for r in rows} == {"random", "gp-uncertainty", "greedy-oracle (privileged)"}
    for r in rows:
        assert 0.0 < float(r["auc"]) <= 1.0
    assert (out / "curves_twin.png").stat().st_size > 10_000
    assert (out / "reconstructions_twin.png").stat().st_size > 10_000
    # one row per agent and seed, whose mean is the summary's AUC
    with open(out / "episodes.csv") as f:
        episodes = list(csv.DictReader(f))
    assert len(episodes) == 3 * 2
    start = evaluate.HELD_OUT_SEED_START
    assert {(e["agent"], int(e["seed"])) for e in episodes} == {
        (r["agent"], seed) for r in rows for seed in (start, start + 1)
    }
    for r in rows:
        aucs = [float(e["auc"]) for e in episodes if e["agent"] == r["agent"]]
        assert sum(aucs) / 2 == pytest.approx(float(r["auc"]))
        seconds = [e["seconds_to_0.90"] for e in episodes if e["agent"] == r["agent"]]
        reached = [float(x) for x in seconds if x != ""]
        assert len(reached) == int(r["reached_0.90"])


def test_evaluate_is_deterministic_for_a_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(
        evaluate, "_twin_overrides", lambda grid: {"grid": [grid, grid], "n_times": 16}
    )
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        evaluate.main(
            [
                "--agents",
                "random",
                "--seeds",
                "1",
                "--grid",
                "10",
                "--budget-fraction",
                "0.2",
                "--charge-decisions",
                "none",
                "--out",
                str(out),
            ]
        )
        rows = json.loads((out / "results.json").read_text())["results"]
        for row in rows:
            row.pop("decision_seconds_median")  # wall clock: reported, never charged here
        results.append(json.dumps(rows))  # NaN-safe comparison
    assert results[0] == results[1]


def test_unknown_agent_is_a_clear_error(tmp_path, capsys):
    assert evaluate.main(["--agents", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown policy 'nonsense'" in capsys.readouterr().err


def test_an_agent_given_twice_is_a_clear_error(tmp_path, capsys):
    args = ["--agents", "random,raster,random", "--out", str(tmp_path)]
    assert evaluate.main(args) == 2
    assert "agents given twice: random" in capsys.readouterr().err


def test_ppo_models_keep_their_own_labels(tmp_path):
    """The shipped model is ``ppo`` however it is named; another file is ``ppo:STEM``."""
    import shutil

    from agents.ppo import DEFAULT_MODEL_PATH
    from agents.registry import make_policy

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no shipped model")
    other = tmp_path / "other_model.zip"
    shutil.copy(DEFAULT_MODEL_PATH, other)
    assert make_policy("ppo").label == "ppo"
    assert make_policy(f"ppo:{DEFAULT_MODEL_PATH}").label == "ppo"
    assert make_policy(f"ppo:{other}").label == "ppo:other_model"


def test_default_agents_include_the_shipped_ppo_model():
    from agents.ppo import DEFAULT_MODEL_PATH, PPOPolicy
    from agents.registry import make_policy

    names = evaluate.DEFAULT_AGENTS.split(",")
    assert "ppo" in names
    policy = make_policy("ppo")  # loads models/ppo_default.zip
    assert isinstance(policy, PPOPolicy)
    assert policy.model_path == DEFAULT_MODEL_PATH
