"""A command that stores a change for the next boot reboots only a system that booted its
overlay from the device (snapshot/reboot.py). On a simulated image, a `reboot` first on PATH
that notes each call is never called, and the command says in one line when the change takes
effect; on an image noted as the booted device, the same command calls it. The commands run
in this process, where the note (reboot.BOOTED) is the test's own."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clirun import invoke
from snapshot import reboot
from sweep import health_config
from router_sandbox import sandbox_feeds  # noqa: F401  (the fixture)
from test_fleet import applied, on, world  # noqa: F401  (world: the fixture)
from test_overlayfs import namespaces  # noqa: F401  (the tier-2 availability fixture)

WHAT = {"bundle apply": "the bundle's trial", "fleet poll": "the bundle's trial",
        "fleet rollback": "the state before the trial", "watch": "the state before the trial"}


@pytest.fixture
def reboots(tmp_path, monkeypatch):
    """The file a fake `reboot`, first on PATH, appends each of its calls to; no device is
    noted as booted yet."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    calls = tmp_path / "reboot-calls"
    (fake / "reboot").write_text(f"#!/bin/sh\necho \"reboot $*\" >> '{calls}'\n")
    (fake / "reboot").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(reboot, "BOOTED", tmp_path / "booted.json")
    return calls


def note_booted(image) -> None:
    """What the router's preinit notes: the system booted its overlay from `image`."""
    from mtd import SimFlash
    with SimFlash(image) as flash:
        reboot.record(flash)


def stored_then_reboot(world, command: str):
    """Store a change on u1's image with `command` (run here, rebooting as it sees fit)."""
    lab, channel, units, tmp_path = world
    unit = image, own = units["u1"]
    conf = own
    if command == "bundle apply":
        args = ["bundle", "apply", lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")]
    elif command == "fleet poll":
        fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
        on(lab, unit, "fleet", "publish", fix, "--channel", channel, "--waves", "canary",
           "--key", lab.channel_secret)
        args = ["fleet", "poll", "--now"]
    elif command == "fleet rollback":
        args = ["fleet", "rollback", applied(lab, channel, units, tmp_path)]
    else:
        applied(lab, channel, units, tmp_path)
        conf = health_config(tmp_path / "sick", healthy=False)["SNAPSHOT_CONFIG"]
        with open(conf, "a") as f:
            f.write(lab.config.read_text().split("\n", 1)[1])
        args = ["watch"]
    result = invoke("--device", image, *args, env={**lab.env, "SNAPSHOT_CONFIG": str(conf)})
    assert result.exit_code == (5 if command == "watch" else 0), result.output
    return image, result


@pytest.mark.parametrize("command", list(WHAT))
def test_a_change_stored_on_an_image_never_reboots_this_machine(world, reboots,  # noqa: F811
                                                                command):
    image, result = stored_then_reboot(world, command)
    assert not reboots.exists()
    line = (f"snapshot: {WHAT[command]} takes effect when a router boots {image}; not "
            f"rebooting this machine, which did not boot its overlay from it")
    assert result.stderr.splitlines().count(line) == 1, result.stderr
    assert "rebooting into" not in result.stderr


@pytest.mark.parametrize("command", list(WHAT))
def test_a_change_stored_on_the_booted_device_reboots_into_it(world, reboots,  # noqa: F811
                                                              command):
    lab, channel, units, tmp_path = world
    note_booted(units["u1"][0])
    image, result = stored_then_reboot(world, command)
    assert reboots.read_text() == "reboot \n"
    assert f"snapshot: rebooting into {WHAT[command]}" in result.stderr.splitlines()


def test_no_reboot_reboots_not_even_the_booted_device(world, reboots):  # noqa: F811
    lab, channel, units, tmp_path = world
    image = units["u1"][0]
    note_booted(image)
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    result = invoke("--device", image, "bundle", "apply", fix, "--no-reboot",
                    env={**lab.env, "SNAPSHOT_CONFIG": str(units["u1"][1])})
    assert result.exit_code == 0, result.output
    assert not reboots.exists() and "reboot" not in result.stderr


def test_the_booted_device_is_known_by_its_identity_not_its_name(tmp_path, monkeypatch):
    """A link to the noted image is the booted device; a copy of it is not."""
    from mtd import FlashType, Geometry, SimFlash
    monkeypatch.setattr(reboot, "BOOTED", tmp_path / "booted.json")
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 256 * 1024, 64 * 1024, 1, 0))
    note_booted(image)
    link = tmp_path / "link.img"
    link.symlink_to(image)
    (tmp_path / "link.img.sim.json").symlink_to(f"{image}.sim.json")
    copy = tmp_path / "copy.img"
    subprocess.run(["cp", image, copy], check=True)
    subprocess.run(["cp", f"{image}.sim.json", f"{copy}.sim.json"], check=True)
    assert reboot.booted(str(link)) == (str(link), True)
    assert reboot.booted(str(copy)) == (str(copy), False)
    assert reboot.booted(str(tmp_path / "missing.img"))[1] is False


