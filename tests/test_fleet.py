"""The fleet rollout on simulated units: a channel signed with the real usign, served over
HTTP; units that poll it; a canary wave with one failing health check, whose rollback stops
the next wave; the report; a tampered channel refused."""
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bundle_lab import Lab, cut_off
from mtd import FlashType, Geometry
from snapshot.fleet import channel as fleet
from snapshot.fleet import memory
from snapshot.health import results as kept
from snapshot.store.format import SNAPSHOT
from sweep import health_config, image_digest
from web import Quiet, files, served

KIB = 1024
NOR = Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0)
GROUPS = {"u1": "canary", "u2": "canary", "u3": "rest", "u4": "rest"}


@pytest.fixture
def world(tmp_path):
    # The watch's last results live in /tmp, as on a router, where /tmp starts empty at boot;
    # here another test's would still be there.
    Path(kept.RESULTS).unlink(missing_ok=True)
    lab = Lab.make(tmp_path / "lab")
    lab.reference(tmp_path / "ref.img", NOR)
    channel = tmp_path / "www/fleet"
    channel.mkdir(parents=True)
    with served(files(tmp_path / "www")) as base:
        units = {name: enrolled(lab, tmp_path / name, f"{base}/fleet/channel.json", group)
                 for name, group in GROUPS.items()}
        yield lab, channel, units, tmp_path


def enrolled(lab, where: Path, url: str, group: str) -> tuple[Path, Path]:
    """A unit (its image and configuration) in `group`, polling the channel at `url`."""
    image, conf = where.with_suffix(".img"), where.with_suffix(".conf")
    lab.unit_from(image)
    conf.write_text(lab.config.read_text() + f"\nconfig fleet 'fleet'\n\toption channel "
                    f"'{url}'\n\toption group '{group}'\n\toption delay '0'\n")
    return image, conf


def on(lab, unit, *args, conf=None, check=True):
    image, own = unit
    done = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image),
                           *map(str, args)],
                          env={**os.environ, **lab.env, "SNAPSHOT_CONFIG": str(conf or own)},
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def poll(lab, unit) -> dict:
    return json.loads(on(lab, unit, "fleet", "poll", "--no-reboot", "--json").stdout)


def collect(lab, units, where: Path) -> Path:
    where.mkdir(exist_ok=True)
    for name, unit in units.items():
        (where / f"{name}.json").write_text(on(lab, unit, "status", "--json").stdout)
    report = where / "report.json"
    on(lab, units["u1"], "fleet", "report", *sorted(where.glob("u*.json")), "-o", report)
    return report


def fail_health(lab, unit, tmp_path):
    conf = Path(health_config(tmp_path / "sick", healthy=False)["SNAPSHOT_CONFIG"])
    conf.write_text(conf.read_text() + lab.config.read_text().split("\n", 1)[1])
    return on(lab, unit, "watch", "--no-reboot", conf=conf, check=False)


@pytest.mark.parametrize("max_failed", [0, 1])
def test_a_failed_canary_stops_the_next_wave_unless_the_threshold_allows_it(world, max_failed):
    lab, channel, units, tmp_path = world
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    on(lab, units["u1"], "fleet", "publish", fix, "--channel", channel, "--waves",
       "canary,rest", "--max-failed", max_failed, "--key", lab.channel_secret)
    results = {name: poll(lab, unit) for name, unit in units.items()}
    assert [results[n]["action"] for n in GROUPS] == ["applied", "applied", "none", "none"]
    bundle_id = results["u1"]["bundle"]
    on(lab, units["u1"], "confirm")
    assert fail_health(lab, units["u2"], tmp_path).returncode == 5
    # The failed unit does not take the bundle again.
    again = poll(lab, units["u2"])
    assert again["action"] == "none" and "failed here" in again["reason"]
    report = collect(lab, units, tmp_path / "status")
    merged = json.loads(report.read_text())
    assert merged["bundle"] == bundle_id
    assert {n: u["outcome"] for n, u in merged["units"].items()} == \
        {"u1": "confirmed", "u2": "failed", "u3": "not applied", "u4": "not applied"}
    promoted = on(lab, units["u1"], "fleet", "promote", "--channel", channel, "--report",
                  report, "--key", lab.channel_secret, check=False)
    if max_failed == 0:
        assert promoted.returncode == 1
        assert "not promoting rest: 1 failed trial in canary (u2), more than the 0 allowed" \
            in promoted.stderr
        assert poll(lab, units["u3"])["action"] == "none"
    else:
        assert promoted.returncode == 0, promoted.stderr
        assert poll(lab, units["u3"])["action"] == "applied"
        assert poll(lab, units["u4"])["action"] == "applied"


