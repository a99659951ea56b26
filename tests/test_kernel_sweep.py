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


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["push", "save"])
def test_every_cut_on_nandsim_leaves_old_or_new_state(name, tmp_path):
    device = os.environ["MTD_NANDSIM"]
    scenario = SCENARIOS[name]
    scenario.build(device, tmp_path)
    args = scenario.command(tmp_path)
    old = visible(device)
    count = tmp_path / "count"
    result = run_cut(device, args, count_to=count)
    assert result.returncode == 0, result.stderr
    new = visible(device)
    assert new != old
    total = int(count.read_text())
    for cut in range(1, total + 1):
        scenario.build(device, tmp_path)
        result = run_cut(device, args, cut=cut)
        assert result.returncode == 99, f"cut {cut}: {result.stderr}"
        assert visible(device) in (old, new), f"{name} on nandsim, cut {cut} of {total}"
        CHECKED[f"{name}-nandsim"] = CHECKED.get(f"{name}-nandsim", 0) + 1
    print(f"{name} on nandsim: checked {total} cut points")
