"""Kernel tier: the stock tools' marks on real MTD, through real reboots (DESIGN.md §11).

tests/test_marks.py writes the bytes each stock tool writes, on the simulator. Here the
tools themselves write them, on the guest's rootfs_data (block2mtd over the flash image
that persists across boots; test_kernel_boot.py's module doc says how a boot goes), over a
chain with pushed and saved data, and the router reboots:
- fstools' `factoryreset -y`, built from source (scripts/setup-openwrt-tools.sh), run on the
  running router: it finds rootfs_data in /proc/mtd and, the partition not being mounted,
  writes big-endian 0xdeadc0de over its first 4 bytes through /dev/mtdblockN;
- a sysupgrade's rewrite of the partition's first block, with mtd-utils' flash_erase and a
  write to /dev/mtdN: without settings, the image's last word, 0xdeadc0de, at the start
  of the erased block; keeping settings, a jffs2 holding sysupgrade.tgz (mkfs.jffs2).
Each boot after them is the router's own: the preinit hook's `snapshot mount` and, when it
leaves the partition to the stock way (exit 6), fstools' real mount_root (in this squashfs in place
of guest_boot/mount_root, the stand-in the other boot tests use), then preinit's restore of
the kept settings.

One router lives through all of it, five boots in order (PLANS); each test asks for the
boot it checks (StockLife.boot), so one test run alone boots only as far as it needs.
"""
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from kernel_vm import FLASH_ERASE_SIZE
from openwrt_tools import PREFIX, tool
from snapshot.store.chain import DEADC0DE
from snapshot.store.format import ANCHOR_BLOCKS, ANCHOR_MAGIC
from test_kernel_boot import GUEST, MIB, Boot, Router, assert_booted_from_chain, cli, \
    kernel_vm, life, report, sh, view_diff, write
from test_kernel_convert import cli_json

pytestmark = pytest.mark.kernel_boot

ERASE = FLASH_ERASE_SIZE
MTD = "mtd=$(grep '\"rootfs_data\"$' /proc/mtd | cut -d: -f1)"
ANCHORS = f'"$KBOOT_PYTHON" {GUEST / "anchors.py"}'
#: What a writer says about a partition a stock tool marked (`snapshot list`).
REFUSED = "snapshot list 2>&1; echo list-rc=$?"
#: The settings a sysupgrade keeps, in its sysupgrade.tgz.
KEPT_NETWORK = b"config interface 'lan'\n\toption proto 'static'\n\toption ipaddr '10.1.2.3'\n"
#: Erase blocks the settings' jffs2 covers from the partition's start.
SETTINGS_BLOCKS = 2
EMPTY = {"snapshots": [], "volatile": None}


def chain_steps(tag: str) -> list[dict]:
    """A push and a save: the chain a stock tool then writes over, its files under /etc/TAG."""
    return [write("/etc/config/network", f"config interface 'lan' # {tag}\n"),
            write(f"/etc/{tag}/pushed", "pushed\n"), cli("push", "-m", tag),
            write(f"/etc/{tag}/saved", "saved\n"), cli("save"),
            report(tag), sh(ANCHORS)]


def sysupgrade(image: str, blocks: int) -> dict:
    """What sysupgrade's `mtd write` does to rootfs_data's first blocks: erase, then write
    the image's bytes from the partition's start."""
    return sh(f"{MTD}; /usr/sbin/flash_erase -q /dev/$mtd 0 {blocks} && "
              f"dd if={image} of=/dev/$mtd bs={ERASE} 2>&1")