def test_pending_canaries_block_the_promotion(world):
    lab, channel, units, tmp_path = world
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    on(lab, units["u1"], "fleet", "publish", fix, "--channel", channel, "--waves",
       "canary,rest", "--key", lab.channel_secret)
    poll(lab, units["u1"])
    again = poll(lab, units["u1"])
    assert (again["action"], again["reason"]) == ("none", "a trial is pending")
    report = collect(lab, units, tmp_path / "status")
    done = on(lab, units["u1"], "fleet", "promote", "--channel", channel, "--report", report,
              "--key", lab.channel_secret, check=False)
    assert done.returncode == 1 and "have not decided yet (u1, u2)" in done.stderr


def test_a_tampered_channel_is_refused_with_nothing_written(world):
    lab, channel, units, tmp_path = world
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    on(lab, units["u1"], "fleet", "publish", fix, "--channel", channel, "--waves", "canary",
       "--key", lab.channel_secret)
    text = (channel / "channel.json").read_text()
    (channel / "channel.json").write_text(text.replace('"max_failed": 0', '"max_failed": 9'))
    digest = image_digest(units["u1"][0])
    done = on(lab, units["u1"], "fleet", "poll", "--no-reboot", check=False)
    assert done.returncode == 1 and "signature does not verify" in done.stderr
    assert done.stderr.count("\n") == 1 and image_digest(units["u1"][0]) == digest


def poll_here(world, monkeypatch, sleep=None, **fleet_options) -> dict:
    """u1 polls in this process (fleet.poll), after the fix is published to the canaries."""
    from contextlib import contextmanager
    from mtd import open_flash
    from snapshot import config
    from snapshot.store.chain import Chain
    lab, channel, units, tmp_path = world
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    on(lab, units["u1"], "fleet", "publish", fix, "--channel", channel, "--waves", "canary",
       "--key", lab.channel_secret)
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    image, conf = units["u1"]

    @contextmanager
    def opener():
        with open_flash(str(image), writable=True) as flash:
            yield Chain(flash)
    return fleet.poll(opener, config.load(str(conf)), memory.settings(str(conf)) | fleet_options,
                      3, lambda line, loud=False: None, sleep=sleep or time.sleep)


def test_the_unit_waits_a_random_time_inside_its_window(world, monkeypatch):
    slept = []
    done = poll_here(world, monkeypatch, sleep=slept.append, delay="300")
    assert done["action"] == "applied" and len(slept) == 1 and 0 <= slept[0] <= 300


def test_a_poll_reads_each_base_snapshot_once(world, monkeypatch):
    """The poll hashes the base to choose the rollout; the apply that follows does not read
    those payloads from flash again."""
    from snapshot.store.chain import Chain
    read = []
    payload = Chain.payload
    monkeypatch.setattr(Chain, "payload", lambda self, record: read.append(
        (record.entry.type, record.entry.seq)) or payload(self, record))
    done = poll_here(world, monkeypatch)
    # Snapshot 1 is the base; the volatile record is read once, for its copy on top.
    assert done["action"] == "applied" and read.count((SNAPSHOT, 1)) == 1


def test_help_has_an_example_for_each_fleet_command(world):
    lab, _, units, _ = world
    for command in ("poll", "confirm", "rollback", "publish", "promote", "withdraw",
                    "resign", "report"):
        assert "Example:" in on(lab, units["u1"], "fleet", command, "--help").stdout


class Trickle(Quiet):
    """Serves bundles slowly after their first 200 KiB, so that a poll can be cut off in the
    middle of the download; everything else at once."""
    slow = True

    def copyfile(self, source, outputfile):
        if not (self.slow and self.path.endswith(".snb")):
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(200 * KIB))
        outputfile.flush()
        while chunk := source.read(512):
            threading.Event().wait(0.1)
            outputfile.write(chunk)


@contextmanager
def behind_a_slow_server(tmp_path):
    """A canary unit whose channel a Trickle server serves, and a bundle of a 300 KiB fix for
    it: yields the lab, the unit, the channel's directory and the bundle."""
    from sweep import make_tree
    lab = Lab.make(tmp_path / "lab")
    ref = tmp_path / "ref.img"
    lab.reference(ref, NOR)
    lab.cli(ref, "rollback", "--to", "1")
    lab.cli(ref, "push", "--from", make_tree(tmp_path / "big", 7, 300), "-m", "big fix")
    with served(files(tmp_path / "www", Trickle)) as base:
        unit = enrolled(lab, tmp_path / "u1", f"{base}/fleet/channel.json", "canary")
        yield lab, unit, tmp_path / "www/fleet", lab.bundle(ref, "2", tmp_path / "fix.snb")


