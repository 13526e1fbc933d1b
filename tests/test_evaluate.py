"""evaluate.py end to end on a tiny twin: files written, table and verdict printed."""

import csv
import json
import math

import numpy as np
import pytest

import evaluate


def _short_twin_overrides(grid, setting="default"):
    """Twin samples with 16 read-outs: episodes take a fraction of a second."""
    return {"grid": [grid, grid], "n_times": 16}


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
        evaluate, "_twin_overrides", _short_twin_overrides
    )
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "challenge (>= 25 % time saved at R^2 >= 0.90, and with a time axis" in printed
    assert "greedy-oracle (privileged)" in printed
    assert "+ dynamics kept" in printed
    payload = json.loads((out / "results.json").read_text())
    assert len(payload["results"]) == 3
    for result in payload["results"]:  # the relaxation per voltage map, 16 voltages
        assert len(result["final_r2_dynamics_per_voltage"]) == 16
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
        # the relaxation is checked once R^2 >= 0.90, so never before that
        for e in episodes:
            if e["agent"] == r["agent"] and e["seconds_to_dynamics"] != "":
                assert float(e["seconds_to_dynamics"]) >= float(e["seconds_to_0.90"])


def test_evaluate_is_deterministic_for_a_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(
        evaluate, "_twin_overrides", _short_twin_overrides
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

    from agents.catalog import make_policy
    from agents.ppo import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no shipped model")
    other = tmp_path / "other_model.zip"
    shutil.copy(DEFAULT_MODEL_PATH, other)
    assert make_policy("ppo").label == "ppo"
    assert make_policy(f"ppo:{DEFAULT_MODEL_PATH}").label == "ppo"
    assert make_policy(f"ppo:{other}").label == "ppo:other_model"


def test_default_agents_include_the_shipped_ppo_model():
    from agents.catalog import make_policy
    from agents.ppo import DEFAULT_MODEL_PATH, PPOPolicy

    names = evaluate.DEFAULT_AGENTS.split(",")
    assert "ppo" in names
    policy = make_policy("ppo")  # loads models/ppo_default.zip
    assert isinstance(policy, PPOPolicy)
    assert policy.model_path == DEFAULT_MODEL_PATH


# --- a run a scientist can trust: failures, targets, intervals, options, output, figures ---

FAST = ["--grid", "8", "--budget-fraction", "0.3", "--charge-decisions", "none"]


@pytest.fixture
def small_twin(monkeypatch):
    """Twin samples with 16 read-outs: episodes take a fraction of a second."""
    monkeypatch.setattr(
        evaluate, "_twin_overrides", _short_twin_overrides
    )


def _failing_on_second_seed(monkeypatch):
    """Register ``fails-later``: a random policy that raises on the run's second seed."""
    from agents import catalog as registry
    from agents.baselines import RandomPolicy

    class FailsLater(RandomPolicy):
        name = "fails-later"

        def reset(self, env, seed=None):
            if seed == evaluate.HELD_OUT_SEED_START + 1:
                raise RuntimeError("broken on purpose")
            super().reset(env, seed)

    monkeypatch.setattr(registry, "_BASELINES", (*registry._BASELINES, FailsLater))


def test_a_failing_agent_is_reported_and_the_others_are_kept(
    tmp_path, capsys, monkeypatch, small_twin
):
    _failing_on_second_seed(monkeypatch)
    out = tmp_path / "eval"
    argv = ["--agents", "raster,fails-later,random", "--seeds", "2", *FAST, "--out", str(out)]
    assert evaluate.main(argv) == 1  # non-zero at the end, after every other agent ran
    captured = capsys.readouterr()
    assert "fails-later" in captured.err and "errors.log" in captured.err
    assert "RuntimeError: broken on purpose" in captured.out  # its row in the table
    assert "fails-later: no verdict, FAILED on seed 100001" in captured.out
    with open(out / "episodes.csv") as f:  # every finished episode, the failed agent's first
        episodes = [(e["agent"], int(e["seed"])) for e in csv.DictReader(f)]
    start = evaluate.HELD_OUT_SEED_START
    assert sorted(episodes) == sorted(
        [("raster", start), ("raster", start + 1), ("fails-later", start)]
        + [("random", start), ("random", start + 1)]
    )
    with open(out / "results.csv") as f:
        rows = {r["agent"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"raster", "random", "fails-later"}
    assert "RuntimeError: broken on purpose" in rows["fails-later"]["error"]
    failures = json.loads((out / "results.json").read_text())["failures"]
    assert [(f["agent"], f["seed"], f["episodes_done"]) for f in failures] == [
        ("fails-later", start + 1, 1)
    ]
    assert "Traceback" in (out / "errors.log").read_text()


def test_episodes_are_on_disk_as_each_one_ends(tmp_path, monkeypatch, small_twin):
    """A run killed during its second episode keeps the first one."""
    from agents import evaluation

    out = tmp_path / "eval"
    episodes_seen = []
    real_run_episode = evaluation.run_episode

    def run_episode(*args, **kwargs):
        with open(out / "episodes.csv") as f:
            episodes_seen.append(len(list(csv.DictReader(f))))
        return real_run_episode(*args, **kwargs)

    monkeypatch.setattr(evaluation, "run_episode", run_episode)
    assert evaluate.main(["--agents", "random", "--seeds", "3", *FAST, "--out", str(out)]) == 0
    assert episodes_seen == [0, 1, 2]


def test_targets_without_the_challenges_still_give_its_verdict(tmp_path, capsys, small_twin):
    out = tmp_path / "eval"
    argv = ["--agents", "raster", "--seeds", "1", "--targets", "0.8,0.85,0.875", *FAST]
    assert evaluate.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "challenge (>= 25 % time saved at R^2 >= 0.90, and with a time axis" in printed
    assert "twin (held-out), raster: " in printed
    with open(out / "episodes.csv") as f:  # 0.875 keeps its third decimal, 0.90 is added
        fields = csv.DictReader(f).fieldnames
    for key in ("0.80", "0.85", "0.875", "0.90"):
        assert f"seconds_to_{key}" in fields
    assert "gain@0.875" in (out / "table.txt").read_text()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--targets", "1.5", "--targets: each R^2 target must be in (0, 1], got 1.5"),
        ("--targets", "0", "--targets: each R^2 target must be in (0, 1]"),
        ("--targets", "0.9,high", "--targets: not a comma-separated list of numbers"),
        ("--targets", "0.8,0.8", "--targets: a target is given twice"),
        ("--budget-fraction", "5", "--budget-fraction must be in (0, 1]"),
        ("--budget-fraction", "0", "--budget-fraction must be in (0, 1]"),
        ("--seeds", "0", "--seeds must be at least 1, got 0"),
        ("--seed-start", "-1", "--seed-start must be at least 0"),
        ("--grid", "-3", "--grid must be at least 0"),
        ("--grid", "2", "--grid must be 0 (the twin's own size) or at least 4, got 2"),
        ("--blocks", "0", "--blocks must be at least 1"),
        ("--threads", "-1", "--threads must be at least 0"),
        ("--reconstructor", "magic", "--reconstructor: unknown 'magic'"),
        ("--stop-r2", "0.8", "--stop-r2 must be 0 (off) or in [0.95, 1]"),
        ("--stop-r2", "-1", "--stop-r2 must be 0 (off) or in (0, 1]"),
        ("--agents", ",", "--agents: no agent given"),
        ("--data", " ", "--data: no data source given"),
    ],
)
def test_a_bad_option_is_a_one_line_error_naming_it(tmp_path, capsys, option, value, message):
    assert evaluate.main([option, value, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "never").exists()  # refused before anything ran or was written


def test_a_data_problem_is_refused_before_any_episode(tmp_path, capsys):
    argv = ["--agents", "random", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path)]
    assert evaluate.main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: --data {tmp_path / 'missing.npy'}: ")
    assert not (tmp_path / "episodes.csv").exists()


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    defaults = evaluate.EvaluateArgs()
    for option, value in [
        ("--seeds", defaults.seeds),
        ("--grid", defaults.grid),
        ("--budget-fraction", defaults.budget_fraction),
        ("--targets", defaults.targets),
        ("--out", defaults.out),
    ]:
        assert f"(default: {value})" in text, option


