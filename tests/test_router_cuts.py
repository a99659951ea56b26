"""The real router (tests/router_vm.py, a NOR router's flash) through power cuts and boots
that are never confirmed: each next boot is the real /etc/preinit's, whose hook's `snapshot
mount` decides what the router runs.

One router lives through it all, each test starting on the boot the one before left:
- its first boot on erased flash (the stock mount_root's jffs2), `snapshot convert`, and a
  reboot into the chain;
- a power cut during `snapshot push` and during `snapshot save`, each at two points (CUTS):
  while the record's blocks are written, and around its commit. The command runs through
  tests/synced_cli.py, so that each flash operation is on the disk image when it
  returns, as on flash (its module doc), and qemu is killed once the CLI's progress line has
  shown that many blocks written. The next boot is exactly the state before the command or
  the state it stored;
- a change on trial that no boot confirms (a crash loop: each boot is cut short before the
  watch decides): preinit counts the boots, and after max_attempts (3) the next boot is the
  state before the trial;
- fstools' factoryreset (`firstboot -y`): its mark alone, then an empty chain that takes
  a save;
- `sysupgrade -n` (not keeping settings): the board's image step writes 0xdeadc0de at the
  start of rootfs_data, and the next boot is an empty chain (DESIGN.md §11).
- a sysupgrade that kept settings: the settings' jffs2 over the chain's first blocks; the
  next boot is the stock one, through fstools' mount_root, with the settings restored.
Marked `router`, with the tier (`bash scripts/test.sh -m router`).
"""
import io
import json
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from kernel_vm import FLASH_ERASE_SIZE
from router_vm import Router, erased_flash
from test_router import BOOT_TIMEOUT, SYNCED_CLI, copy_into, settled, usable_root

pytestmark = pytest.mark.router

#: Erase blocks of incompressible data each cut command stores.
BLOCKS = 24

#: Where the power is cut: once the command has reported `blocks` erase blocks written, then
#: `delay` seconds: amid the record, and after its last block, around its commit marker and
#: the anchor entry.
CUTS = {1: (3, 0.0), 2: (BLOCKS, 0.03)}

#: What `snapshot mount` says of a chain it had to repair or could not boot whole. A torn
#: anchor entry is what a cut during its program leaves; the boot repairs it.
BOOT_PROBLEMS = ("chain damaged", "falling back", "repair failed", "not applied",
                 "booting snapshots 1..")
TORN_ANCHOR = "an interrupted write left a torn anchor entry"

#: The data the cut commands store, with their digests: what tells old from new.
FILES = "mkdir -p /root/cut && cd /root/cut && find . -type f | sort | xargs -r sha256sum"


class Life:
    """The router's current boot; each next boot starts on the flash the last one left."""

    def __init__(self, root, work):
        self.root = root
        self.work = work
        self.boots = 0
        self.router: Router | None = None

    def boot(self, settle: bool = True) -> Router:
        """The next boot, logged in once rc.d has started the snapshot service and its watch
        has ended (settle), or as soon as the console is there."""
        self.close()
        self.boots += 1
        self.router = Router(self.root, self.work / "flash.img",
                             self.work / f"console-{self.boots}.log")
        if settle:
            return settled(self.router)
        self.router.login(BOOT_TIMEOUT)
        return self.router

    def reboot(self, settle: bool = True) -> Router:
        self.router.send("reboot\n")
        self.router.wait_exit(120)
        return self.boot(settle)

    def close(self) -> None:
        if self.router is not None:
            self.router.__exit__(None, None, None)
            self.router = None


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    root = usable_root()
    work = tmp_path_factory.mktemp("router-cuts")
    erased_flash(work / "flash.img")
    life = Life(root, work)
    try:
        router = life.boot()
        router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", 300)
        router.check("mkdir /root/cut && sync")
        router.send("snapshot convert\n")
        router.expect("snapshot convert: converted; rebooting into the chain", 600)
        router.wait_exit(120)
        life.boot()
        yield life
    finally:
        life.close()


