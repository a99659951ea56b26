"""The real router (tests/router_vm.py, a NOR router's flash) converting what a router ran
before this package, through the real /etc/preinit and fstools' mount_root:
- a power cut during `snapshot convert` of a jffs2 overlay, at three points (CONVERT_CUTS):
  the next boot is jffs2 as it was (the stock mount_root's) or the converted chain, never
  anything else;
- the old fstools snapshot chain (2014, FORMAT.md §8), written on the flash from its
  documented format (tests/old_chain.py, as tests/test_legacy.py's images): the hook boots it
  read-only with the view the stock boot gives, a save is refused and nothing is written;
  `snapshot convert` imports it and the next boot is the chain, with that view.
Marked `router`, with the tier (`bash scripts/test.sh -m router`).
"""
import hashlib
import shutil
import time

import pytest

from mtd import FlashType, Geometry
from old_chain import FIRST_SEQ, OldTool, archive
from router_vm import FLASH_SIZE, Router, erased_flash
from test_router import SYNCED_CLI, copy_into, settled, usable_root

pytestmark = pytest.mark.router

KIB = 1 << 10

#: The jffs2 overlay's changes before the convert: one of each kind an upper dir holds, and
#: 24 erase blocks of incompressible data, so that the chain's record spans many blocks.
JFFS2_CHANGES = ("uci set network.lan.proto=dhcp && uci commit network && "
                 "mkdir /etc/added && echo 'added on jffs2' > /etc/added/file && "
                 "rm /etc/banner && ln -s config/system /etc/system-link && "
                 "echo private > /etc/secret && chmod 600 /etc/secret && "
                 "head -c $((24 * 65536)) /dev/urandom > /root/blob && sync")

#: What the router shows of JFFS2_CHANGES.
SHOW = ("ls -l /etc/secret /etc/system-link | cut -c1-10; readlink /etc/system-link; "
        "cat /etc/added/file /etc/secret; uci get network.lan.proto; "
        "test -e /etc/banner || echo no banner; sha256sum /root/blob")

#: The RAM stage finds `snapshot` on PATH after it pivots (its /tmp moves along): this one
#: runs tests/synced_cli.py, so that each flash operation is on the disk image
#: when it returns, as on flash.
SYNCED = ("mkdir -p /tmp/synced && printf '#!/bin/sh\\nexec python3 /tmp/synced_cli.py \"$@\"\\n'"
          " > /tmp/synced/snapshot && chmod +x /tmp/synced/snapshot")

#: Where the power is cut: once the RAM stage's CLI has reported `blocks` erase blocks
#: written, then `delay` seconds (amid the record; after its last block, around the commit);
#: or (None) right after the commit has erased the anchor block it programs next, where
#: synced_cli.py holds it (SNAPSHOT_HOLD): once, convert took block 0 (a fresh jffs2's
#: holds just a cleanmarker) for the anchor entry, and the stock mount_root no longer
#: recognised jffs2.
CONVERT_CUTS = {"blocks-16": (16, 0.0), "blocks-24+30ms": (24, 0.03), "anchor-erased": (None, 0)}
SNAPSHOT_HOLD = "SYNCED_HOLD_ANCHOR_ERASE=60"

#: What the hook says when a cut fell after convert wrote the chain's anchor entry but before
#: the switch (DESIGN.md §9): jffs2 still owns block 0, so the chain never counted.
VOIDED = ("starts with jffs2 (a sysupgrade that kept settings, or a jffs2 overlay): erased "
          "the chain's anchor blocks")


@pytest.fixture(scope="module")
def root():
    return usable_root()


@pytest.fixture(scope="module")
def jffs2_router(root, tmp_path_factory):
    """A router that ran on jffs2 with JFFS2_CHANGES: its flash image (a copy taken once
    they were synced) and what it showed of them."""
    work = tmp_path_factory.mktemp("router-convert")
    erased_flash(work / "flash.img")
    with Router(root, work / "flash.img", work / "console-jffs2.log") as router:
        settled(router)
        router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", 300)
        router.check(JFFS2_CHANGES)
        shown = router.check(SHOW)
        router.check("sync")
        # block2mtd's writes reach the disk image at the sync: the image is the jffs2's.
        shutil.copyfile(work / "flash.img", work / "jffs2.img")
    return work, shown


@pytest.mark.parametrize("cut", CONVERT_CUTS)
def test_a_power_cut_during_convert_leaves_jffs2_as_it_was_or_the_chain(
        root, jffs2_router, cut):
    work, shown = jffs2_router
    shutil.copyfile(work / "jffs2.img", work / "flash.img")
    blocks, delay = CONVERT_CUTS[cut]
    with Router(root, work / "flash.img", work / f"console-{cut}.log") as router:
        settled(router)
        assert router.check(SHOW) == shown
        copy_into(router, SYNCED_CLI, "/tmp/synced_cli.py")
        router.check(SYNCED)
        hold = SNAPSHOT_HOLD if blocks is None else ""
        router.send(f"{hold} PATH=/tmp/synced:$PATH snapshot convert </dev/null\n")
        router.expect("snapshot convert: writing the chain on", 600)
        if blocks is None:
            router.expect("synced-cli: anchor block", 600)
        else:
            for _ in range(blocks):
                router.expect(" written", 300)
        time.sleep(delay)
        router.kill()

    with Router(root, work / "flash.img", work / f"console-{cut}-after.log") as after:
        settled(after)
        log = after.check("dmesg | grep -e 'snapshot: ' -e 'mount_root: ' || true")
        mounts = after.check("cat /proc/mounts")
        if " /overlay jffs2 " in mounts:
            outcome = "old"
            snapshot = [line for line in log.splitlines() if "snapshot: " in line]
            assert all(VOIDED in line for line in snapshot), log
        else:
            outcome = "new"
            assert "snapshot: mounted 1 snapshots" in log and "mount_root" not in log, log
            after.check("snapshot check", 300)
        assert after.check(SHOW) == shown, log
    print(f"power cut during convert ({cut}): the next boot is {outcome}")