def test_progress_is_one_bar_over_every_agent(tmp_path, capsys, small_twin):
    argv = ["--agents", "raster,random", "--seeds", "2", *FAST, "--out", str(tmp_path)]
    assert evaluate.main(argv) == 0
    err = capsys.readouterr().err
    assert "agent 1/2 raster" in err and "agent 2/2 random" in err
    assert "4/4" in err  # episodes done of all episodes


def _summary(agent, gain, n_seeds=2, reached=None, auc=(0.6, 0.55, 0.65)):
    from agents.evaluation import AgentSummary

    seconds = (3600.0, 3000.0, 4200.0)
    return AgentSummary(
        agent=agent,
        data="twin (held-out)",
        n_seeds=n_seeds,
        seconds_to={"0.90": seconds},
        gain_at={"0.90": gain},
        reached={"0.90": n_seeds if reached is None else reached},
        auc=auc,
        n_measurements=(100.0, 90.0, 110.0),
        decision_seconds_median=0.01,
        final_r2=(0.95, 0.94, 0.96),
        final_r2_truth=(0.9, 0.89, 0.91),
        raster_seconds=7200.0,
    )


def test_the_verdict_is_judged_on_the_intervals_lower_end():
    from agents.report import challenge_lines

    nan = float("nan")
    lines = challenge_lines(
        [
            _summary("sure", (0.56, 0.41, 0.70)),
            _summary("unsure", (0.563, -0.051, 0.9)),  # the MET on the mean
            _summary("once", (0.56, nan, nan), n_seeds=1),
            _summary("short", (nan, nan, nan), reached=1),
            _summary("raster", (0.124, 0.10, 0.15)),
        ]
    )
    assert "lower end of the 95 % interval" in lines[0]
    by_agent = {line.split(": ")[0].split(", ")[-1]: line for line in lines[1:]}
    assert "MET, saves 56.0% [41.0%, 70.0%]" in by_agent["sure"]
    unsure = "NOT MET, saves 56.3% [-5.1%, 90.0%] of the raster time: lower end below 25 %"
    assert unsure in by_agent["unsure"]
    assert "UNDECIDED" in by_agent["once"] and "no interval" in by_agent["once"]
    assert "NOT MET, R^2 >= 0.90 reached on 1/2 seeds" in by_agent["short"]
    why = lines[lines.index(by_agent["raster"]) + 1]
    assert "the raster order, stopped once its reconstruction reaches the target" in why