def plans(guest_results: str) -> list[tuple[list[dict], dict]]:
    """Each boot's plan and Router.start options. guest_results: the results directory (the
    host's, shared) as the router's root reaches it."""
    factoryreset = sh(f"{MTD}; dd if=/dev/$mtd of={guest_results}/block0-before bs={ERASE} "
                      f"count=1 2>&1 && factoryreset -y && dmesg | grep 'factoryreset: '")
    return [
        # 1: the old chain, then the real factoryreset on the running router.
        (chain_steps("before-reset") + [factoryreset, sh(ANCHORS), sh(REFUSED)],
         {"format": True}),
        # 2: the boot after it; a save on the empty chain.
        ([report("boot"), cli("list", "--json"), write("/etc/after-reset", "after reset\n"),
          cli("save"), report("saved")], {}),
        # 3: the save came back; a new chain, then a sysupgrade without settings.
        ([report("boot")] + chain_steps("before-sysupgrade")
         + [sysupgrade(f"{guest_results}/deadc0de.img", 1), sh(ANCHORS)], {}),
        # 4: the boot after it; a new chain, then a sysupgrade that keeps settings.
        ([report("boot"), cli("list", "--json")] + chain_steps("before-keep")
         + [sysupgrade(f"{guest_results}/settings.jffs2", SETTINGS_BLOCKS), sh(ANCHORS)], {}),
        # 5: the boot after it, the stock way.
        ([report("boot"), sh("dmesg | grep -e 'mount_root: ' -e 'snapshot: '"), sh(REFUSED)],
         {}),
    ]


def install_fstools(router: Router) -> None:
    """The router's squashfs with fstools' factoryreset and mount_root, the real ones, as
    /sbin/factoryreset and /sbin/mount_root. They and their libraries live together in
    /lib/fstools: the build links them with RUNPATH $ORIGIN (and the build's prefix, which
    the router's root does not have), so the symlinks in /sbin find them there. preinit
    gets PREINIT=1, which procd gives it on a router: mount_root does nothing without it
    (and fstools then log to the kernel log, which the plans read with dmesg)."""
    tree = router.tree
    fstools = tree / "lib/fstools"
    fstools.mkdir()
    for source in (tool("factoryreset"), tool("mount_root"),
                   tool("mount_root").parent / "libfstools.so", PREFIX / "lib/libubox.so"):
        shutil.copy(source, fstools / source.name)
    (tree / "sbin/mount_root").unlink()
    for name in ("factoryreset", "mount_root"):
        (tree / "sbin" / name).symlink_to(f"/lib/fstools/{name}")
    (tree / "lib/preinit/00_procd").write_text(
        "# /lib/preinit/00_procd of the stock-marks test root: procd runs /etc/preinit with\n"
        "# PREINIT=1 in its environment.\nexport PREINIT=1\n")
    subprocess.run(["mksquashfs", str(tree), str(router.squashfs), "-noappend", "-quiet",
                    "-all-root"], check=True, capture_output=True)


