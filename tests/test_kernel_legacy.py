"""Kernel tier, end to end: `snapshot convert` of an old fstools chain that the real
`snapshot_tool` wrote on the router's rootfs_data (block2mtd over the flash image that
persists across boots; test_kernel_boot.py's module doc says how a boot goes).

The first boot finds an erased partition, so the stock mount_root (guest_boot/mount_root)
gives it a RAM overlay and leaves rootfs_data alone. On it, fstools' `snapshot_tool`, built
from source (scripts/setup-openwrt-tools.sh) and reached through the host tree, writes the old
chain as its front end did: two snapshots (`write`, from /tmp/snapshot.tar.gz, a tar of the
changes with old-style whiteouts, the second one spanning two erase blocks) and the volatile
(`config_write`: its first copy after them, its sentinel copy at the partition's end). The
first copy is then erased, so the volatile is found only through its sentinel copy. What the
old tool unpacks (`snapshot_tool read N`, `config_read`, into its fixed /tmp paths) is
applied the way the stock boot applies it: tar over the root, then every symlink to
`(overlay-whiteout)` removed. That view is what the converted chain must boot.

The second boot finds the old chain unconverted: the router's preinit (`snapshot mount`)
boots it read-only, with that view; a `snapshot save` is refused, and the
flash reads exactly as the first boot left it. Then `snapshot convert` on the running router
reads the old chain and hands over to the RAM stage, which imports it and reboots (qemu exits:
-no-reboot); the third boot is the chain's.
"""
import hashlib
import json
import re

from openwrt_tools import PREFIX, tool
from snapshot.store.legacy import swapped
from test_kernel_boot import GUEST, MIB, Router, assert_booted_from_chain, cli, kernel_vm, \
    report, sh, view_diff
from test_kernel_convert import cli_json, converting_boot, final
import pytest

pytestmark = pytest.mark.kernel_boot

MTD = "mtd=$(grep '\"rootfs_data\"$' /proc/mtd | cut -d: -f1)"
FIRST_SEQ = 1804289384
WHITEOUT = "'(overlay-whiteout)'"


def old_tool(results: str) -> str:
    """The shell prelude that finds the built snapshot_tool (and its libraries) through the
    host tree, and rootfs_data."""
    prefix = f"/rom/.host{PREFIX}"
    return (f"set -e; {MTD}; export LD_LIBRARY_PATH={prefix}/lib; "
            f"old={prefix}/fstools/snapshot_tool; R=/rom/.host{results}; ")


#: The old tool's front end took each snapshot as `tar czf ... *` in /volatile/upper; these
#: are those upper dirs. The first: a changed config, a new directory, a deleted squashfs
#: file (an old-style whiteout), a private file; the second: 100 KiB that do not compress
#: (two erase blocks), a file more, the first one's new file deleted, a symlink; the volatile:
#: a new config, a deleted squashfs config.
WRITE = """
u=/tmp/old
mkdir -p $u/1/etc/config $u/1/etc/added $u/2/etc/blob $u/2/etc/added $u/v/etc/config
printf "config interface 'lan'\\n\\toption proto 'dhcp'\\n" > $u/1/etc/config/network
echo added > $u/1/etc/added/file
echo private > $u/1/etc/secret && chmod 600 $u/1/etc/secret
ln -s {wo} $u/1/etc/banner
head -c 102400 /dev/urandom > $u/2/etc/blob/data
echo more > $u/2/etc/added/more
ln -s {wo} $u/2/etc/added/file
ln -s config/system $u/2/etc/system-link
printf "config system\\n\\toption hostname 'old-tool'\\n" > $u/v/etc/config/system
ln -s {wo} $u/v/etc/config/firewall
for s in 1 2; do (cd $u/$s && tar czf /tmp/snapshot.tar.gz *) && $old write; done
(cd $u/v && tar czf /tmp/config.tar.gz *) && $old config_write
sync
""".format(wo=WHITEOUT)
#: The first copy of the volatile erased: only its sentinel copy is left.
ERASE_FIRST_COPY = ('first=$("$KBOOT_PYTHON" {guest}/old_chain.py | sed -n '
                    "'s/.*\"first_copy\": \\([0-9]*\\).*/\\1/p') && "
                    "/usr/sbin/flash_erase -q /dev/$mtd $((first * 65536)) 1 && sync")
#: What the old tool unpacks, into its fixed paths (its exit statuses are block numbers), kept
#: for the host, and applied the way the stock boot applies it.
UNPACK = """
mkdir -p /tmp/snapshot
$old read 0 || true; $old read 1 || true; $old config_read || true
cp /tmp/snapshot/block0.tar.gz /tmp/snapshot/block1.tar.gz /tmp/config.tar.gz $R/
dd if=/dev/$mtd of=$R/block0-header bs=32 count=1 2>/dev/null
for a in /tmp/snapshot/block0.tar.gz /tmp/snapshot/block1.tar.gz /tmp/config.tar.gz; do
    tar xzf $a -C /
done
find / -xdev -type l | while read -r l; do
    if [ "$(readlink "$l")" = "(overlay-whiteout)" ]; then rm "$l"; fi
done
echo unpacked the old way
"""