def test_intervals_in_the_results_stay_in_range(tmp_path, small_twin):
    argv = ["--agents", "random", "--seeds", "2", *FAST, "--out", str(tmp_path)]
    assert evaluate.main(argv) == 0
    with open(tmp_path / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    with open(tmp_path / "episodes.csv") as f:
        aucs = [float(e["auc"]) for e in csv.DictReader(f)]
    assert min(aucs) <= float(row["auc_lo"]) <= float(row["auc_hi"]) <= max(aucs) <= 1.0
    assert float(row["final_r2_hi"]) <= 1.0 and float(row["n_measurements_lo"]) >= 0.0


def test_the_printed_table_fits_100_columns():
    from agents.report import format_compact_table

    names = evaluate.DEFAULT_AGENTS.split(",") + ["greedy-oracle (privileged)"]
    summaries = [_summary(name, (0.563, 0.412, 0.702)) for name in names]
    summaries[0] = _summary(names[0], (0.5, 0.4, 0.6), reached=1)  # "reached 1/2"
    table = format_compact_table(summaries)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "56.3% [41.2%, 70.2%]" in table and "reached 1/2" in table


def test_figures_stay_readable_for_ten_agents(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    from agents.evaluation import MapSlice, Trace
    from agents.report import _line_styles, plot_curves, plot_reconstructions

    names = [f"agent-{i}" for i in range(10)] + ["greedy-oracle (privileged)"]
    styles = _line_styles(names)
    assert len({(s["color"], s["ls"]) for s in styles}) == len(names)
    assert len({s["color"] for s in styles[:10]}) == 10  # ten distinct colours first
    seconds = np.linspace(1.0, 100.0, 20)
    traces = {
        name: [
            Trace(name, seed, seconds, np.linspace(0, 0.95, 20), np.zeros(19), 20, 100.0, 100.0)
            for seed in (0, 1)
        ]
        for name in names
    }
    for first, *_ in traces.values():
        first.final_map, first.measured_map = np.zeros((8, 8)), np.ones((8, 8))
    view = MapSlice("voltage 8 of 16 (4.5 V), time 8 of 16 (0.018 s)", np.eye(8), "truth", "r", 4)
    plot_reconstructions(tmp_path / "maps.png", traces, view)
    height, width = imread(tmp_path / "maps.png").shape[:2]
    assert width < 1300 and height > width  # 12 panels wrapped into rows of 4, not 12 columns
    plot_curves(tmp_path / "curves.png", traces, "ten agents", [0.9, 0.95])
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_the_reconstruction_slice_is_named(small_twin):
    from agents.evaluation import map_slice
    from envs.acquisition.factory import make_env

    args = evaluate.EvaluateArgs(grid=8)
    env = make_env(**evaluate._env_kwargs(args, "twin", evaluate.HELD_OUT_SEED_START))
    view = map_slice(env.unwrapped)
    assert view.label.startswith("voltage ") and ", time 8 of 16 (" in view.label
    assert view.reference.shape == (8, 8) and view.n_blocks == args.blocks


def test_parallel_episodes_give_the_serial_numbers(tmp_path):
    """With decisions not charged, --workers 2 writes the same episodes, in the same order, as
    a serial run (the workers build each policy afresh from its spec)."""
    common = ["--agents", "raster,gp-uncertainty-per-second", "--seeds", "2", "--grid", "8",
              "--budget-fraction", "0.3", "--charge-decisions", "none", "--reconstructor", "idw"]
    assert evaluate.main([*common, "--out", str(tmp_path / "serial")]) == 0
    assert evaluate.main([*common, "--workers", "2", "--out", str(tmp_path / "parallel")]) == 0

    def episodes(run):  # every column but the measured (uncharged) decision time
        with open(tmp_path / run / "episodes.csv") as f:
            return [{k: v for k, v in row.items() if k != "decision_seconds"}
                    for row in csv.DictReader(f)]  # fmt: skip

    assert episodes("parallel") == episodes("serial") and len(episodes("serial")) == 4
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--workers", "x"])
    assert evaluate.main([*common, "--workers", "-1", "--out", str(tmp_path / "bad")]) == 2


@pytest.mark.slow  # starts a local Ray instance: about 20 s
def test_ray_tasks_give_the_serial_numbers(tmp_path):
    """--ray local runs the episodes as Ray tasks and writes what a serial run writes."""
    pytest.importorskip("ray")
    common = ["--agents", "raster,gp-uncertainty-per-second", "--seeds", "2", "--grid", "8",
              "--budget-fraction", "0.3", "--charge-decisions", "none", "--reconstructor", "idw"]
    assert evaluate.main([*common, "--out", str(tmp_path / "serial")]) == 0
    assert evaluate.main([*common, "--ray", "local", "--out", str(tmp_path / "ray")]) == 0

    def episodes(run):
        with open(tmp_path / run / "episodes.csv") as f:
            return [{k: v for k, v in row.items() if k != "decision_seconds"}
                    for row in csv.DictReader(f)]  # fmt: skip

    assert episodes("ray") == episodes("serial") and len(episodes("serial")) == 4


def test_ray_without_ray_is_a_one_line_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no module named ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    argv = ["--agents", "raster", "--seeds", "1", "--grid", "8", "--ray", "local",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert evaluate.main(argv) == 2


def test_the_shipped_model_runs_with_its_own_planes(tmp_path, small_twin):
    """ppo's env gets the planes its model reads (Policy.env_settings) on top of the run's
    settings, and its episodes finish."""
    from agents.ppo import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no shipped model")
    out = tmp_path / "eval"
    argv = ["--agents", "ppo,random", "--seeds", "1", *FAST, "--out", str(out)]
    assert evaluate.main(argv) == 0
    with open(out / "episodes.csv") as f:
        assert sorted(row["agent"] for row in csv.DictReader(f)) == ["ppo", "random"]


# --- one checked place for the options, failures of every agent, resume and overwrite ---


def test_help_names_every_setting_with_its_default(capsys):
    """Every field of EvaluateArgs is an option whose help gives its default."""
    import dataclasses

    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    text = capsys.readouterr().out
    blocks = {}
    for line in text.split("options:")[1].splitlines():
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            blocks[name] = line
        elif blocks:
            blocks[name] += " " + line.strip()
    for field in dataclasses.fields(evaluate.EvaluateArgs):
        flag = "--" + field.name.replace("_", "-")
        assert flag in blocks, flag
        assert "default" in blocks[flag], flag


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{"max_components": "x"}', "--reconstructor-options: max_components must be an integer"),
        ('{"max_components": 2.5}', "--reconstructor-options: max_components must be an integer"),
        ('{"refit_mode": 3}', "--reconstructor-options: refit_mode must be one of"),
        ('{"nosuch": 1}', "--reconstructor-options: reconstructor 'gp' has no option 'nosuch'"),
        ("{", "--reconstructor-options: not JSON"),
    ],
)
def test_a_bad_reconstructor_option_fails_before_any_episode(
    tmp_path, capsys, monkeypatch, options, message
):
    from agents import evaluation

    def never(*args, **kwargs):
        raise AssertionError("an episode ran")

    monkeypatch.setattr(evaluation, "run_episode", never)
    out = tmp_path / "never"
    argv = ["--agents", "random", "--seeds", "1", *FAST, "--reconstructor-options", options]
    assert evaluate.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_a_bad_agent_argument_fails_before_any_episode(tmp_path, capsys):
    argv = ["--agents", "random,gp-surprise-per-second:x", "--out", str(tmp_path / "never")]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --agents gp-surprise-per-second:x: ") and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


def test_when_every_agent_fails_the_files_say_which_and_why(tmp_path, capsys, small_twin):
    out = tmp_path / "eval"
    argv = ["--agents", "static-basis:0.1,5", "--seeds", "2", *FAST, "--out", str(out)]
    assert evaluate.main(argv) == 1
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "error: every agent failed" in line]
    assert len(said) == 1 and "static-basis:0.1,5 on twin (held-out)" in said[0]
    assert "static-basis:0.1,5: no verdict, FAILED on seed 100000" in captured.out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["data"], r["agent"]) for r in rows] == [("twin (held-out)", "static-basis:0.1,5")]
    assert "exceeds the env's 4 blocks" in rows[0]["error"]
    assert "FAILED on seed 100000" in (out / "table.txt").read_text()
    payload = json.loads((out / "results.json").read_text())
    assert payload["results"] == [] and payload["failures"][0]["agent"] == "static-basis:0.1,5"
    with open(out / "episodes.csv") as f:
        assert list(csv.DictReader(f)) == []


