"""Kernel tier, end to end: `snapshot convert` on a router whose overlay is stock jffs2.

The router, its boots and the power cuts are those of test_kernel_boot.py (its module doc
says how a boot goes). Here the flash starts as a stock OpenWrt router's: the host puts a
fresh jffs2 (mkfs.jffs2 of an empty overlay, an empty upper/) at the start of the erased
rootfs_data, as a router flashed before this package, or a sysupgrade that kept settings,
leaves it; so the preinit hook leaves the partition to the stock mount_root
(guest_boot/mount_root), which mounts the jffs2 on /dev/mtdblockN at /overlay, with / an
overlay of /overlay/upper over the squashfs. (0xdeadc0de there would not do: the boot makes
an empty chain of it, DESIGN.md §11.)

`snapshot convert` packs /overlay/upper into /tmp and execs the RAM stage
(initscripts/lib/snapshot/convert-stage), which stops the other processes, remounts jffs2
read-only, pivots onto the squashfs, writes the chain with the CLI and reboots with
`reboot -f`. The harness runs qemu with -no-reboot, so the guest's reboot is qemu's exit: the
boot ends there, without the job's exit code, and the flash image keeps what was synced.

Power cuts: one boot makes the jffs2 router (a copy of its flash image is kept); each case
restores that image, boots, runs the convert in a `cut` step and kills qemu at its point,
then boots once more to see what the flash holds. The `cut` step puts a `snapshot` that runs
through synced_cli.py first on PATH (guest_boot/life.py), so the CLI the RAM stage runs
syncs after each flash operation and a kill of qemu falls between two of them, as on real
flash.
"""
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kernel_vm import FLASH_ERASE_SIZE
from test_kernel_boot import BOOT_TIMEOUT, KILLED, KILLS, TREE_BLOCKS, Boot, Router, \
    assert_booted_from_chain, cli, cut, delete, kernel_vm, report, tree, view_diff, write
from test_kernel_boot import router  # noqa: F401 (fixture)

pytestmark = pytest.mark.kernel_boot

MESSAGE = "converted from jffs2"
STAGE_DONE = "snapshot convert: converted; rebooting into the chain"
JFFS2_MOUNTS = {"/": "overlay", "/rom": "squashfs", "/overlay": "jffs2", "/volatile": None,
                "/tmp": "tmpfs"}
CHAIN_MOUNTS = {"/": "overlay", "/rom": "squashfs", "/overlay": "tmpfs", "/volatile": "tmpfs",
                "/tmp": "tmpfs"}

#: One change of each kind a jffs2 overlay upper dir holds here: a changed config (a
#: copy-up), a new file in a new directory, a deleted squashfs file (a whiteout), a symlink, a
#: private file. Not an opaque directory: overlayfs makes one (removing a merged directory,
#: or making one over a whiteout) with RENAME_EXCHANGE, which this kernel's jffs2 refuses
#: (EINVAL; OpenWrt's kernel may differ).
CHANGES = [
    write("/etc/config/network", "config interface 'lan'\n\toption proto 'dhcp'\n"),
    write("/etc/added/file", "added on jffs2\n"),
    delete("/etc/banner"),
    {"op": "symlink", "path": "/etc/system-link", "target": "config/system"},
    {"op": "write", "path": "/etc/secret", "text": "private\n", "mode": 0o600},
]


def final(*args):
    return {"op": "final", "args": list(args)}


def mark_for_jffs2(router: Router) -> None:
    """A fresh jffs2 at the start of the router's erased flash (block2mtd is NOR-like:
    cleanmarkers, no -n)."""
    if shutil.which("mkfs.jffs2") is None:
        pytest.fail("mkfs.jffs2 (mtd-utils) is missing: scripts/test.sh installs it")
    root = router.work / "empty-overlay"
    (root / "upper").mkdir(parents=True, exist_ok=True)
    image = router.work / "fresh.jffs2"
    subprocess.run(["mkfs.jffs2", "-r", str(root), "-o", str(image),
                    f"--eraseblock={FLASH_ERASE_SIZE}", "-l", "-p"], check=True,
                   capture_output=True)
    with open(router.flash, "r+b") as f:
        f.write(image.read_bytes())


def converting_boot(router: Router, plan: list[dict]) -> Boot:
    """Boot and follow a plan that ends in `snapshot convert`; its RAM stage reboots the
    guest, which ends qemu (-no-reboot)."""
    started = time.monotonic()
    with router.start(plan) as guest:
        while guest.is_running():
            if time.monotonic() - started > BOOT_TIMEOUT:
                guest.kill()
                raise AssertionError(f"boot {router.boots}: no reboot within {BOOT_TIMEOUT} s\n"
                                     f"{router.boot_of(guest).describe()}")
            time.sleep(0.2)
        boot = router.boot_of(guest)
    router.seconds += time.monotonic() - started
    assert not (router.results / ".kernel-vm" / "rc").exists(), (
        f"boot {router.boots}: the plan ended without a reboot\n{boot.describe()}")
    return boot


