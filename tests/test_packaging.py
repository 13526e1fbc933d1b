"""The package installs: a wheel built from the checkout holds every library module and the
programs, and its console commands run from outside the checkout.

The default run installs the wheel without its dependencies into a folder of its own and runs
the commands with this interpreter's packages beside it (about 15 s); the slow test installs it
with its dependencies into a fresh virtual environment, as a new user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("envs", "agents", "reconstruct")
PROGRAMS = ("train", "evaluate", "experiment", "serve")
COMMANDS = ("pfm-evaluate", "pfm-train", "pfm-experiment", "pfm-serve")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (path,) = out.glob("*.whl")
    return path


def test_the_wheel_holds_every_library_module_the_programs_and_the_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for package in LIBRARY
        for path in (ROOT / package).rglob("*.py")
    }
    expected |= {f"{program}.py" for program in PROGRAMS}
    assert expected <= names, sorted(expected - names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in COMMANDS:
        assert command in text


def _outside_checkout_env(target: Path) -> dict[str, str]:
    """The wheel's folder first on the path, then this interpreter's packages (the
    dependencies); the checkout is nowhere on it."""
    paths = [str(target), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def test_console_commands_run_from_the_installed_wheel_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    env = _outside_checkout_env(target)
    modules = ", ".join((*LIBRARY, *PROGRAMS))
    script = f"import {modules}; print('\\n'.join(m.__file__ for m in ({modules})))"
    where = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(target.resolve()), line
    for command in COMMANDS:
        run = subprocess.run(
            [sys.executable, str(target / "bin" / command), "--help"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        assert run.returncode == 0, f"{command}: {run.stderr}"
        assert "usage:" in run.stdout


@pytest.mark.slow
def test_a_fresh_virtual_environment_installs_the_wheel_and_runs_its_commands(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # The CPU build of torch first, as the README says, so no CUDA build is pulled.
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1200)
    subprocess.run([*pip, str(wheel), "torch==2.13.0"], check=True, timeout=1200)
    for command in COMMANDS:
        run = subprocess.run(
            [str(venv / "bin" / command), "--help"], cwd=tmp_path, capture_output=True,
            text=True, timeout=120,
        )
        assert run.returncode == 0, f"{command}: {run.stderr}"
