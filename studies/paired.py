"""Paired comparisons from ``evaluate.py`` runs: each agent against a reference, seed by seed.

``evaluate.py`` reports every agent's mean and 95 % interval over the seeds; the samples differ
far more from each other than the policies do, so two policies can be clearly ordered on every
seed while their intervals overlap. This reads the ``episodes.csv`` that ``evaluate.py`` writes
(several files are joined, e.g. two runs that split the agents between them) and prints, for
each dataset and agent, the mean paired AUC difference to the reference with its 95 %
t-interval (:func:`agents.statistics.paired_differences`) and the seeds on which the agent is
better, and the same for the charged seconds to the target R^2 (decision time included, as
evaluated).

Example
-------
    python -m studies.paired runs/evaluate/episodes.csv --reference gp-uncertainty-per-second
    python -m studies.paired a/episodes.csv b/episodes.csv --tags ,b --reference random
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

from agents.evaluation import target_key
from studies.ppo_compare import print_table


def read_episodes(
    paths: list[Path], tags: list[str] | None = None
) -> dict[str, dict[str, dict[int, dict[str, str]]]]:
    """``{data: {agent: {seed: row}}}`` from ``episodes.csv`` files; a (data, agent, seed) given
    twice is an error (two runs would be silently mixed). ``tags``, one per file, are appended
    to that file's agent names (``agent@tag``), so two runs of the same agents under different
    settings can be paired."""
    table: dict[str, dict[str, dict[int, dict[str, str]]]] = defaultdict(dict)
    if tags is not None and len(tags) != len(paths):
        raise ValueError(f"give one tag per file: {len(tags)} tags for {len(paths)} files")
    for i, path in enumerate(paths):
        suffix = f"@{tags[i]}" if tags is not None and tags[i] else ""
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"data", "agent", "seed", "auc", "final_r2"} - set(reader.fieldnames or [])
            if missing:
                names = ", ".join(sorted(missing))
                raise ValueError(f"{path} is not an episodes.csv of evaluate.py (no {names})")
            for row in reader:
                row = {**row, "agent": row["agent"] + suffix}
                agents = table[row["data"]].setdefault(row["agent"], {})
                seed = int(row["seed"])
                if seed in agents:
                    raise ValueError(
                        f"{row['data']}, {row['agent']}, seed {seed} appears twice ({path})"
                    )
                agents[seed] = row
    return dict(table)


def _number(text: str) -> float:
    return float(text) if text != "" else math.nan  # empty: the target was not reached


def paired_tables(
    episodes: dict[str, dict[str, dict[int, dict[str, str]]]], reference: str, target: float
) -> dict[str, dict]:
    """Print one paired table per dataset; return its paired differences per dataset."""
    column = f"seconds_to_{target_key(target)}"
    report = {}
    for data, agents in episodes.items():
        if reference not in agents:
            raise ValueError(f"reference {reference!r} not in {data} (agents: {', '.join(agents)})")
        seeds = sorted(agents[reference])
        results = {}
        for agent, rows in agents.items():
            if sorted(rows) != seeds:
                raise ValueError(f"{agent} and {reference} ran on different seeds in {data}")
            if column not in rows[seeds[0]]:
                raise ValueError(f"no column {column} in the episodes (evaluate.py --targets)")
            results[agent] = {
                "auc": [float(rows[s]["auc"]) for s in seeds],
                "r2": [float(rows[s]["final_r2"]) for s in seeds],
                "seconds": [_number(rows[s][column]) for s in seeds],
            }
        print(f"\n{data}, seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}), reference: {reference}")
        report[data] = print_table(results, reference, seeds, target)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("episodes", nargs="+", help="episodes.csv files written by evaluate.py")
    parser.add_argument(
        "--reference", default="gp-uncertainty-per-second", help="agent to pair against"
    )
    parser.add_argument("--target", type=float, default=0.90, help="R^2 whose seconds to pair")
    parser.add_argument(
        "--tags",
        default=None,
        help="comma-separated tags, one per file, appended to its agents' names as AGENT@TAG "
        "(an empty tag leaves them as they are), e.g. ',capped' to pair two runs",
    )
    args = parser.parse_args(argv)
    tags = None if args.tags is None else args.tags.split(",")
    try:
        episodes = read_episodes([Path(p) for p in args.episodes], tags)
        paired_tables(episodes, args.reference, args.target)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