@pytest.mark.parametrize("how", ["kill", "powercut"])
def test_a_poll_cut_off_in_the_download_leaves_the_old_state_and_the_next_poll_completes(
        tmp_path, how):
    with behind_a_slow_server(tmp_path) as (lab, unit, channel, fix):
        on(lab, unit, "fleet", "publish", fix, "--channel", channel, "--waves", "canary",
           "--key", lab.channel_secret)
        argv = [sys.executable, "-m", "snapshot", "--device", str(unit[0]), "fleet", "poll",
                "--no-reboot"]
        env = {**os.environ, **lab.env, "SNAPSHOT_CONFIG": str(unit[1])}
        try:
            if how == "kill":
                # Killed while it downloads: the poll writes nothing before it has the whole
                # bundle, so nothing of it is on flash.
                digest = image_digest(unit[0])
                proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
                time.sleep(1.5)
                assert proc.poll() is None, "the download ended before it could be killed"
                proc.kill()
                proc.wait()
                assert image_digest(unit[0]) == digest
            else:
                cut_off(argv, env, how, unit[0])
            Trickle.slow = False
            assert poll(lab, unit)["action"] == "applied"
        finally:
            Trickle.slow = True


# -- the operator's decision ---------------------------------------------------------------------

def operator_conf(lab, unit, work: Path, healthy: bool = True, window: int = 60,
                  interval: int = 0) -> Path:
    """The unit's configuration with a health watch whose one check passes (or fails), rounds
    every `interval` s, `window` seconds to decide, and a fleet that leaves bundles to the
    operator."""
    conf = Path(health_config(work, healthy)["SNAPSHOT_CONFIG"])
    own = unit[1].read_text()
    conf.write_text(conf.read_text() + f"\toption window '{window}'\n\toption interval '{interval}'\n"
                    + own.split("\n", 1)[1] + "\toption confirm 'operator'\n")
    return conf


def applied(lab, channel, units, tmp_path, names=("u1",)) -> str:
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    on(lab, units["u1"], "fleet", "publish", fix, "--channel", channel, "--waves",
       "canary,rest", "--key", lab.channel_secret)
    ids = {poll(lab, units[name])["bundle"] for name in names}
    assert len(ids) == 1
    return ids.pop()


def bundle_state(lab, unit) -> dict:
    status = json.loads(on(lab, unit, "status", "--json").stdout)
    return {"bundle": status["bundle"] and status["bundle"]["state"],
            "trial": status["trial"] and status["trial"]["what"],
            "last_rollback": status["last_rollback"] and status["last_rollback"]["bundle"]}


