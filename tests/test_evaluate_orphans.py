"""evaluate.py --workers N: no worker outlives its parent, whether it is killed or stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process tree from /proc"
)


def _children(pid: int) -> dict[int, str]:
    """Live (not zombie) processes whose parent is ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _start(tmp_path: Path) -> tuple[subprocess.Popen, dict[int, str]]:
    """evaluate.py with 2 workers on a small setting, once both workers run episodes."""
    argv = [sys.executable, "evaluate.py", "--agents", "raster,random,gp-uncertainty",
            "--seeds", "8", "--grid", "16", "--workers", "2", "--charge-decisions", "none",
            "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        children = _children(process.pid)
        workers = [pid for pid, cmd in children.items() if "spawn_main" in cmd]
        if len(workers) == 2:
            time.sleep(3.0)  # into their first episodes
            return process, _children(process.pid)
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    process.kill()
    pytest.fail("the workers did not start within 120 s")


def _assert_gone(pids, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    left = [pid for pid in pids if _alive(pid)]
    assert not left, f"processes left behind: {left}"


@pytest.mark.slow  # starts two worker processes that import torch: about 15 s
def test_workers_die_when_the_parent_is_killed(tmp_path):
    process, children = _start(tmp_path)
    assert len(children) >= 2
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    _assert_gone(children)


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_says_how_to_resume(tmp_path):
    process, children = _start(tmp_path)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert "--resume" in err.strip().splitlines()[-1]
    _assert_gone(children)