def cli_json(boot: Boot, *args) -> dict:
    """The JSON a `snapshot` step printed."""
    head = f"kboot: snapshot {' '.join(args)}: rc=0 "
    at = boot.output.find(head)
    assert at >= 0, f"no successful {' '.join(args)!r}\n{boot.describe()}"
    return json.JSONDecoder().raw_decode(boot.output, at + len(head))[0]


#: What the preinit hook says when a cut fell after convert wrote the chain's anchor entry but
#: before the switch (DESIGN.md §9): jffs2 still owns block 0, so the chain never counted and
#: its anchor blocks are erased (§11).
VOIDED = "starts with jffs2 (a sysupgrade that kept settings, or a jffs2 overlay): erased " \
         "the chain's anchor blocks"


def assert_booted_jffs2(boot: Boot, after_cut: bool = False) -> None:
    """The preinit hook found no chain and the stock mount_root mounted jffs2. After a cut,
    the hook may first have voided the anchor entry the cut left, and says so."""
    assert "kboot: stock mount_root: jffs2 on /dev/mtdblock" in boot.output, boot.describe()
    assert "kboot: preinit_mount_root ran; / is overlayfs:/overlay overlay" in boot.output, \
        boot.describe()
    log = boot.snapshot_log()
    if after_cut and log:
        assert len(log) == 1 and VOIDED in log[0] and "booting the stock way" in log[0], \
            boot.describe()
    else:
        assert not log, boot.describe()


def test_convert_jffs2_overlay_then_boot_the_chain(router):
    """A stock router's jffs2 overlay becomes the chain's snapshot 1: the boot after the RAM
    stage's reboot is the chain's, with exactly the files jffs2 held, the deletion, the
    symlink and the file mode included, and no volatile record."""
    mark_for_jffs2(router)
    first = converting_boot(router, [report("boot"), *CHANGES, report("jffs2"),
                                     final("convert")])
    assert_booted_jffs2(first)
    jffs2 = first.states["jffs2"]
    assert jffs2["chain"] is None and jffs2["mounts"] == JFFS2_MOUNTS, first.describe()
    view = jffs2["view"]
    assert "etc/banner" not in view and view["etc/added/file"].startswith("f 644 ")
    assert view["etc/secret"].startswith("f 600 ") and view["etc/system-link"] == \
        "l config/system"
    assert {"etc/banner", "etc/added/file", "etc/config/network", "etc/secret",
            "etc/system-link"} <= set(jffs2["overlay_upper"])
    assert STAGE_DONE in first.output, first.describe()

    second = router.boot([report("boot"), cli("list", "--json"), cli("check")])
    assert_booted_from_chain(second, 1, False)
    state = second.states["boot"]
    assert state["mounts"] == CHAIN_MOUNTS
    assert state["view"] == view, view_diff(state["view"], view)
    listing = cli_json(second, "list", "--json")
    assert [(s["seq"], s["message"], s["integrity"].startswith("damaged")) for s in listing["snapshots"]] == \
        [(1, MESSAGE, False)], listing
    assert listing["volatile"] is None, listing
    # Snapshot 1 is the jffs2 upper dir; /overlay/upper also holds the volatile mount point.
    assert set(state["overlay_upper"]) == set(jffs2["overlay_upper"]) | {"volatile"}
    assert state["volatile_upper"] == []
    print(f"convert end to end: {router.boots} boots in {router.seconds:.0f} s; snapshot 1 "
          f"is {listing['snapshots'][0]['size']} bytes")


def outcome(boot: Boot, old: dict) -> str | None:
    """'old' if the boot is jffs2's with the old view, 'new' if it is the converted chain's
    (snapshot 1, no volatile record) with the same view, else None."""
    state = boot.states["boot"]
    if state["view"] != old["view"]:
        return None
    if state["chain"] is None and state["mounts"] == JFFS2_MOUNTS:
        assert_booted_jffs2(boot, after_cut=True)
        return "old"
    chain = state["chain"]
    if chain and chain["volatile"] is None and [
            (s["seq"], s["message"], s["integrity"].startswith("damaged")) for s in chain["snapshots"]] == \
            [(1, MESSAGE, False)]:
        assert_booted_from_chain(boot, 1, False, after_cut=True)
        return "new"
    return None


#: Where the power is cut: test_kernel_boot's points (once `block` blocks of the record are
#: reported written, plus `delay` seconds), and right after the commit's erase of the anchor
#: block it programs next (ANCHOR_ERASED; synced_cli.py holds the CLI there).
ANCHOR_ERASED = None
CONVERT_KILLS = {**{f"blocks-{block}" + (f"+{delay * 1000:.0f}ms" if delay else ""):
                    (block, delay) for block, delay in KILLS},
                 "anchor-erased": (ANCHOR_ERASED, 0.0)}