def test_with_confirm_operator_the_watch_waits_for_the_operators_confirm(world):
    lab, channel, units, tmp_path = world
    bundle_id = applied(lab, channel, units, tmp_path)
    conf = operator_conf(lab, units["u1"], tmp_path / "ops", interval=1)
    watch = subprocess.Popen(
        [sys.executable, "-m", "snapshot", "--device", str(units["u1"][0]), "watch",
         "--no-reboot"], env={**os.environ, **lab.env, "SNAPSHOT_CONFIG": str(conf)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Healthy rounds do not confirm a bundle: the watch says who does, and goes on.
        for line in watch.stderr:
            if "the operator confirms it" in line:
                break
        assert f"bundle {bundle_id}: healthy in 2 rounds" in line
        assert watch.poll() is None
        assert bundle_state(lab, units["u1"])["bundle"] == "trial"
        done = on(lab, units["u1"], "fleet", "confirm", bundle_id, "--json", conf=conf)
        assert json.loads(done.stdout) == {"bundle": bundle_id, "action": "confirmed",
                                           "what": "snapshot 2"}
        assert watch.wait(timeout=60) == 0
    finally:
        watch.kill()
    assert bundle_state(lab, units["u1"]) == {"bundle": "confirmed", "trial": None,
                                              "last_rollback": None}
    again = on(lab, units["u1"], "fleet", "confirm", bundle_id, "--json", conf=conf)
    assert json.loads(again.stdout)["reason"] == "confirmed already"


def test_with_confirm_operator_a_trial_nobody_confirms_rolls_back_at_the_window(world):
    lab, channel, units, tmp_path = world
    bundle_id = applied(lab, channel, units, tmp_path)
    conf = operator_conf(lab, units["u1"], tmp_path / "ops", window=1)
    done = on(lab, units["u1"], "watch", "--no-reboot", conf=conf, check=False)
    assert done.returncode == 5
    assert done.stdout == "rolled back snapshot 2: not confirmed within 1 s\n"
    note = json.loads(on(lab, units["u1"], "status", "--json").stdout)["last_rollback"]
    assert (note["bundle"], note["reason"]) == \
        (bundle_id, f"bundle {bundle_id}: snapshot 2: not confirmed within 1 s")


def test_with_confirm_operator_a_failed_check_still_rolls_back(world):
    lab, channel, units, tmp_path = world
    bundle_id = applied(lab, channel, units, tmp_path)
    conf = operator_conf(lab, units["u1"], tmp_path / "ops", healthy=False)
    assert on(lab, units["u1"], "watch", "--no-reboot", conf=conf, check=False).returncode == 5
    assert bundle_state(lab, units["u1"])["last_rollback"] == bundle_id


def test_the_operators_rollback_gives_the_state_before_and_the_unit_never_takes_it_again(
        world):
    lab, channel, units, tmp_path = world
    unit = units["u1"]
    before = json.loads(on(lab, unit, "list", "--json").stdout)
    bundle_id = applied(lab, channel, units, tmp_path)
    done = on(lab, unit, "fleet", "rollback", bundle_id, "--no-reboot", "--json")
    assert json.loads(done.stdout) == {"bundle": bundle_id, "action": "rolled back",
                                       "what": "snapshot 2"}
    assert bundle_state(lab, unit) == {"bundle": "failed", "trial": None,
                                       "last_rollback": bundle_id}
    status = json.loads(on(lab, unit, "status", "--json").stdout)
    assert status["last_rollback"]["reason"] == \
        f"bundle {bundle_id}: snapshot 2: rolled back by the operator"
    # What boots next is the state before: the base and the unit's own volatile record.
    after = json.loads(on(lab, unit, "list", "--json").stdout)
    kept = [(s["seq"], s["state"]) for s in after["snapshots"] if s["state"] != "failed"]
    assert kept == [(s["seq"], s["state"]) for s in before["snapshots"]]
    assert [v["state"] for v in after["volatiles"]] == [v["state"] for v in before["volatiles"]]
    again = poll(lab, unit)
    assert again["action"] == "none" and "failed here" in again["reason"]
    twice = on(lab, unit, "fleet", "rollback", bundle_id, "--no-reboot", "--json")
    assert json.loads(twice.stdout)["action"] == "none"
    assert "was rolled back here" in json.loads(twice.stdout)["reason"]


def test_the_operators_decisions_that_cannot_hold_are_refused_with_nothing_written(world):
    lab, channel, units, tmp_path = world
    bundle_id = applied(lab, channel, units, tmp_path, names=("u1", "u2"))
    u1, u3 = units["u1"], units["u3"]
    refusals = []
    # The last round of health checks failed: not confirmed, unless forced.
    sick = Path(health_config(tmp_path / "sick", healthy=False)["SNAPSHOT_CONFIG"])
    on(lab, u1, "health", conf=sick, check=False)
    refusals.append((u1, ["confirm", bundle_id], "its last health check failed (mesh: "))
    # Not on this unit, or another bundle id.
    refusals.append((u3, ["confirm", bundle_id], f"bundle {bundle_id} is not on this unit"))
    refusals.append((u1, ["confirm", "0123456789abcdef"],
                     "snapshot 2 is on trial here, not bundle 0123456789abcdef"))
    for unit, args, message in refusals:
        digest = image_digest(unit[0])
        done = on(lab, unit, "fleet", *args, check=False)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and image_digest(unit[0]) == digest
    on(lab, u1, "fleet", "confirm", bundle_id, "--force")
    # A confirmed bundle is rolled back by `rollback --to`, which says what it drops.
    digest = image_digest(u1[0])
    done = on(lab, u1, "fleet", "rollback", bundle_id, "--no-reboot", check=False)
    assert done.returncode == 1 and "is confirmed here (snapshot 2); `snapshot rollback " \
        "--to 1` does it, and drops this unit's volatile record too" in done.stderr
    assert image_digest(u1[0]) == digest
    assert on(lab, u3, "fleet", "rollback", bundle_id, "--no-reboot").stdout == \
        f"nothing to do: bundle {bundle_id} is not on this unit\n"


def test_a_withdrawn_bundle_is_applied_by_no_unit(world):
    lab, channel, units, tmp_path = world
    bundle_id = applied(lab, channel, units, tmp_path)
    on(lab, units["u1"], "fleet", "withdraw", "--channel", channel, "--bundle", bundle_id,
       "--key", lab.channel_secret)
    assert poll(lab, units["u2"])["reason"].startswith("nothing for base ")
    done = on(lab, units["u1"], "fleet", "withdraw", "--channel", channel, "--bundle",
              bundle_id, "--key", lab.channel_secret, check=False)
    assert done.returncode == 1 and f"bundle {bundle_id} is not in the channel" in done.stderr


def test_the_operators_decision_waits_while_the_watch_holds_the_device(world):
    """The watch locks the device for a moment each round; a decision that comes then waits
    for it instead of failing busy."""
    from snapshot.store.chain import DeviceLock
    lab, channel, units, tmp_path = world
    bundle_id = applied(lab, channel, units, tmp_path)
    lock = DeviceLock(str(units["u1"][0]))
    threading.Timer(2.0, lock.release).start()
    done = on(lab, units["u1"], "fleet", "confirm", bundle_id, "--json")
    assert json.loads(done.stdout)["action"] == "confirmed"
