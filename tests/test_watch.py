"""The health watch over a change on trial, and `snapshot health` and `status`: the checks here
are real executables in health_dir, run by real `snapshot` commands (the network checks run
against real daemons in tests/test_health_net.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot.health import checks as health, watch as watching
from snapshot.store.chain import Chain
from clirun import ok
from sweep import make_tree

KIB = 1024
NAND = Geometry(FlashType.NAND, 8192 * KIB, 128 * KIB, 2048, 64)


@pytest.fixture
def router(tmp_path):
    """A chain with a snapshot on trial, a health_dir, a rollback_dir, and a configuration
    that decides at once (interval 0, grace 0)."""
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "s1", 1, 4)), "-m", "first")
    ok(image, "save", "--from", str(make_tree(tmp_path / "v1", 2, 1)))
    ok(image, "push", "--trial", "--from", str(make_tree(tmp_path / "t", 3, 4)), "-m", "change")
    for name in ("health.d", "health.d/wanted.d", "rollback.d"):
        (tmp_path / name).mkdir(parents=True)
    return image, tmp_path


def configure(tmp_path, **options) -> dict:
    settings = {"health_dir": tmp_path / "health.d", "rollback_dir": tmp_path / "rollback.d",
                "interval": 0, "grace": 0, "pass_rounds": 2, "fail_rounds": 2, "window": 3600,
                **options}
    conf = tmp_path / "snapshot.conf"
    conf.write_text("config snapshot 'main'\n" + "".join(
        f"\toption {k} '{v}'\n" for k, v in settings.items()))
    return dict(os.environ, SNAPSHOT_CONFIG=str(conf))


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def snapshot(image, env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def states(image) -> list[str]:
    return [s["state"] for s in json.loads(ok(image, "list", "--json"))["snapshots"]]


# -- snapshot health ---------------------------------------------------------------------------

def test_health_exits_0_when_every_required_check_passes(router):
    image, tmp_path = router
    script(tmp_path / "health.d/mesh", "echo 3 neighbours\n")
    script(tmp_path / "health.d/wanted.d/extra", "echo not there; exit 1\n")
    done = snapshot(image, configure(tmp_path), "health")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pass  mesh: 3 neighbours\nFAIL  extra (wanted): exit 1: not there\n"


def test_health_exits_5_when_a_required_check_fails_and_json_says_which(router):
    image, tmp_path = router
    script(tmp_path / "health.d/mesh", "echo lost the mesh >&2; exit 3\n")
    done = snapshot(image, configure(tmp_path), "health", "--json")
    assert done.returncode == 5
    report = json.loads(done.stdout)
    assert report == {"healthy": False, "results": [
        {"name": "mesh", "required": True, "ok": False, "detail": "exit 3: lost the mesh"}]}


def test_health_with_no_checks_says_so(router):
    image, tmp_path = router
    done = snapshot(image, configure(tmp_path), "health")
    assert (done.returncode, done.stdout) == (0, "no health checks are configured\n")


def test_a_check_of_an_unknown_type_fails_with_the_reason(router):
    image, tmp_path = router
    env = configure(tmp_path)
    with open(env["SNAPSHOT_CONFIG"], "a") as f:
        f.write("config check 'odd'\n\toption type 'telepathy'\n")
    done = snapshot(image, env, "health")
    assert done.returncode == 5 and "unknown check type 'telepathy'" in done.stdout


# -- snapshot watch ----------------------------------------------------------------------------

def test_watch_confirms_a_trial_whose_checks_pass(router):
    image, tmp_path = router
    script(tmp_path / "health.d/mesh", "echo fine\n")
    done = snapshot(image, configure(tmp_path), "watch", "--no-reboot")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "confirmed snapshot 2: every required check passed in 2 rounds\n"
    assert states(image) == ["confirmed", "confirmed"]


def test_watch_rolls_back_a_trial_whose_required_check_keeps_failing(router):
    image, tmp_path = router
    script(tmp_path / "health.d/mesh", "echo no batman-adv neighbours; exit 1\n")
    script(tmp_path / "rollback.d/10-note", f'echo "$SNAPSHOT_REASON" > {tmp_path}/hook-ran\n')
    done = snapshot(image, configure(tmp_path), "watch", "--no-reboot")
    assert done.returncode == 5, done.stderr
    reason = "snapshot 2: mesh: exit 1: no batman-adv neighbours"
    assert done.stdout == "rolled back snapshot 2: mesh: exit 1: no batman-adv neighbours\n"
    assert states(image) == ["confirmed", "failed"]
    assert (tmp_path / "hook-ran").read_text() == "mesh: exit 1: no batman-adv neighbours\n"
    status = json.loads(snapshot(image, configure(tmp_path), "status", "--json").stdout)
    assert status["trial"] is None and status["last_rollback"]["reason"] == reason
    assert "snapshot: rolled back snapshot 2" in done.stderr


def test_one_failed_round_never_rolls_back(router):
    image, tmp_path = router
    counter = tmp_path / "rounds"
    script(tmp_path / "health.d/mesh",
           f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}\n"
           f"[ $n -ne 0 ] || {{ echo first round fails; exit 1; }}\necho fine\n")
    done = snapshot(image, configure(tmp_path), "watch", "--no-reboot")
    assert done.returncode == 0 and states(image) == ["confirmed", "confirmed"]


def test_a_check_that_flaps_never_confirms_a_trial_it_runs_out_the_window(router):
    image, tmp_path = router
    counter = tmp_path / "rounds"
    script(tmp_path / "health.d/mesh",
           f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}\n"
           f"[ $((n % 2)) -eq 0 ] || {{ echo link down; exit 1; }}\necho link up\n")
    done = snapshot(image, configure(tmp_path, window=0, pass_rounds=3, fail_rounds=3),
                    "watch", "--no-reboot")
    assert done.returncode == 5
    assert "not confirmed within 0 s (last failure: mesh: exit 1: link down)" in done.stdout
    assert states(image) == ["confirmed", "failed"]


def test_a_failing_wanted_check_does_not_hold_a_trial_back(router):
    image, tmp_path = router
    script(tmp_path / "health.d/wanted.d/nice-to-have", "exit 1\n")
    done = snapshot(image, configure(tmp_path), "watch", "--no-reboot")
    assert done.returncode == 0 and states(image) == ["confirmed", "confirmed"]


def test_a_confirmed_state_is_never_rolled_back_and_watch_writes_nothing(router):
    image, tmp_path = router
    ok(image, "confirm")
    script(tmp_path / "health.d/mesh", "echo down; exit 1\n")
    before = image.read_bytes()
    done = snapshot(image, configure(tmp_path), "watch", "--no-reboot")
    assert (done.returncode, done.stdout) == (0, "nothing is on trial\n")
    assert image.read_bytes() == before


def watch_in_process(image, tmp_path, check: Path, **options) -> watching.Decision:
    """`snapshot watch` in this process, the configuration's settings and one required script
    check, with a clock that moves 10 s a round (each sleep)."""
    env = configure(tmp_path, **options)
    os.environ["SNAPSHOT_CONFIG"] = env["SNAPSHOT_CONFIG"]
    try:
        settings = watching.Settings.load()
    finally:
        del os.environ["SNAPSHOT_CONFIG"]
    checks = [health.Check("mesh", "script", True, 10, {"path": str(check)})]
    now = [0.0]

    class Opened:
        def __enter__(self):
            self.flash = SimFlash(image, writable=True)
            return Chain(self.flash)

        def __exit__(self, *exc):
            self.flash.close()
    return watching.watch(Opened, checks, settings, lambda line, loud=False: None,
                          clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + 10))


def test_no_rollback_before_the_grace_period_is_over(router):
    """With a clock that moves 10 s a round: failures in rounds 1-5 (0..40 s) do not roll
    back with a grace of 45 s; the round at 50 s does."""
    image, tmp_path = router
    decision = watch_in_process(image, tmp_path, script(tmp_path / "down", "exit 1\n"),
                                grace=45)
    assert decision.verdict == "rolled back" and decision.rounds == 6


def test_a_failed_round_starts_the_count_of_passing_rounds_over(router):
    """pass_rounds 3, rounds that pass and fail by turns (pass, fail, pass, ...), 10 s a
    round, a window of 200 s: three passing rounds come by round 5, never three in a row, and
    no two failures in a row either, so only the window decides: rolled back at 200 s."""
    image, tmp_path = router
    counter = tmp_path / "rounds"
    flapping = script(tmp_path / "flapping",
                      f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}\n"
                      f"[ $((n % 2)) -eq 0 ] || {{ echo link down; exit 1; }}\necho link up\n")
    decision = watch_in_process(image, tmp_path, flapping, pass_rounds=3, fail_rounds=2,
                                window=200)
    assert decision.verdict == "rolled back", decision
    assert decision.reason == "not confirmed within 200 s (last failure: mesh: exit 1: link down)"
    assert decision.rounds == 21 and counter.read_text() == "21\n"
    assert states(image) == ["confirmed", "failed"]


def test_status_shows_the_trial_and_its_boots(router):
    image, tmp_path = router
    status = json.loads(snapshot(image, configure(tmp_path), "status", "--json").stdout)
    assert status["trial"] == {"what": "snapshot 2", "kind": "snapshot", "seq": 2,
                               "attempts": 0, "max_attempts": 3}
    assert status["last_rollback"] is None and status["snapshots"] == 2
    assert set(status) >= {"free_bytes", "ram", "health"}


def test_watch_on_a_device_without_a_chain_ends_quietly_writing_nothing(tmp_path):
    """A router with the package installed and not yet converted: its jffs2 overlay is no
    chain, and the procd service's watch ends at once at every boot, without an error."""
    image = tmp_path / "jffs2.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1024 * 1024, 64 * 1024, 1, 0))
    with SimFlash(image, writable=True) as flash:
        flash.write(0, b"\x85\x19\x01\xe0")     # a jffs2 node's magic
    before = image.read_bytes()
    assert ok(image, "watch", "--no-reboot").startswith("nothing to watch: ")
    assert image.read_bytes() == before
