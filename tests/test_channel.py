"""The fleet channel held to TUF's threat model (DESIGN.md §16): what a signature alone does
not stop. A replayed older channel, a frozen (expired) one, a bundle at the channel's URL that
is not the one it names, a channel signed by a bundle key, a failed bundle retried after
another failed, and a poll that holds the device while it waits on the network."""
import json
import shutil
import subprocess
import sys
import os
import time
from pathlib import Path

import pytest

from snapshot.fleet import channel as fleet
from snapshot.fleet import memory
from snapshot.store.format import MAX_FAILED, MAX_MESSAGE, Fleet
from sweep import image_digest, make_tree
from test_fleet import behind_a_slow_server, collect, on, poll, world  # noqa: F401  (world: the fixture)


@pytest.fixture(autouse=True)
def no_last_poll():
    # The last poll's outcome lives in /tmp, as on a router, where /tmp starts empty at boot;
    # here another test's would still be there.
    Path(memory.LAST_POLL).unlink(missing_ok=True)
    yield
    Path(memory.LAST_POLL).unlink(missing_ok=True)


def publish(lab, unit, channel, bundle, *more):
    return on(lab, unit, "fleet", "publish", bundle, "--channel", channel, "--waves", "canary",
              "--key", lab.channel_secret, *more)


def refused(lab, unit, message: str) -> str:
    """A poll that fails in one `Error:` line holding `message`, with nothing written."""
    digest = image_digest(unit[0])
    done = on(lab, unit, "fleet", "poll", "--no-reboot", check=False)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ")
    assert image_digest(unit[0]) == digest
    return done.stderr


def status(lab, unit) -> dict:
    return json.loads(on(lab, unit, "status", "--json").stdout)


def test_a_replayed_older_channel_is_refused_after_a_rollback_and_a_reboot(world):
    """The withdrawn bundle's channel, still validly signed, served again after the unit took
    the channel that withdrew it and then rolled its snapshots back: refused. Each command is
    a new process that opens the image afresh, as after a reboot."""
    lab, channel, units, tmp_path = world
    u1 = units["u1"]
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    publish(lab, u1, channel, fix)
    old = {name: (channel / name).read_bytes() for name in ("channel.json", "channel.json.sig")}
    bundle_id = poll(lab, u1)["bundle"]
    on(lab, u1, "confirm")
    on(lab, u1, "fleet", "withdraw", "--channel", channel, "--bundle", bundle_id, "--key",
       lab.channel_secret)
    poll(lab, u1)
    on(lab, u1, "rollback", "--to", "1")
    for name, data in old.items():
        (channel / name).write_bytes(data)
    refused(lab, u1, "channel version 1 is older than version 2, which this unit accepted")
    after = status(lab, u1)
    assert after["bundle"] is None and after["fleet"]["channel_version"] == 2
    assert after["fleet"]["last_poll"]["action"] == "refused"


