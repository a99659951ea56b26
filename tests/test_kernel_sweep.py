"""The power-cut sweep of push and save on a real kernel NAND device (nandsim, with its
factory bad block 5 inside the written area), in the kernel tier. The cut is injected by
tests/cut_runner.py; after every cut the state is exactly the old or the new one."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweep import CHECKED, SCENARIOS, visible

RUNNER = [sys.executable, str(Path(__file__).with_name("cut_runner.py"))]


def run_cut(device, args, cut=0, count_to=None):
    env = dict(os.environ, SNAPSHOT_TEST_CUT_AFTER=str(cut), SNAPSHOT_TEST_CUT_SEED=str(cut))
    if count_to:
        env["SNAPSHOT_TEST_COUNT_TO"] = str(count_to)
    return subprocess.run([*RUNNER, "--device", device, *args], env=env, capture_output=True,
                          text=True, timeout=600)


def sweep_on(device: str, name: str, tmp_path, label: str) -> int:
    """Cut scenario `name` on a real device after each of its flash operations; after each
    cut the visible state is exactly the old or the new one. Each run builds the base state
    from a fresh work dir (the trees are seeded, so every run's are the same). Returns how
    many cut points it checked."""
    scenario = SCENARIOS[name]

    def build(run: str) -> list[str]:
        work = tmp_path / run
        work.mkdir()
        scenario.build(device, work)
        return scenario.command(work)

    args = build("counted")
    old = visible(device)
    count = tmp_path / "count"
    result = run_cut(device, args, count_to=count)
    assert result.returncode == 0, result.stderr
    new = visible(device)
    assert new != old
    total = int(count.read_text())
    for cut in range(1, total + 1):
        args = build(f"cut{cut}")
        result = run_cut(device, args, cut=cut)
        assert result.returncode == 99, f"cut {cut}: {result.stderr}"
        assert visible(device) in (old, new), f"{name} on {label}, cut {cut} of {total}"
        CHECKED[f"{name}-{label}"] = CHECKED.get(f"{name}-{label}", 0) + 1
    print(f"{name} on {label}: checked {total} cut points")
    return total


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["push", "save"])
def test_every_cut_on_nandsim_leaves_old_or_new_state(name, tmp_path):
    sweep_on(os.environ["MTD_NANDSIM"], name, tmp_path, "nandsim")
