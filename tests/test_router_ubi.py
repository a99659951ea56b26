"""The real router on a NAND router's flash: rootfs_data a UBI volume (tests/router_vm.py's
flash_kind="ubi"; the initramfs attaches UBI to the MTD partition `ubi`, as a NAND board's
kernel does). The real /etc/preinit runs the project's hook, which finds no MTD partition
rootfs_data and takes the UBI volume of that name, as fstools does; fstools' real mount_root
takes the volume whenever the hook leaves it the stock way.

Two routers, each through its boots in order, one boot serving the tests of its state, as in
tests/test_router.py:
- A new router: the volume as nand.sh makes it, empty.
  1. The hook starts an empty chain on it; a push, a save, an unsaved change, a reboot into
  2. exactly what was pushed and saved; qemu killed during a push, then
  3. the old state or the new one; `firstboot -y` (fstools' factoryreset empties the volume)
     and a reboot into
  4. an empty chain again, nothing of the old state.
- A router sysupgraded keeping settings before this package: a ubifs on the volume holding
  only the kept sysupgrade.tgz, as nand.sh leaves it.
  1. The hook leaves it to the real mount_root, which mounts the ubifs; the hook's restore
     puts the settings back. Changes on the ubifs, then `snapshot convert`, which stages them
     on the ubifs and reboots into
  2. the boot whose preinit converts the ubifs and boots the chain, with every change;
  3. the next boot, the chain's, with nothing left to convert.
Marked `router`, with the tier (`bash scripts/test.sh -m router`).
"""
import io
import json
import tarfile
from pathlib import Path

import pytest

from router_vm import Router, ubi_flash
from test_router import SYNCED_CLI, copy_into, cut_outcome, settled, usable_root

pytestmark = pytest.mark.router

EMPTIED = ("snapshot: /dev/ubi0_0 starts with an emptied UBI volume (a factory reset, "
           "firstboot, or a sysupgrade without settings): started an empty chain")

#: What the cut push stores: incompressible, so that it spans many erase blocks.
CUT_BLOCKS = 24


@pytest.fixture(scope="module")
def root():
    return usable_root()


def nand_router(root: Path, work: Path, name: str) -> Router:
    """A boot of the NAND router whose flash is work/flash.img."""
    return Router(root, work / "flash.img", work / f"console-{name}.log", flash_kind="ubi")


def reboot(router: Router) -> None:
    router.send("reboot\n")
    router.wait_exit(120)


def mounts(router: Router) -> dict[str, str]:
    return {line.split()[1]: line.split()[2]
            for line in router.check("cat /proc/mounts").splitlines()}


def status(router: Router) -> dict:
    return json.loads(router.check("snapshot status --json", 180))


# -- a new router: the empty volume ------------------------------------------------------------

@pytest.fixture(scope="module")
def new_volume(root, tmp_path_factory):
    work = tmp_path_factory.mktemp("router-ubi")
    ubi_flash(work / "flash.img")
    with nand_router(root, work, "new") as router:
        settled(router)
        yield router


def test_the_empty_volume_boots_an_empty_chain(new_volume):
    log = new_volume.check("dmesg")
    assert EMPTIED in log
    assert "snapshot: mounted 0 snapshots" in log
    assert "mount_root" not in log
    assert new_volume.check("grep rootfs_data /sys/class/ubi/ubi0_0/name") == "rootfs_data\n"
    got = mounts(new_volume)
    assert got["/overlay"] == "tmpfs" and got["/volatile"] == "tmpfs"
    assert "ubifs" not in got.values()


@pytest.fixture(scope="module")
def pushed_and_saved(new_volume, root):
    """On the new router: a push, a save, an unsaved change; the next boot is yielded."""
    new_volume.check("uci set system.@system[0].hostname=nandrouter && uci commit system && "
                     "rm /etc/banner && snapshot push -m 'on ubi'", 180)
    new_volume.check("echo saved > /etc/saved && snapshot save && echo unsaved > /etc/unsaved",
                     180)
    reboot(new_volume)
    with nand_router(root, new_volume.console_log.parent, "pushed") as router:
        settled(router)
        yield router


def test_push_and_save_on_the_volume_survive_a_reboot_and_nothing_else(pushed_and_saved):
    router = pushed_and_saved
    assert "snapshot: mounted 1 snapshots and the volatile record" in router.check("dmesg")
    assert router.check("uci get system.@system[0].hostname") == "nandrouter\n"
    assert router.check("cat /etc/saved") == "saved\n"
    assert router.sh("test -e /etc/banner || test -e /etc/unsaved")[0] == 1
    got = status(router)
    assert got["snapshots"] == 1 and got["trial"] is None
    router.check("snapshot check", 300)


@pytest.fixture(scope="module")
def power_cut(pushed_and_saved, root):
    """qemu killed once a push to the volume has reported CUT_BLOCKS erase blocks written,
    close to its commit; the next boot is yielded."""
    router = pushed_and_saved
    copy_into(router, SYNCED_CLI, "/tmp/synced_cli.py")
    snapshots = status(router)["snapshots"]
    digest = router.check(f"mkdir /root/cut && head -c {CUT_BLOCKS * 64 * 1024} /dev/urandom "
                          ">/root/cut/blob && sha256sum /root/cut/blob").split()[0]
    router.send("python3 /tmp/synced_cli.py push -m 'cut' </dev/null\n")
    for _ in range(CUT_BLOCKS):
        router.expect(" written", 300)
    router.kill()
    with nand_router(root, router.console_log.parent, "after-cut") as after:
        settled(after)
        after.cut = {"snapshots": snapshots, "digest": digest}
        yield after


