"""Power-cut sweep on the simulator: every write command, on NOR and on NAND (with a factory
bad block inside the written area), cut after each of its program/erase operations. After
every cut the visible state is exactly the old or exactly the new one. For push and save a
second cut also hits the `check --repair` that follows.

One case per cut point; rerun one with e.g. `pytest -k push-nand-cut3`.
"""
import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from sweep import SCENARIOS, SWEPT, SimCase, assert_old_or_new, run_cli

_ROOT = Path(tempfile.mkdtemp(prefix="snapshot-sweep-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
_CASES: dict[str, SimCase] = {}


def case_for(key: str) -> SimCase:
    if key not in _CASES:
        scenario, geometry = key.split("-")
        _CASES[key] = SimCase(SCENARIOS[scenario], geometry, _ROOT)
    return _CASES[key]


def pytest_generate_tests(metafunc):
    if "cut" not in metafunc.fixturenames:
        return
    scenarios = ["push", "save", "pushscrub", "savescrub", "pushtrial", "savetrial",
                 "bootcount", "bootfail", "confirm", "watchrollback", "pkgstore"] \
        if "then_repair" in metafunc.function.__name__ else SCENARIOS
    params = []
    for name in scenarios:
        for geometry in SWEPT:
            # UBI scrubs blocks that show bit flips itself: a volume never reports one.
            if geometry == "ubi" and "scrub" in name:
                continue
            key = f"{name}-{geometry}"
            for cut in range(1, case_for(key).operations + 1):
                params.append(pytest.param(key, cut, id=f"{key}-cut{cut}"))
    metafunc.parametrize("key,cut", params)


def test_cut_leaves_old_or_new_state(key, cut):
    case = case_for(key)
    image = case.copy(f"cut{cut}.img")
    result = run_cli(str(image), case.args, cut=cut, seed=cut, runner=case.scenario.runner,
                     env=case.env)
    assert result.returncode == 99, result.stderr
    assert_old_or_new(case, image, f"{key} cut {cut}")


def test_cut_then_repair_cuts_leave_old_or_new_state(key, cut):
    case = case_for(key)
    first = case.copy(f"first{cut}.img")
    assert run_cli(str(first), case.args, cut=cut, seed=cut, runner=case.scenario.runner,
                   env=case.env).returncode == 99
    second_cut = 1
    while True:
        image = case.work / f"first{cut}-repair{second_cut}.img"
        shutil.copyfile(first, image)
        shutil.copyfile(f"{first}.sim.json", f"{image}.sim.json")
        result = run_cli(str(image), ["check", "--repair"], cut=second_cut, seed=second_cut)
        assert result.returncode in (0, 99), result.stderr
        assert_old_or_new(case, image, f"{key} cut {cut}, repair cut {second_cut}")
        if result.returncode == 0:
            break
        second_cut += 1
    # After the repair finished, the state is settled and clean.
    assert run_cli(str(image), ["check"]).returncode == 0