# -- the old fstools chain ------------------------------------------------------------------------

#: The old tool's front end took each snapshot as a tar of /overlay's upper dir. The first: a
#: changed config, a new directory, a deleted squashfs file (an old-style whiteout); the
#: second: 100 KiB that do not compress (two erase blocks), a file more, the first one's new
#: file deleted, a symlink; the volatile: a new config, a deleted squashfs config.
OLD_SNAPSHOTS = [
    {"etc": ("dir",), "etc/config": ("dir",),
     "etc/config/network": "config interface 'lan'\n\toption proto 'dhcp'\n",
     "etc/added": ("dir",), "etc/added/file": "added\n", "etc/banner": ("whiteout",)},
    {"etc": ("dir",), "etc/blob": ("dir",),
     "etc/blob/data": hashlib.sha512(b"seed").digest() * (100 * KIB // 64),
     "etc/added": ("dir",), "etc/added/more": "more\n", "etc/added/file": ("whiteout",),
     "etc/system-link": ("link", "config/system")},
]
OLD_VOLATILE = {"etc": ("dir",), "etc/config": ("dir",),
                "etc/config/system": "config system\n\toption hostname 'old-tool'\n",
                "etc/config/firewall": ("whiteout",)}

#: The view the stock boot gives of the old chain: the snapshots in seq order, the volatile on
#: top, every old-style whiteout a deletion.
OLD_SHOW = ("uci get network.lan.proto; uci get system.@system[0].hostname; "
            "cat /etc/added/more; readlink /etc/system-link; sha256sum /etc/blob/data; "
            "for f in /etc/banner /etc/added/file /etc/config/firewall; do "
            "test -e $f && echo $f; done; true")
OLD_BOOT = "holds the old fstools snapshot chain, not converted: booting it read-only"


@pytest.fixture(scope="module")
def old_chain_boot(root, tmp_path_factory):
    """The flash as the old tool left it: the two snapshots from block 0, the volatile only
    in its sentinel copy at the partition's end (its first copy erased), each MD5 as the
    tool on a little-endian router stores it. The router's first boot on it is yielded."""
    work = tmp_path_factory.mktemp("router-legacy")
    geometry = Geometry(FlashType.NOR, FLASH_SIZE, 64 * KIB, 1, 0)
    tool = OldTool(work / "flash.img", geometry)
    where = tool.chain([archive(s) for s in OLD_SNAPSHOTS], archive(OLD_VOLATILE),
                       first_copy=False)
    assert where["snapshots"] == [0, 1] and where["sentinel"] > 100, where
    with Router(root, work / "flash.img", work / "console-old.log") as router:
        router.written = hashlib.md5((work / "flash.img").read_bytes()).hexdigest()
        yield settled(router)


def test_the_old_chain_boots_read_only_with_the_stock_view(old_chain_boot):
    router = old_chain_boot
    log = router.check("dmesg | grep 'snapshot: '")
    assert OLD_BOOT in log, log
    assert ("snapshot: mounted 2 snapshots and the volatile of the old fstools chain "
            "(read-only)") in log, log
    expected_blob = hashlib.sha256(OLD_SNAPSHOTS[1]["etc/blob/data"]).hexdigest()
    assert router.check(OLD_SHOW) == (f"dhcp\nold-tool\nmore\nconfig/system\n"
                                      f"{expected_blob}  /etc/blob/data\n")


def test_a_save_on_the_old_chain_is_refused_and_nothing_is_written(old_chain_boot):
    router = old_chain_boot
    rc, output = router.sh("echo new > /etc/new && snapshot save", 180)
    assert rc != 0 and "run `snapshot convert` first" in output, output
    flash = router.check("md5sum < /dev/mtd0").split()[0]
    assert flash == router.written


@pytest.fixture(scope="module")
def converted_old_chain(old_chain_boot, root):
    router = old_chain_boot
    shown = router.check(OLD_SHOW)
    router.send("snapshot convert\n")
    router.expect("snapshot convert: converted; rebooting into the chain", 600)
    router.wait_exit(120)
    work = router.console_log.parent
    with Router(root, work / "flash.img", work / "console-converted.log") as after:
        after.shown = shown
        yield settled(after)


def test_the_converted_old_chain_boots_the_same_view(converted_old_chain):
    router = converted_old_chain
    log = router.check("dmesg | grep 'snapshot: '")
    assert "snapshot: mounted 2 snapshots and the volatile record" in log, log
    assert router.check(OLD_SHOW) == router.shown
    listing = router.check("snapshot list", 180)
    assert f"imported: old snapshot seq {FIRST_SEQ}" in listing
    assert f"imported: old snapshot seq {FIRST_SEQ + 1}" in listing
    router.check("snapshot check", 300)