def settings_jffs2(work: Path) -> dict[str, bytes]:
    """What sysupgrade keeping settings writes at rootfs_data's start (`mtd -j`): a jffs2
    holding sysupgrade.tgz, in work/settings.jffs2. The settings are a network config and
    an incompressible file that makes the jffs2 two erase blocks long, so it covers anchor
    block 1 too. Returns the files the router's root then holds: the settings and
    sysupgrade.tgz."""
    if shutil.which("mkfs.jffs2") is None:
        pytest.fail("mkfs.jffs2 (mtd-utils) is missing: scripts/test.sh installs it")
    files = {"etc/config/network": KEPT_NETWORK,
             "etc/kept/blob": random.Random(11).randbytes(80 * 1024)}
    settings = io.BytesIO()
    with tarfile.open(fileobj=settings, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    root = work / "jffs2-root"
    root.mkdir()
    (root / "sysupgrade.tgz").write_bytes(settings.getvalue())
    (root / "sysupgrade.tgz").chmod(0o644)
    image = work / "settings.jffs2"
    # block2mtd is NOR-like (writesize 1): no -n; cleanmarkers in every block.
    subprocess.run(["mkfs.jffs2", "-r", str(root), "-o", str(image), f"--eraseblock={ERASE}",
                    "-l", "-p"], check=True, capture_output=True)
    size = image.stat().st_size
    assert size == SETTINGS_BLOCKS * ERASE, f"the settings jffs2 takes {size} bytes"
    return {**files, "sysupgrade.tgz": settings.getvalue()}


def entry(data: bytes) -> str:
    """A regular file of mode 644 holding data, as life.manifest lists it."""
    return f"f 644 {len(data)} {hashlib.sha1(data).hexdigest()}"


class StockLife:
    """The router of this module, booted once through PLANS, as far as a test asks."""

    def __init__(self, work: Path):
        self.router = Router(kernel_vm(), work, flash_size=8 * MIB)
        install_fstools(self.router)
        self.squashfs_view = life.manifest(self.router.tree, life.NOT_FILES)
        results = self.router.results
        (results / "deadc0de.img").write_bytes(DEADC0DE)
        self.kept = settings_jffs2(results)
        self.plans = plans(f"/rom/.host{results}")
        self.boots: list[Boot] = []
        #: The flash image's anchor area after each boot.
        self.anchor_areas: list[bytes] = []
        self.failed: str | None = None

    def boot(self, n: int) -> Boot:
        """Boot n (1-based), booting the ones before it first."""
        while len(self.boots) < n:
            if self.failed:
                pytest.fail(f"an earlier boot of this router failed:\n{self.failed}",
                            pytrace=False)
            plan, options = self.plans[len(self.boots)]
            try:
                booted = self.router.boot(plan, **options)
            except AssertionError as e:
                self.failed = str(e)
                raise
            self.boots.append(booted)
            with open(self.router.flash, "rb") as f:
                self.anchor_areas.append(f.read(ANCHOR_BLOCKS * ERASE))
        return self.boots[n - 1]

    def anchor_area(self, n: int) -> bytes:
        """The anchor area of the flash image after boot n."""
        self.boot(n)
        return self.anchor_areas[n - 1]


@pytest.fixture(scope="module")
def router_life(tmp_path_factory) -> StockLife:
    return StockLife(tmp_path_factory.mktemp("stock-marks"))


def anchors(boot: Boot) -> list[dict]:
    """What each run of guest_boot/anchors.py printed, in order."""
    return [json.loads(m) for m in re.findall(r"kboot-anchors: (\{.*\})", boot.output)]


def sh_output(boot: Boot, contains: str) -> str:
    """The output of the sh step whose output holds `contains`."""
    for chunk in boot.output.split("kboot: sh: ")[1:]:
        if contains in chunk:
            return chunk
    raise AssertionError(f"no sh step printed {contains!r}\n{boot.describe()}")


def assert_empty_chain_booted(boot: Boot, stock: StockLife) -> None:
    """The boot reset the marked partition to an empty chain and booted it: the squashfs
    alone, nothing of the old chain."""
    assert any("started an empty chain" in line for line in boot.snapshot_log()), \
        boot.describe()
    assert_booted_from_chain(boot, 0, False)
    state = boot.states["boot"]
    assert state["chain"] == EMPTY, boot.describe()
    listing = cli_json(boot, "list", "--json")
    assert listing["snapshots"] == [] and listing["volatile"] is None, listing
    assert state["view"] == stock.squashfs_view, view_diff(state["view"], stock.squashfs_view)


# -- factoryreset ------------------------------------------------------------------------------

def test_the_real_factoryreset_writes_deadc0de_over_the_first_4_bytes_only(router_life):
    """fstools' factoryreset -y, on the router running a chain whose newest anchor entry is
    not in block 0: the mark block now starts with 0xdeadc0de and holds, after it, exactly
    what it held; the other anchor blocks still hold the chain, the newest entry where it
    was, and writers refuse it."""
    first = router_life.boot(1)
    (chain, marked) = anchors(first)
    assert chain["mark"] == "anchor" and chain["newest"] in range(1, ANCHOR_BLOCKS), chain
    before = (router_life.router.results / "block0-before").read_bytes()
    assert before[:4] == ANCHOR_MAGIC and len(before) == ERASE
    assert router_life.anchor_area(1)[:ERASE] == DEADC0DE + before[4:]
    # Block 0 no longer starts with an anchor entry; nothing else changed.
    assert marked == {"mark": "deadc0de", "newest": chain["newest"],
                      "headers": [b for b in chain["headers"] if b != 0]}, (chain, marked)
    log = sh_output(first, "factoryreset: ")
    assert "is not mounted" in log and "will be erased on next mount" in log, first.describe()
    refused = sh_output(first, "list-rc=")
    assert "written by a stock tool" in refused and "list-rc=0" not in refused, first.describe()


def test_the_boot_after_a_factoryreset_is_an_empty_chain(router_life):
    """Nothing of the pushed and saved state before the reset: the squashfs alone."""
    boot = router_life.boot(2)
    assert_empty_chain_booted(boot, router_life)
    assert "etc/before-reset/pushed" in router_life.boot(1).states["before-reset"]["view"]


def test_a_save_after_the_factoryreset_survives_a_reboot(router_life):
    saved = router_life.boot(2).states["saved"]
    boot = router_life.boot(3)
    assert_booted_from_chain(boot, 0, True)
    state = boot.states["boot"]
    assert state["chain"]["snapshots"] == [] and state["chain"]["volatile"] is not None
    assert state["view"] == saved["view"], view_diff(state["view"], saved["view"])
    assert state["view"]["etc/after-reset"] == entry(b"after reset\n")


# -- sysupgrade --------------------------------------------------------------------------------

def test_a_sysupgrade_without_settings_gives_an_empty_chain(router_life):
    """flash_erase and 0xdeadc0de at the start, over a chain with a snapshot and a saved
    volatile record: the next boot is an empty chain, nothing of the old one."""
    third = router_life.boot(3)
    (chain, marked) = anchors(third)
    assert chain["mark"] == "anchor" and chain["newest"] in range(1, ANCHOR_BLOCKS), chain
    assert marked["mark"] == "deadc0de" and marked["newest"] == chain["newest"], marked
    assert router_life.anchor_area(3)[:ERASE] == DEADC0DE + b"\xff" * (ERASE - 4)
    assert_empty_chain_booted(router_life.boot(4), router_life)


def test_a_sysupgrade_that_kept_settings_boots_jffs2_with_them_through_the_real_mount_root(
        router_life):
    """A jffs2 holding sysupgrade.tgz over the first two blocks, over a chain with data:
    the boot erases the chain's anchor blocks jffs2 did not take (not jffs2's block 1) and
    leaves the partition to fstools' mount_root, which mounts the jffs2 as the overlay;
    preinit unpacks the kept settings. The root is the squashfs with the kept files,
    nothing of the old chain."""
    fourth = router_life.boot(4)
    (chain, marked) = anchors(fourth)
    assert chain["mark"] == "anchor" and chain["newest"] in range(1, ANCHOR_BLOCKS), chain
    # jffs2 now fills the first SETTINGS_BLOCKS blocks; the chain's later anchor blocks
    # still hold it.
    assert marked["mark"] == "jffs2", marked
    assert marked["headers"] == [b for b in chain["headers"] if b >= SETTINGS_BLOCKS], \
        (chain, marked)
    settings = (router_life.router.results / "settings.jffs2").read_bytes()
    assert router_life.anchor_area(4)[:len(settings)] == settings

    boot = router_life.boot(5)
    # snapshot left it to the stock way, with the chain's anchor blocks erased ...
    assert any("erased the chain's anchor blocks" in line and "booting the stock way" in line
               for line in boot.snapshot_log()), boot.describe()
    voided = router_life.anchor_area(5)
    assert [b for b in range(1, ANCHOR_BLOCKS)
            if voided[b * ERASE:b * ERASE + 4] == ANCHOR_MAGIC] == [], "a chain anchor is left"
    # ... and the real mount_root mounted the jffs2 (the stand-in says so on stdout; it is
    # not in this squashfs), then preinit restored the settings.
    assert "kboot: stock mount_root" not in boot.output, boot.describe()
    assert "kboot: preinit_mount_root ran; / is overlayfs:/overlay overlay" in boot.output, \
        boot.describe()
    log = sh_output(boot, "mount_root: ")
    assert "switching to jffs2 overlay" in log, boot.describe()
    assert "snapshot: restoring the settings a sysupgrade kept" in log, boot.describe()
    state = boot.states["boot"]
    assert state["chain"] is None
    assert state["mounts"] == {"/": "overlay", "/rom": "squashfs", "/overlay": "jffs2",
                               "/volatile": None, "/tmp": "tmpfs"}, state["mounts"]
    want = {**router_life.squashfs_view, "etc/kept": "d 755",
            **{name: entry(data) for name, data in router_life.kept.items()}}
    assert state["view"] == want, view_diff(state["view"], want)
    refused = sh_output(boot, "list-rc=")
    assert "written by a stock tool" in refused and "list-rc=0" not in refused, boot.describe()
    router = router_life.router
    print(f"stock marks on real MTD: {router.boots} boots in {router.seconds:.0f} s")