def test_a_poll_records_a_newer_channel_even_when_it_has_nothing_to_apply(world):
    lab, channel, units, tmp_path = world
    u3 = units["u3"]        # group rest: the rollout is not promoted to it
    publish(lab, u3, channel, lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb"))
    old = {name: (channel / name).read_bytes() for name in ("channel.json", "channel.json.sig")}
    on(lab, u3, "fleet", "resign", "--channel", channel, "--key", lab.channel_secret)
    assert poll(lab, u3)["reason"].startswith("nothing for base ")
    digest = image_digest(u3[0])
    # The same version again writes nothing.
    poll(lab, u3)
    assert image_digest(u3[0]) == digest
    for name, data in old.items():
        (channel / name).write_bytes(data)
    refused(lab, u3, "channel version 1 is older than version 2")


def test_an_expired_channel_is_refused_and_status_and_the_report_show_the_stuck_unit(world):
    lab, channel, units, tmp_path = world
    u1 = units["u1"]
    publish(lab, u1, channel, lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb"),
            "--expires-in", "1s")
    time.sleep(2)
    refused(lab, u1, "channel version 1 expired at ")
    last = status(lab, u1)["fleet"]["last_poll"]
    assert last["action"] == "refused" and "expired" in last["reason"]
    assert "fleet poll at " in on(lab, u1, "status").stdout
    report = collect(lab, {"u1": u1}, tmp_path / "status")
    assert "expired" in json.loads(report.read_text())["units"]["u1"]["fleet"]["last_poll"][
        "reason"]
    text = on(lab, u1, "fleet", "report", tmp_path / "status/u1.json").stdout
    assert "poll refused: channel version 1 expired at " in text
    # Signed anew, it is taken again.
    on(lab, u1, "fleet", "resign", "--channel", channel, "--key", lab.channel_secret)
    assert poll(lab, u1)["action"] == "applied"


def poll_in_process(world, monkeypatch, clock) -> dict:
    from contextlib import contextmanager
    from mtd import open_flash
    from snapshot import config
    from snapshot.store.chain import Chain
    lab, channel, units, tmp_path = world
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    image, conf = units["u1"]

    @contextmanager
    def opener():
        with open_flash(str(image), writable=True) as flash:
            yield Chain(flash)
    return fleet.poll(opener, config.load(str(conf)), memory.settings(str(conf)), 3,
                      lambda line, loud=False: None, clock=clock)


def test_expiry_is_checked_only_against_a_clock_known_to_be_set(world, monkeypatch):
    """A clock that reads earlier than the channel's signed `published` is not set: the
    expiry is not checked and the poll says so; set, the same channel is refused."""
    lab, channel, units, tmp_path = world
    publish(lab, units["u1"], channel,
            lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb"), "--expires-in", "1h")
    published = json.loads((channel / "channel.json").read_text())["published"]
    with pytest.raises(memory.FleetError, match="expired at "):
        poll_in_process(world, monkeypatch, clock=lambda: published + 7200)
    done = poll_in_process(world, monkeypatch, clock=lambda: published - 2 * 86400)
    assert done["action"] == "applied" and done["channel"]["clock"] == "not set"


@pytest.mark.parametrize("how", ["another bundle", "a channel naming another id"])
def test_a_bundle_that_is_not_the_one_the_channel_names_is_refused_with_nothing_written(
        world, how, monkeypatch):
    """The unit failed bundle A; the server serves bundle B, signed by the same trusted key,
    at A's URL. Neither that nor a channel whose hash fits B but names A gets B applied."""
    lab, channel, units, tmp_path = world
    monkeypatch.setenv("PATH", lab.env["PATH"])     # usign, for the publisher in-process
    u1 = units["u1"]
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    rollout = fleet.publish(channel, fix, ["canary"], lab.channel_secret)
    other = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "other.snb", None, "-m", "other")
    shutil.copyfile(other, channel / rollout["bundle"])
    if how == "another bundle":
        message = "its SHA-256 is not the one the channel gives"
    else:
        data = json.loads((channel / "channel.json").read_text())
        data["rollouts"][0].update(fleet._file_digest(other))
        fleet._save(channel, data, lab.channel_secret)
        message = f"and the channel names {rollout['id']}; nothing was written"
    refused(lab, u1, message)
    assert status(lab, u1)["bundle"] is None


@pytest.mark.parametrize("signer", ["bundle key", "key in both roles", "untrusted key"])
def test_a_channel_signed_by_a_key_not_of_the_channel_role_is_refused(world, signer):
    lab, channel, units, tmp_path = world
    u1 = units["u1"]
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    key, message = {"bundle key": (lab.secret, "a bundle key never signs a channel"),
                    "key in both roles": (lab.channel_secret,
                                          "a bundle key never signs a channel"),
                    "untrusted key": (lab.other, "(option channel_keys_dir) does not trust")
                    }[signer]
    if signer == "key in both roles":
        for public in (lab.work / "channel-keys").iterdir():
            shutil.copy(public, lab.keys_dir / public.name)
    on(lab, u1, "fleet", "publish", fix, "--channel", channel, "--waves", "canary", "--key",
       key)
    refused(lab, u1, message)


def test_every_bundle_that_failed_here_stays_refused_after_another_fails(world):
    lab, channel, units, tmp_path = world
    u1 = units["u1"]
    first = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    second = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix2.snb", None, "-m", "again")
    failed = []
    for bundle in (first, second):
        publish(lab, u1, channel, bundle)
        bundle_id = poll(lab, u1)["bundle"]
        on(lab, u1, "fleet", "rollback", bundle_id, "--no-reboot")
        failed.append(bundle_id)
    # The note names the second only; the first is still refused.
    publish(lab, u1, channel, first)
    again = poll(lab, u1)
    assert (again["action"], again["reason"]) == ("none", f"bundle {failed[0]} failed here")
    assert status(lab, u1)["fleet"]["failed_here"] == sorted(failed)


def test_the_bundles_that_failed_here_are_bounded_and_fit_the_entry():
    memory = Fleet(7, 1, (1 << 63) - 1)
    ids = [f"{n:016x}" for n in range(MAX_FAILED + 3)]
    for bundle_id in ids:
        memory = memory.failing(bundle_id)
    assert memory.failed == tuple(ids[-MAX_FAILED:])
    entry = memory.entry()
    assert len(entry.message.encode()) <= MAX_MESSAGE and Fleet.of(entry) == memory
    # One that failed again moves to the newest end instead of taking two places.
    assert memory.failing(ids[-MAX_FAILED]).failed == tuple(ids[-MAX_FAILED + 1:]) + \
        (ids[-MAX_FAILED],)


def test_a_save_is_not_busy_while_a_poll_waits_on_a_slow_server(tmp_path):
    """The poll downloads the bundle before it takes the device: a save in the meantime
    works, and the poll applies the bundle on top of it after the download."""
    with behind_a_slow_server(tmp_path) as (lab, unit, channel, fix):
        publish(lab, unit, channel, fix)
        env = {**os.environ, **lab.env, "SNAPSHOT_CONFIG": str(unit[1])}
        polling = subprocess.Popen([sys.executable, "-m", "snapshot", "--device", str(unit[0]),
                                    "fleet", "poll", "--no-reboot", "--json"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert polling.poll() is None, "the download ended before the save"
        saved = on(lab, unit, "save", "--from", make_tree(tmp_path / "mine", 9, 5),
                   check=False)
        assert saved.returncode == 0, saved.stderr
        out, err = polling.communicate(timeout=300)
        assert polling.returncode == 0, err
        assert json.loads(out)["action"] == "applied"


def test_the_cron_line_never_runs_two_polls_at_once():
    """enroll.yml's cron line: `flock -n` on a lock file, so that a poll still running (a
    slow server) makes the next one exit at once instead of piling up."""
    enroll = (Path(__file__).resolve().parent.parent / "ansible/enroll.yml").read_text()
    line = next(ln for ln in enroll.splitlines() if "line:" in ln and "fleet poll" in ln)
    command = line.split("* * * * ", 1)[1]
    assert command.startswith("flock -n /var/lock/snapshot-fleet.lock ")


def test_a_fleet_entry_whose_message_does_not_parse_still_reads_and_packs_again():
    """Only a bug or a crafted image writes one; reading it never stops a poll or a boot's
    rollback, which writes it again."""
    from snapshot.store.format import FLEET, DirEntry
    crafted = DirEntry(FLEET, 0, 3, 0, (1 << 64) - 1, 0, 0, 0, (),
                       "99999999999999999999999 not-an-id \u00e9 0123456789abcdef")
    memory = Fleet.of(crafted)
    assert memory == Fleet(3, (1 << 64) - 1, 0, ("0123456789abcdef",))
    assert Fleet.of(memory.failing("1111111111111111").entry()).failed == \
        ("0123456789abcdef", "1111111111111111")