def _episodes(out):
    with open(out / "episodes.csv") as f:
        return [{k: v for k, v in row.items() if k != "decision_seconds"}
                for row in csv.DictReader(f)]  # fmt: skip


def _results(out):
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("decision_seconds_median")  # wall clock, never charged here
    return rows


RESUMABLE = ["--agents", "raster,random", "--seeds", "2", *FAST]


def test_resume_runs_only_the_missing_episodes_and_reports_them_all(
    tmp_path, capsys, monkeypatch, small_twin
):
    """A run killed in its last episode (one row missing, the next cut short) continues with
    --resume: the episode runs once, the tables equal an uninterrupted run's."""
    from agents import evaluation

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert evaluate.main([*RESUMABLE, "--out", str(whole)]) == 0
    assert evaluate.main([*RESUMABLE, "--out", str(cut)]) == 0
    lines = (cut / "episodes.csv").read_text().splitlines(keepends=True)
    assert len(lines) == 5
    (cut / "episodes.csv").write_text("".join(lines[:-2]) + lines[-2][:20])  # killed mid-row
    for name in ("results.csv", "results.json", "table.txt"):
        (cut / name).unlink()
    ran = []
    real_run_episode = evaluation.run_episode

    def run_episode(env, policy, seed, **kwargs):
        ran.append((policy.label, seed))
        return real_run_episode(env, policy, seed, **kwargs)

    monkeypatch.setattr(evaluation, "run_episode", run_episode)
    capsys.readouterr()
    assert evaluate.main(["--resume", "--out", str(cut)]) == 0  # the stored settings
    start = evaluate.HELD_OUT_SEED_START
    assert ran == [("random", start), ("random", start + 1)]
    assert "2 episodes done, 2 to run" in capsys.readouterr().out
    assert sorted(map(str, _episodes(cut))) == sorted(map(str, _episodes(whole)))
    assert _results(cut) == _results(whole)
    ran.clear()
    assert evaluate.main([*RESUMABLE, "--resume", "--out", str(cut)]) == 0
    assert ran == [] and len(_episodes(cut)) == 4  # nothing left to run


