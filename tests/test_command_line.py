"""The programs' shared command-line style: options generated from a settings dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from envs.command_line import add_options, option, program_parser, settings_from


@dataclass
class Settings:
    """A program's settings, as every program declares them."""

    data: str = option("twin", "data spec")
    seeds: int = option(3, "how many seeds")
    budget: float | None = option(None, "budget in hours (default: none)")
    agents: list[str] = option(["random", "raster"], "comma-separated policies")
    options: dict = option({}, "JSON object of options", metavar="JSON")
    mode: str = option("fast", "how to run", choices=("fast", "slow"))
    progress: bool = option(True, "show a progress bar")
    internal: int = option(7, "set only by code", flag=False)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")


def parse(argv: list[str]) -> Settings:
    parser = program_parser("prog", "A program.")
    add_options(parser, Settings)
    return settings_from(Settings, parser.parse_args(argv))


def test_defaults_are_the_dataclass_defaults():
    assert parse([]) == Settings()


def test_every_kind_of_field_parses():
    settings = parse(
        ["--data", "x.h5", "--seeds", "5", "--budget", "1.5", "--agents", "a,b,c",
         "--options", '{"k": 1}', "--mode", "slow", "--no-progress"]
    )
    assert settings == Settings(
        data="x.h5", seeds=5, budget=1.5, agents=["a", "b", "c"], options={"k": 1},
        mode="slow", progress=False,
    )


def test_help_shows_each_option_with_its_default_and_hides_code_only_fields(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    assert "how many seeds (default: 3)" in " ".join(text.split())
    assert "--agents" in text and "(default: random,raster)" in " ".join(text.split())
    assert "--internal" not in text


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--seeds", "x"], "invalid integer value"),
        (["--mode", "medium"], "invalid choice"),
        (["--options", "[1]"], "JSON object"),
        (["--options", "{"], "not JSON"),
        (["--nosuch", "1"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, argv, says):
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_the_dataclass_checks_the_values():
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        parse(["--seeds", "0"])