HOLD = {"KBOOT_HOLD_ANCHOR_ERASE": "60"}
#: A kill right after that erase is the case that once failed: convert took block 0 (a fresh
#: jffs2's holds just a cleanmarker) for the anchor entry, and the stock mount_root then no
#: longer recognised jffs2. Block 0 is now erased only by the switch, after the commit.
KILL_PARAMS = list(CONVERT_KILLS)


def cut_convert(router: Router, block: int | None, delay: float) -> tuple[Boot, str]:
    """Boot the jffs2 router, run the convert for the host to kill, and kill qemu once the
    RAM stage's CLI has reported `block` erase blocks written (ANCHOR_ERASED: an anchor
    block erased), plus `delay` seconds, unless the guest has rebooted first. Returns the
    boot and what happened, for the summary."""
    started = time.monotonic()
    before = None
    step = cut("convert")
    if block is ANCHOR_ERASED:
        step["env"] = HOLD
    with router.start([report("old"), step]) as guest:
        while guest.is_running():
            text = guest.console_path.read_bytes().decode("utf-8", errors="replace")
            at = text.rfind("kboot-cut: start")
            tail = text[at:] if at >= 0 else ""
            if before is None and "writing the chain on" in tail:
                # The RAM stage has synced and made jffs2 read-only; its CLI is starting.
                before = router.flash.read_bytes()
            if STAGE_DONE in tail or ("kboot-cut: anchor block" in tail if block is ANCHOR_ERASED
                                      else tail.count(" written") >= block):
                break
            if time.monotonic() - started > BOOT_TIMEOUT:
                guest.kill()
                raise AssertionError(f"boot {router.boots}: no cut point within "
                                     f"{BOOT_TIMEOUT} s\n{router.boot_of(guest).describe()}")
            time.sleep(0.003)
        if delay:
            time.sleep(delay)
        rebooted = not guest.is_running()
        guest.kill()
        boot = router.boot_of(guest)
        text = guest.console_path.read_bytes().decode("utf-8", errors="replace")
    router.seconds += time.monotonic() - started
    tail = text[text.rfind("kboot-cut: start"):]
    assert "old" in boot.states and before is not None, (
        f"boot {router.boots}: the guest did not get to the RAM stage's CLI\n{boot.describe()}")
    after = router.flash.read_bytes()
    changed = sum(before[i:i + FLASH_ERASE_SIZE] != after[i:i + FLASH_ERASE_SIZE]
                  for i in range(0, len(after), FLASH_ERASE_SIZE))
    anchor = tail.rfind("kboot-cut: anchor block")
    point = (tail[anchor + len("kboot-cut: "):].splitlines()[0] if anchor >= 0 else
             f"{tail.count(' written')} of ~{TREE_BLOCKS} blocks reported written")
    what = (f"after {point} (+{delay * 1000:.0f} ms)"
            + (", after the reboot" if rebooted else
               ", after the commit" if STAGE_DONE in tail else "")
            + f", {changed} blocks changed on the disk image, first word "
            + after[:4].hex())
    return boot, what


@pytest.fixture(scope="module")
def jffs2_router(tmp_path_factory) -> tuple[Router, Path, dict]:
    """A router on stock jffs2 with CHANGES and a tree of random files (48 erase blocks of
    payload), powered off cleanly: the router, a copy of its flash image, its reported state."""
    router = Router(kernel_vm(), tmp_path_factory.mktemp("convert-cuts"))
    mark_for_jffs2(router)
    prepared = router.boot([*CHANGES, tree("/data/tree"), report("jffs2")])
    assert_booted_jffs2(prepared)
    image = router.work / "jffs2.img"
    shutil.copyfile(router.flash, image)
    return router, image, prepared.states["jffs2"]


@pytest.mark.parametrize("kill", KILL_PARAMS)
def test_power_cut_during_convert(jffs2_router, kill):
    """A kill during the RAM stage's writes leaves jffs2 exactly as it was (the stock
    mount_root mounts it, with every file) or the converted chain; never anything else."""
    router, image, jffs2 = jffs2_router
    shutil.copyfile(image, router.flash)
    started, boots = router.seconds, router.boots
    trial, what = cut_convert(router, *CONVERT_KILLS[kill])
    old = trial.states["old"]
    assert old["view"] == jffs2["view"], view_diff(old["view"], jffs2["view"])
    after = router.boot([report("boot")])
    found = outcome(after, old)
    state = after.states["boot"]
    assert found is not None, (
        f"convert kill {kill} ({what}): the state is neither jffs2's nor the chain's\n"
        f"chain: {json.dumps(state['chain'])}\nmounts: {state['mounts']}\n"
        f"view against the old one:\n{view_diff(state['view'], old['view'])}\n"
        f"{after.describe()}")
    KILLED.setdefault("convert", []).append(found)
    print(f"convert kill {kill}: {what} -> {found} ({router.boots - boots} boots, "
          f"{router.seconds - started:.0f} s)")