# -- upgrade, in a booted sandbox router (tier 2: tests/router_sandbox.py, the real opkg) --------

@pytest.fixture
def opkg_router(tmp_path, sandbox_feeds):  # noqa: F811
    from router_sandbox import Router, build_rootfs
    from test_upgrade import HOOKS
    rootfs = build_rootfs(tmp_path / "rootfs", "opkg", sandbox_feeds, files=HOOKS)
    with Router(tmp_path / "router", rootfs, sandbox_feeds) as router:
        yield router


@pytest.mark.parametrize("noted", [False, True], ids=["not-booted", "booted"])
def test_an_upgrade_reboots_only_the_system_that_booted_from_the_device(opkg_router, noted):
    """The sandbox's preinit notes the image as the booted device, as a router's does; with
    the note gone, the router stands for a PC that did not boot from the image."""
    from test_upgrade import with_v1
    booted = with_v1(opkg_router, "mesh-tool")
    opkg_router.use_feeds("v2")
    if not noted:
        assert booted.run("rm /tmp/snapshot/booted.json").rc == 0
    done = booted.snapshot("upgrade")
    assert done.rc == 0, done.output
    assert "stored as snapshot" in done.out
    assert booted.reboot_requested == noted
    line = ("snapshot: rebooting into the upgrade's trial" if noted else
            "snapshot: the upgrade's trial takes effect when a router boots /.sandbox/flash.img; "
            "not rebooting this machine, which did not boot its overlay from it")
    assert done.err.splitlines().count(line) == 1, done.err


# -- the note, made by `snapshot mount` at preinit (tier 2: real mounts in a namespace) ------------

# Runs inside a private mount namespace: the boot's mount over a squashfs, the preinit form
# (no pivot here) or the sandbox form; then whether the device is noted as booted.
MOUNT = r"""
import json, subprocess, sys
from pathlib import Path
from snapshot import boot, reboot
sqfs, image, work, sandbox = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"
reboot.BOOTED = work / "booted.json"
root, target = work / "squashfs", work / "root"
root.mkdir()
subprocess.run(["mount", "-o", "loop,ro", sqfs, str(root)], check=True)
report = boot.mount(image, root, target, work / ".scratch", boot.Log(kmsg=False), sandbox)
print(json.dumps({"fallback": report.fallback, "booted": reboot.booted(image)[1],
                  "noted": reboot.BOOTED.exists()}))
"""


@pytest.mark.parametrize("sandbox", [False, True], ids=["preinit", "sandbox"])
def test_the_boots_mount_notes_its_device_and_the_sandbox_form_does_not(
        namespaces, tmp_path, sandbox):  # noqa: F811
    from mtd import FlashType, Geometry, SimFlash
    from test_boot import make_rootfs
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1 << 20, 64 << 10, 1, 0))
    invoke("--device", image, "format")
    sqfs = make_rootfs(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           MOUNT, str(sqfs), str(image), str(work), "1" if sandbox else "0"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == \
        {"fallback": False, "booted": not sandbox, "noted": not sandbox}
