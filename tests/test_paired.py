"""studies.paired: paired differences from evaluate.py's episodes.csv files."""

import csv

import pytest

from studies import paired

FIELDS = ["data", "agent", "seed", "auc", "seconds_to_0.90", "gain_at_0.90", "final_r2"]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for data, agent, seed, auc, seconds in rows:
            writer.writerow(
                {
                    "data": data,
                    "agent": agent,
                    "seed": seed,
                    "auc": auc,
                    "seconds_to_0.90": seconds,
                    "gain_at_0.90": "",
                    "final_r2": 0.95,
                }
            )
    return path


def test_paired_differences_join_files_and_order_by_seed(tmp_path, capsys):
    # two runs that split the agents; seeds written in different orders
    a = _write(tmp_path / "a.csv", [("twin", "ref", s, 0.70 + 0.01 * s, 100.0) for s in (2, 0, 1)])
    b = _write(
        tmp_path / "b.csv", [("twin", "new", s, 0.72 + 0.01 * s, 90.0 - s) for s in (0, 1, 2)]
    )
    report = paired.paired_tables(paired.read_episodes([a, b]), "ref", 0.90)
    auc = report["twin"]["new"]["paired_auc"]
    assert auc["mean"] == pytest.approx(0.02) and auc["better"] == 3
    assert auc["low"] == pytest.approx(0.02) and auc["high"] == pytest.approx(0.02)
    saved = report["twin"]["new"]["paired_seconds_saved"]
    assert saved["mean"] == pytest.approx(11.0) and saved["better"] == 3
    assert "reference: ref" in capsys.readouterr().out


def test_unreached_target_leaves_out_seconds_but_not_auc(tmp_path):
    rows = [("twin", "ref", s, 0.7, 100.0) for s in range(3)]
    rows += [("twin", "slow", s, 0.6, "" if s == 1 else 120.0) for s in range(3)]
    episodes = paired.read_episodes([_write(tmp_path / "e.csv", rows)])
    report = paired.paired_tables(episodes, "ref", 0.9)
    assert report["twin"]["slow"]["paired_auc"]["mean"] == pytest.approx(-0.1)
    assert "paired_seconds_saved" not in report["twin"]["slow"]


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    twice = _write(tmp_path / "t.csv", [("twin", "ref", 0, 0.7, 1.0)] * 2)
    with pytest.raises(ValueError, match="appears twice"):
        paired.read_episodes([twice])
    uneven = _write(
        tmp_path / "u.csv", [("twin", "ref", 0, 0.7, 1.0), ("twin", "new", 1, 0.7, 1.0)]
    )
    with pytest.raises(ValueError, match="different seeds"):
        paired.paired_tables(paired.read_episodes([uneven]), "ref", 0.9)
    assert paired.main([str(uneven), "--reference", "nobody"]) == 2
    assert "reference 'nobody' not in twin" in capsys.readouterr().err
    assert paired.main([str(tmp_path / "missing.csv")]) == 2
    (tmp_path / "results.csv").write_text("data,agent,n_seeds,auc\ntwin,ref,2,0.7\n")
    assert paired.main([str(tmp_path / "results.csv")]) == 2
    assert "not an episodes.csv of evaluate.py (no final_r2, seed)" in capsys.readouterr().err


def test_a_target_with_three_decimals_finds_its_column(tmp_path):
    """evaluate.py names a 0.875 target ``seconds_to_0.875`` (two decimals would merge it with
    0.88); the paired table reads that column."""
    path = tmp_path / "e.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["data", "agent", "seed", "auc", "final_r2",
                                               "seconds_to_0.875"])  # fmt: skip
        writer.writeheader()
        for agent, seconds in (("ref", 100.0), ("new", 80.0)):
            for seed in (0, 1):
                writer.writerow({"data": "twin", "agent": agent, "seed": seed, "auc": 0.7,
                                 "final_r2": 0.9, "seconds_to_0.875": seconds})  # fmt: skip
    report = paired.paired_tables(paired.read_episodes([path]), "ref", 0.875)
    assert report["twin"]["new"]["paired_seconds_saved"]["mean"] == pytest.approx(20.0)


def test_tags_pair_two_runs_of_the_same_agent(tmp_path):
    a = _write(tmp_path / "a.csv", [("twin", "gp", s, 0.70, 100.0) for s in (0, 1)])
    b = _write(tmp_path / "b.csv", [("twin", "gp", s, 0.73, 95.0) for s in (0, 1)])
    with pytest.raises(ValueError, match="appears twice"):
        paired.read_episodes([a, b])
    report = paired.paired_tables(paired.read_episodes([a, b], ["", "new"]), "gp", 0.90)
    assert report["twin"]["gp@new"]["paired_auc"]["mean"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="one tag per file"):
        paired.read_episodes([a, b], ["x"])
    assert paired.main([str(a), str(b), "--tags", ",new", "--reference", "gp"]) == 0