def test_after_a_power_cut_during_a_push_on_the_volume_the_boot_is_old_or_new(power_cut):
    outcome = cut_outcome(power_cut)
    assert power_cut.check("cat /etc/saved") == "saved\n"
    print(f"power cut during a push on a UBI volume: the next boot is {outcome}")


@pytest.fixture(scope="module")
def after_firstboot(power_cut, root):
    """base-files' `firstboot -y` (fstools' factoryreset: UBI_IOCVOLUP of 0 bytes empties
    the volume), then a reboot; the next boot is yielded."""
    power_cut.check("firstboot -y", 120)
    reboot(power_cut)
    with nand_router(root, power_cut.console_log.parent, "after-firstboot") as router:
        settled(router)
        yield router


def test_firstboot_empties_the_volume_into_an_empty_chain(after_firstboot):
    """DESIGN.md §11: nothing of the chain comes back."""
    router = after_firstboot
    assert EMPTIED in router.check("dmesg")
    got = status(router)
    assert got["snapshots"] == 0 and not got["volatile"]
    assert router.check("uci get system.@system[0].hostname") == "OpenWrt\n"
    assert router.sh("test -e /etc/saved || test -e /root/cut")[0] == 1
    assert router.sh("test -e /etc/banner")[0] == 0


# -- a stock NAND router: a ubifs overlay, converted ---------------------------------------------

#: The settings a sysupgrade kept: nand.sh leaves them, as sysupgrade.tgz, alone on the new
#: volume's ubifs.
KEPT_SYSTEM = b"config system\n\toption hostname 'kept'\n"

#: Changes on the ubifs overlay before `snapshot convert`, one of each kind an upper dir
#: holds: a changed config (through uci), a new file in a new directory, a squashfs file
#: deleted (a whiteout), a symlink, a private file.
UBIFS_CHANGES = ("uci set network.lan.proto=dhcp && uci commit network && "
                 "mkdir /etc/added && echo 'added on ubifs' > /etc/added/file && "
                 "rm /etc/banner && ln -s config/system /etc/system-link && "
                 "echo private > /etc/secret && chmod 600 /etc/secret && sync")

#: The files UBIFS_CHANGES made, as `ls -l` and `cat` show them.
SHOW = ("ls -l /etc/secret /etc/system-link | cut -c1-10; readlink /etc/system-link; "
        "cat /etc/added/file /etc/secret; uci get network.lan.proto; "
        "uci get system.@system[0].hostname; test -e /etc/banner || echo no banner")


@pytest.fixture(scope="module")
def stock_ubifs(root, tmp_path_factory):
    work = tmp_path_factory.mktemp("router-ubifs")
    overlay = work / "overlay"
    overlay.mkdir()
    with tarfile.open(overlay / "sysupgrade.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("etc/config/system")
        info.size, info.mode = len(KEPT_SYSTEM), 0o644
        tar.addfile(info, io.BytesIO(KEPT_SYSTEM))
    ubi_flash(work / "flash.img", overlay)
    with nand_router(root, work, "ubifs") as router:
        settled(router)
        yield router


def test_the_real_mount_root_boots_the_ubifs_with_the_kept_settings(stock_ubifs):
    log = stock_ubifs.check("dmesg")
    assert "mount_root: switching to ubifs overlay" in log
    assert "snapshot: restoring the settings a sysupgrade kept" in log
    assert "snapshot: mounted" not in log
    got = mounts(stock_ubifs)
    assert got["/overlay"] == "ubifs" and got["/"] == "overlay"
    assert stock_ubifs.check("uci get system.@system[0].hostname") == "kept\n"


@pytest.fixture(scope="module")
def converted(stock_ubifs, root):
    """Changes on the ubifs, what they look like, then `snapshot convert`, which stages
    them on the ubifs and reboots; the next boot, whose preinit converts, is yielded."""
    router = stock_ubifs
    router.check(UBIFS_CHANGES)
    shown = router.check(SHOW)
    router.send("snapshot convert\n")
    router.expect("the next boot converts /dev/ubi0_0; rebooting", 600)
    router.wait_exit(120)
    with nand_router(root, router.console_log.parent, "converted") as after:
        settled(after)
        after.shown = shown
        yield after


def test_the_boot_after_convert_converts_the_ubifs_and_boots_the_chain(converted):
    log = converted.check("dmesg")
    assert "snapshot: converted /dev/ubi0_0: snapshot 1 (converted from ubifs)" in log
    assert "snapshot: mounted 1 snapshots" in log
    assert "mount_root" not in log
    got = mounts(converted)
    assert got["/overlay"] == "tmpfs" and "ubifs" not in got.values()


def test_every_ubifs_change_is_in_the_chain(converted):
    assert converted.check(SHOW) == converted.shown
    listing = json.loads(converted.check("snapshot list --json", 180))
    assert [(s["seq"], s["message"]) for s in listing["snapshots"]] == \
        [(1, "converted from ubifs")]


@pytest.fixture(scope="module")
def chain_again(converted, root):
    shown = converted.shown
    reboot(converted)
    with nand_router(root, converted.console_log.parent, "chain-again") as router:
        settled(router)
        router.shown = shown
        yield router


def test_the_next_boot_is_the_chain_with_nothing_to_convert(chain_again):
    log = chain_again.check("dmesg")
    assert "snapshot: mounted 1 snapshots" in log
    assert "converted" not in log and "mount_root" not in log
    assert chain_again.check(SHOW) == chain_again.shown
    chain_again.check("snapshot check", 300)