#: Run on the old chain's own boot: a save (refused), then the partition's MD5, which the host
#: compares with the image the first boot left.
UNCONVERTED = (f"{MTD}; snapshot save 2>&1 || echo \"save refused\"; "
               "echo \"flash md5 $(md5sum < /dev/$mtd | cut -d' ' -f1)\"")


def old_chain_lines(boot) -> list[dict]:
    return [json.loads(m) for m in re.findall(r"kboot-old-chain: (\{.*\})", boot.output)]


def test_boot_an_old_chain_the_real_snapshot_tool_wrote_then_convert_it_and_boot_that(
        tmp_path):
    """Unconverted, the old chain boots read-only through the router's preinit with exactly
    the view the old tool's unpack gives: its two snapshots in seq order, the whiteouts as
    deletions, the volatile from its sentinel copy on top; nothing is written to the flash.
    The chain the RAM stage imports then boots that view too; the records say where they
    came from."""
    tool("snapshot_tool")
    router = Router(kernel_vm(), tmp_path, flash_size=8 * MIB)
    prelude = old_tool(str(router.results))
    reader = f'"$KBOOT_PYTHON" {GUEST / "old_chain.py"}'
    first = router.boot([
        report("base"),
        sh(prelude + WRITE + reader),
        sh(prelude + ERASE_FIRST_COPY.format(guest=GUEST) + " && " + reader),
        sh(prelude + UNPACK),
        report("old")])
    assert "kboot: stock mount_root: tmpfs overlay" in first.output, first.describe()
    assert "unpacked the old way" in first.output, first.describe()
    written, erased = old_chain_lines(first)
    # Block 0; blocks 1-2 (the 100 KiB); the volatile's first copy right after them.
    assert written == {"snapshots": [[0, FIRST_SEQ], [1, FIRST_SEQ + 1]], "volatile": 3,
                       "sentinel": False, "first_copy": 3, "problems": []}, written
    assert erased["sentinel"] and erased["first_copy"] is None and erased["problems"] == [] \
        and erased["volatile"] > 100, erased
    # The real tool, on this little-endian guest, stored the MD5 word by word big-endian.
    header = (router.results / "block0-header").read_bytes()
    digest = hashlib.md5((router.results / "block0.tar.gz").read_bytes()).digest()
    assert header[:4] == b"OWRT" and header[16:] == swapped(digest) != digest
    old = first.states["old"]
    assert old["chain"] is None
    view = old["view"]
    assert "etc/banner" not in view and "etc/added/file" not in view and \
        "etc/config/firewall" not in view, view_diff(view, first.states["base"]["view"])
    assert view["etc/secret"].startswith("f 600 ") and view["etc/added/more"] and \
        view["etc/system-link"] == "l config/system" and view["etc/blob/data"]
    written = hashlib.md5(router.flash.read_bytes()).hexdigest()

    unconverted = converting_boot(router, [report("boot"), sh(UNCONVERTED), final("convert")])
    log = unconverted.snapshot_log()
    assert any("holds the old fstools snapshot chain, not converted: booting it read-only"
               in line for line in log), unconverted.describe()
    assert any(line.startswith("snapshot: mounted 2 snapshots and the volatile of the old "
                               "fstools chain (read-only)") for line in log), log
    assert "kboot: stock mount_root" not in unconverted.output, unconverted.describe()
    state = unconverted.states["boot"]
    assert state["chain"] is None and state["view"] == view, view_diff(state["view"], view)
    assert "run `snapshot convert` first" in unconverted.output and "save refused" in \
        unconverted.output, unconverted.describe()
    assert f"flash md5 {written}" in unconverted.output, unconverted.describe()
    assert "snapshot convert: converted; rebooting into the chain" in unconverted.output, \
        unconverted.describe()

    converted = router.boot([report("boot"), cli("list", "--json"), cli("check")])
    assert_booted_from_chain(converted, 2, True)
    state = converted.states["boot"]
    assert state["view"] == view, view_diff(state["view"], view)
    listing = cli_json(converted, "list", "--json")
    assert [(s["seq"], s["message"], s["integrity"].startswith("damaged")) for s in listing["snapshots"]] == [
        (1, f"imported: old snapshot seq {FIRST_SEQ}", False),
        (2, f"imported: old snapshot seq {FIRST_SEQ + 1}", False)], listing
    assert listing["volatile"]["message"] == (f"imported: old volatile seq {FIRST_SEQ + 1}, "
                                              f"sentinel copy"), listing
    print(f"convert from the old chain end to end: {router.boots} boots in "
          f"{router.seconds:.0f} s")