def state(router: Router) -> dict:
    status = json.loads(router.check("snapshot status --json", 180))
    return {"snapshots": status["snapshots"], "files": router.check(FILES)}


def assert_booted_the_chain(router: Router) -> None:
    log = router.check("dmesg | grep 'snapshot: '")
    assert "snapshot: mounted " in log, log
    problems = [line for line in log.splitlines()
                if any(p in line for p in BOOT_PROBLEMS) and TORN_ANCHOR not in line]
    assert not problems, log


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("operation", ["push", "save"])
def test_a_power_cut_leaves_the_state_before_the_command_or_the_one_it_stored(
        life, operation, cut):
    router = life.router
    copy_into(router, SYNCED_CLI, "/tmp/synced_cli.py")
    old = state(router)
    # push stores the new file as a snapshot; save replaces the volatile record's files.
    replace = "" if operation == "push" else "rm -f /root/cut/* && "
    router.check(f"{replace}head -c {BLOCKS * 64 * 1024} /dev/urandom "
                 f">/root/cut/{operation}-{cut}")
    new = state(router)
    new["snapshots"] += operation == "push"
    blocks, delay = CUTS[cut]
    message = f" -m 'cut {cut}'" if operation == "push" else ""
    router.send(f"python3 /tmp/synced_cli.py {operation}{message} </dev/null\n")
    for _ in range(blocks):
        router.expect(" written", 300)
    time.sleep(delay)
    router.kill()

    after = life.boot()
    got = state(after)
    assert got in (old, new), f"old {old}\nnew {new}\ngot {got}"
    assert_booted_the_chain(after)
    after.check("snapshot check", 300)
    print(f"power cut {cut} during {operation} on the router: the next boot is "
          f"{'old' if got == old else 'new'}")


#: The watch waits an hour before it judges: no boot of the crash loop lives that long.
SLOW_WATCH = "uci set snapshot.main.grace=3600 && uci commit snapshot"


def test_a_trial_no_boot_confirms_gives_way_after_max_attempts_boots(life):
    router = life.router
    router.check(f"{SLOW_WATCH} && snapshot push -m 'slow watch'", 180)
    router.check("echo broken > /root/crash-loop && snapshot push --trial -m 'crash loop'", 180)
    for attempt in (1, 2, 3):
        # The watch waits out its grace on trial: log in without waiting for it to end.
        router = life.reboot(settle=False)
        log = router.check("dmesg | grep 'snapshot: '")
        assert re.search(rf"snapshot: trying snapshot \d+: boot {attempt} of 3", log), log
        assert router.check("cat /root/crash-loop") == "broken\n"
    router = life.reboot()
    log = router.check("dmesg | grep 'snapshot: '")
    assert "was not confirmed in 3 boots" in log, log
    assert router.sh("test -e /root/crash-loop")[0] == 1
    status = json.loads(router.check("snapshot status --json", 180))
    assert status["trial"] is None
    assert "not confirmed in 3 boots" in status["last_rollback"]["reason"]


def test_the_real_factoryreset_writes_deadc0de_over_the_first_4_bytes_only(life):
    """base-files' `firstboot -y` runs fstools' factoryreset, which marks the partition for
    the next mount; the boot after it is an empty chain (DESIGN.md §11), and a save on that
    chain survives a reboot."""
    router = life.router
    block = "python3 -c \"print(open('/dev/mtd0', 'rb').read(65536).hex())\""
    before = router.check(block).strip()
    router.check("firstboot -y", 120)
    after = router.check(block).strip()
    assert after[:8] == "deadc0de" != before[:8]
    assert after[8:] == before[8:]
    router = life.reboot()
    status = json.loads(router.check("snapshot status --json", 180))
    assert status["snapshots"] == 0 and not status["volatile"]
    assert router.sh("test -e /root/cut")[0] == 1
    router.check("echo after-reset > /root/after-reset && snapshot save", 180)
    router = life.reboot()
    assert router.check("cat /root/after-reset") == "after-reset\n"