def test_resume_with_other_settings_names_the_difference(tmp_path, capsys, small_twin):
    out = tmp_path / "eval"
    assert evaluate.main([*RESUMABLE, "--out", str(out)]) == 0
    before = (out / "episodes.csv").read_text()
    capsys.readouterr()
    argv = [*RESUMABLE, "--grid", "10", "--targets", "0.9", "--resume", "--out", str(out)]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --resume: ")
    assert "--grid 8 there, 10 here" in err and "--targets '0.90,0.95' there, '0.9' here" in err
    assert (out / "episodes.csv").read_text() == before


def test_a_rerun_never_destroys_a_run(tmp_path, capsys, small_twin):
    out = tmp_path / "eval"
    argv = ["--agents", "random", "--seeds", "1", *FAST, "--out", str(out)]
    assert evaluate.main(argv) == 0
    before = (out / "episodes.csv").read_text()
    capsys.readouterr()
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--out {out} already holds a run (" in err
    assert "add --resume to continue it or --overwrite to replace it" in err
    assert (out / "episodes.csv").read_text() == before
    (out / "notes.txt").write_text("mine")
    assert evaluate.main([*argv, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert len(_episodes(out)) == 1
    assert evaluate.main([*argv, "--overwrite", "--resume"]) == 2
    assert "--resume and --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("file", [], "is a file, not a folder"),
        ("none", ["--resume"], "holds no run to continue (no episodes.csv)"),
        ("old", ["--resume"], "stores no settings (no run.json"),
    ],
)
def test_out_problems_are_one_line(tmp_path, capsys, setup, extra, message):
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("a file")
    elif setup == "old":  # a run made before --resume
        out.mkdir()
        (out / "episodes.csv").write_text("data,agent,seed\n")
    assert evaluate.main(["--agents", "random", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_a_trace_file_gives_back_the_trace(tmp_path, small_twin):
    from agents.baselines import RandomPolicy
    from agents.evaluation import Trace, run_episode
    from envs.acquisition.factory import make_env

    args = evaluate.EvaluateArgs(agents="random", grid=8, budget_fraction=0.3)
    env = make_env(**evaluate._env_kwargs(args, "twin", evaluate.HELD_OUT_SEED_START))
    trace = run_episode(env, RandomPolicy(), 3, charge_decisions="none", dynamics_target=0.9)
    trace.save(tmp_path / "t.npz")
    loaded = Trace.load(tmp_path / "t.npz")
    for name, value in vars(trace).items():
        again = getattr(loaded, name)
        assert type(again) is type(value), name
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(again, value)
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(again), name
        else:
            assert again == value, name


def test_the_twin_says_whether_its_seeds_are_held_out():
    from envs.data.sources import HELD_OUT_SEED_START

    assert evaluate._data_name("twin", HELD_OUT_SEED_START) == "twin (held-out)"
    assert evaluate._data_name("twin", 2001) == "twin (training seeds)"
    assert evaluate._data_name("data/cube.npy", 0) == "cube.npy"