def test_a_sysupgrade_without_settings_boots_an_empty_chain(life):
    router = life.router
    router.check("echo image > /tmp/fw.bin")
    router.send("sysupgrade -n /tmp/fw.bin\n")
    router.wait_exit(600)
    router = life.boot()
    status = json.loads(router.check("snapshot status --json", 180))
    assert status["snapshots"] == 0 and status["trial"] is None and not status["volatile"]
    assert router.sh("test -e /root/after-reset")[0] == 1
    assert router.check("uci get snapshot.main.grace") == "300\n"
    mounts = router.check("cat /proc/mounts")
    assert " /overlay tmpfs " in mounts and "jffs2" not in mounts


#: The settings a sysupgrade keeps, in its sysupgrade.tgz.
KEPT_SYSTEM = b"config system\n\toption hostname 'kept'\n"


#: What `mtd -j` writes at the start of the block after the jffs2 it appends (its jffs2.c).
END_MARK = bytes.fromhex("deadc0de")


def settings_jffs2(work: Path) -> bytes:
    """What the board's image step writes from rootfs_data's start after a sysupgrade that
    keeps settings (as `mtd -j` does): a jffs2 holding sysupgrade.tgz, in whole erase
    blocks."""
    tree = work / "settings"
    tree.mkdir()
    with tarfile.open(tree / "sysupgrade.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("etc/config/system")
        info.size, info.mode = len(KEPT_SYSTEM), 0o644
        tar.addfile(info, io.BytesIO(KEPT_SYSTEM))
    image = work / "settings.jffs2"
    subprocess.run(["mkfs.jffs2", "-r", str(tree), "-o", str(image),
                    f"--eraseblock={FLASH_ERASE_SIZE}", "-l", "-p"], check=True,
                   capture_output=True)
    return image.read_bytes()


def test_a_sysupgrade_that_kept_settings_boots_jffs2_with_them(life, tmp_path):
    """DESIGN.md §11: over a chain with pushed and saved data, the settings' jffs2 in the
    first blocks ends the chain: the hook leaves the partition to fstools' mount_root, which
    mounts the jffs2; the hook's restore unpacks the kept settings. Nothing of the chain is left. (tests/test_router.py runs base-files'
    sysupgrade itself; here the image step's bytes are written while the router is off, as
    `mtd -j` writes them: the jffs2, then the end mark at the start of the block after it,
    where the kernel erases every block from on: the blocks the chain and the first jffs2
    left further on hold nothing after it.)"""
    router = life.router
    router.check("echo pushed > /root/pushed && snapshot push -m 'before the sysupgrade' && "
                 "echo saved > /root/saved && snapshot save", 180)
    router.send("poweroff\n")
    router.wait_exit(120)
    settings = settings_jffs2(tmp_path)
    with open(life.work / "flash.img", "r+b") as flash:
        flash.write(settings + END_MARK + b"\xff" * (FLASH_ERASE_SIZE - len(END_MARK)))
    router = life.boot()
    log = router.check("dmesg | grep -e 'snapshot: ' -e 'mount_root: '")
    # The kernel's erase from the end mark on took the chain's anchor blocks past the
    # settings (the hook's void, for a jffs2 without that erase, is tests/test_marks.py's).
    assert "mount_root: switching to jffs2 overlay" in log, log
    assert "snapshot: restoring the settings a sysupgrade kept" in log, log
    assert " /overlay jffs2 " in router.check("cat /proc/mounts")
    assert router.check("uci get system.@system[0].hostname") == "kept\n"
    assert router.sh("test -e /root/pushed || test -e /root/saved")[0] == 1
    starts = router.check("for b in 1 2 3; do dd if=/dev/mtd0 bs=65536 skip=$b count=1 "
                          "2>/dev/null | head -c 4; echo; done")
    assert "SnpA" not in starts, starts
