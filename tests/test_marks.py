"""The stock tools' marks win over the chain (DESIGN.md §11, FORMAT.md §2-3, §6).

Each test writes exactly the bytes a stock OpenWrt tool writes at the start of rootfs_data
over a chain whose newest anchor entry sits in one of the anchor blocks, then boots:
- fstools `factoryreset -y` / `firstboot` (libfstools `jffs2_mark`): big-endian 0xdeadc0de over
  the first 4 bytes, through /dev/mtdblockN, which reads the whole first block, erases it and
  writes it back (../shared/reference/openwrt-tools.md, "fstools");
- a sysupgrade image without settings: its last word, 0xdeadc0de, lands at the start of
  rootfs_data; `mtd write` erases the block first, so the rest of it reads erased;
- a sysupgrade keeping settings (`mtd -j sysupgrade.tgz`): a small jffs2 holding
  sysupgrade.tgz there instead, made here with mkfs.jffs2 (mtd-utils).
"""
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clirun import ok, run
from mtd import SimFlash
from snapshot import operations
from snapshot.errors import NoChain, StockMark
from snapshot.store import marks
from snapshot.store.chain import DEADC0DE, MARK_ENTRY, Chain, commit, read_mark, scan_anchors
from snapshot.store.format import ANCHOR_BLOCKS, ANCHOR_MAGIC, Anchor
from sweep import BOOT, GEOMETRIES, make_tree, run_cli, visible
from test_boot import boot, make_rootfs
from test_overlayfs import namespaces  # noqa: F401  (the tier-2 availability fixture)

NEWEST_IN = range(ANCHOR_BLOCKS)


def text_tree(root: Path, name: str) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / name).write_text(f"{name}\n")
    return root


def chain_with_newest_in(image: Path, geometry: str, block: int, work: Path,
                         text: bool = False) -> tuple:
    """Two snapshots and a volatile record, the newest anchor entry in anchor block `block`.
    Block 0 holds it only in a chain written before format 3, whose commits also appended
    to block 0: made here by appending the entry there the way that writer did."""
    g, bad = GEOMETRIES[geometry]
    SimFlash.create(image, g, bad_blocks=bad)
    ok(image, "format")
    trees = ([text_tree(work / n, n) for n in "abc"] if text else
             [make_tree(work / "a", 1, 20), make_tree(work / "b", 2, 20),
              make_tree(work / "c", 3, 4)])
    ok(image, "push", "--from", str(trees[0]), "-m", "one")
    ok(image, "push", "--from", str(trees[1]), "-m", "two")
    ok(image, "save", "--from", str(trees[2]))
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        entries = [r.entry for r in chain.records]
        if block == 0:
            mark = chain.scan.blocks[0]
            data = Anchor(chain.next_gen(), tuple(entries)).pack()
            data += b"\xff" * (-len(data) % g.writesize)
            flash.write(g.block_offset(0) + mark.end, data)
        else:
            while chain.scan.newest.block != block:
                commit(chain, entries)
    with SimFlash(image) as flash:
        assert scan_anchors(flash).newest.block == block
    state = visible(str(image))
    assert state != "no chain" and len(state[3]) == 2
    return state


def factoryreset(image: Path) -> None:
    """jffs2_mark through mtdblock: read block 0, erase it, write it back with 0xdeadc0de."""
    with SimFlash(image, writable=True) as flash:
        g = flash.geometry
        data = DEADC0DE + flash.read(0, g.erasesize)[4:]
        flash.erase(0, g.erasesize)
        flash.write(0, data)


def sysupgrade_without_settings(image: Path) -> None:
    with SimFlash(image, writable=True) as flash:
        g = flash.geometry
        flash.erase(0, g.erasesize)
        flash.write(0, DEADC0DE + b"\xff" * (max(g.writesize, 4) - 4))


def sysupgrade_with_settings(image: Path, work: Path) -> bytes:
    """A jffs2 holding sysupgrade.tgz, written from block 0 on, skipping bad blocks as
    `mtd` does. Returns the settings archive."""
    if shutil.which("mkfs.jffs2") is None:
        pytest.fail("mkfs.jffs2 (mtd-utils) is missing: scripts/test.sh installs it")
    settings = io.BytesIO()
    with tarfile.open(fileobj=settings, mode="w:gz") as tar:
        info = tarfile.TarInfo("etc/config/network")
        body = b"config interface 'lan'\n\toption ipaddr '10.1.2.3'\n"
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    root = work / "jffs2-root"
    root.mkdir()
    (root / "sysupgrade.tgz").write_bytes(settings.getvalue())
    fs = work / "settings.jffs2"
    with SimFlash(image) as flash:
        g = flash.geometry
    nand = ["-n", f"--pagesize={g.writesize}"] if g.writesize > 1 else []
    subprocess.run(["mkfs.jffs2", "-r", str(root), "-o", str(fs), f"--eraseblock={g.erasesize}",
                    "-l", "-p", *nand], check=True, capture_output=True)
    data = fs.read_bytes()
    data += b"\xff" * (-len(data) % g.erasesize)
    with SimFlash(image, writable=True) as flash:
        block = 0
        for start in range(0, len(data), g.erasesize):
            while flash.is_bad(block):
                block += 1
            flash.erase(g.block_offset(block), g.erasesize)
            chunk = data[start:start + g.erasesize].rstrip(b"\xff")
            chunk += b"\xff" * (-len(chunk) % g.writesize)
            if chunk:
                flash.write(g.block_offset(block), chunk)
            block += 1
    return settings.getvalue()


def anchor_headers(image: Path) -> list[int]:
    """Anchor blocks other than block 0 that start with an anchor entry header."""
    with SimFlash(image) as flash:
        g = flash.geometry
        return [b for b in range(1, ANCHOR_BLOCKS) if not flash.is_bad(b)
                and flash.read(g.block_offset(b), 4) == ANCHOR_MAGIC]


def listing_records(image: Path) -> list[int]:
    """Anchor blocks whose newest entry lists any record (after a reset: none)."""
    with SimFlash(image) as flash:
        return [b.block for b in scan_anchors(flash).blocks
                if b.newest is not None and any(e.type in (1, 2) for e in b.newest.records)]


def erase_block_0(image: Path) -> None:
    """What jffs2's garbage collector may do to block 0 later on."""
    with SimFlash(image, writable=True) as flash:
        flash.erase(0, flash.geometry.erasesize)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("newest", NEWEST_IN)
@pytest.mark.parametrize("tool", ["factoryreset", "sysupgrade"])
def test_a_reset_mark_gives_an_empty_chain_never_the_old_one(tool, newest, geometry, tmp_path):
    image = tmp_path / "flash.img"
    chain_with_newest_in(image, geometry, newest, tmp_path)
    (factoryreset if tool == "factoryreset" else sysupgrade_without_settings)(image)
    # Until the boot acts on it, the mark wins: nothing reads or writes the old chain.
    with SimFlash(image) as flash, pytest.raises(StockMark):
        Chain(flash)
    result = run(image, "push", "--from", str(make_tree(tmp_path / "late", 4, 1)))
    assert result.exit_code == 1 and "0xdeadc0de" in result.output
    assert result.output.count("\n") == 1
    # The boot turns it into an empty chain.
    assert run(image, "probe").exit_code == 0
    assert visible(str(image)) == ((), (), None, (), {}, None)
    assert ok(image, "check").strip() == "clean"
    assert listing_records(image) == []
    # And the empty chain is a chain like any other.
    ok(image, "push", "--from", str(make_tree(tmp_path / "new", 5, 2)), "-m", "after reset")
    assert visible(str(image))[3] == ((1, "after reset"),)


def reset_cut_after_its_anchor_entry(image: Path) -> None:
    """What the boot's reset leaves when a cut comes right after it programmed its anchor
    entry (DESIGN.md §11, "Reset, step by step", step k): 0xdeadc0de still in the mark
    block, every other anchor block erased, then, in the first of them, an entry listing no
    record, with a mark entry, its generation above every entry and record seen. The sweep
    never leaves exactly this: its cut tears an operation, here the mark block's erase."""
    with SimFlash(image, writable=True) as flash:
        g = flash.geometry
        scan = scan_anchors(flash)
        gen = max([scan.max_gen] + [e.gen for e in scan.newest.newest.records])
        others = [b.block for b in scan.blocks if not b.bad and b.block != 0]
        for block in others:
            flash.erase(g.block_offset(block), g.erasesize)
        data = Anchor(gen + 1, (MARK_ENTRY,)).pack()
        flash.write(g.block_offset(others[0]), data + b"\xff" * (-len(data) % g.writesize))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_reset_mark_over_the_resets_own_pending_entry_still_gives_an_empty_chain(geometry,
                                                                                  tmp_path):
    """The mark entry there is the reset's own, and the mark has not been rewritten yet: the
    mark still wins (nothing opens a chain), and the boot finishes the reset into an empty
    chain; it never leaves the partition to the stock mount_root, whose jffs2 would take it
    over for good."""
    image = tmp_path / "flash.img"
    chain_with_newest_in(image, geometry, 2, tmp_path)
    factoryreset(image)
    reset_cut_after_its_anchor_entry(image)
    with SimFlash(image) as flash:
        scan = scan_anchors(flash)
        assert read_mark(flash, scan).kind == "deadc0de"
        assert scan.newest.block == 1 and scan.newest.newest.records == (MARK_ENTRY,)
        with pytest.raises(StockMark):
            Chain(flash)
        assert marks.decide(flash) == (marks.CHAIN, "reset")
    result = run(image, "list")
    assert result.exit_code == 1 and "0xdeadc0de" in result.output
    assert run(image, "probe").exit_code == 0
    assert visible(str(image)) == ((), (), None, (), {}, None)
    assert ok(image, "check").strip() == "clean"
    with SimFlash(image) as flash:
        assert read_mark(flash, scan_anchors(flash)).kind == "anchor"


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("newest", NEWEST_IN)
def test_a_sysupgrade_that_kept_settings_leaves_jffs2_and_voids_the_chain(newest, geometry,
                                                                          tmp_path):
    image = tmp_path / "flash.img"
    chain_with_newest_in(image, geometry, newest, tmp_path)
    sysupgrade_with_settings(image, tmp_path)
    with SimFlash(image) as flash:
        assert read_mark(flash, scan_anchors(flash)).kind == "jffs2"
        jffs2 = flash.read(0, flash.geometry.erasesize)
        with pytest.raises(StockMark):
            Chain(flash)
    assert run(image, "probe").exit_code == 1
    # The chain's anchor blocks are erased; jffs2's block is untouched.
    assert anchor_headers(image) == []
    with SimFlash(image) as flash:
        assert flash.read(0, flash.geometry.erasesize) == jffs2
    assert run(image, "probe").exit_code == 1
    # jffs2 erasing its first block later brings nothing back.
    erase_block_0(image)
    assert run(image, "probe").exit_code == 1
    assert visible(str(image)) == "no chain"


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("newest", [1, 3])
def test_a_sysupgrade_cut_after_its_erase_brings_no_old_chain_back(newest, geometry, tmp_path):
    image = tmp_path / "flash.img"
    chain_with_newest_in(image, geometry, newest, tmp_path)
    erase_block_0(image)
    with SimFlash(image) as flash, pytest.raises(NoChain, match="mark block"):
        Chain(flash)
    assert run(image, "probe").exit_code == 1
    assert anchor_headers(image) == []


def test_a_chain_is_refused_to_writers_while_the_mark_is_there(tmp_path):
    image = tmp_path / "flash.img"
    chain_with_newest_in(image, "nand", 2, tmp_path)
    factoryreset(image)
    for args in (["save", "--from", str(tmp_path / "c")], ["rollback"], ["confirm"],
                 ["list"], ["check", "--repair"]):
        result = run(image, *args)
        assert result.exit_code != 0 and "Traceback" not in result.output, args
        assert "written by a stock tool" in result.output, args
    with SimFlash(image) as flash:
        assert flash.read(0, 4) == DEADC0DE


def test_format_refuses_jffs2_without_force_and_replaces_it_with_force(tmp_path):
    image = tmp_path / "flash.img"
    g, bad = GEOMETRIES["nor"]
    SimFlash.create(image, g, bad_blocks=bad)
    sysupgrade_with_settings(image, tmp_path)
    result = run(image, "format")
    assert result.exit_code == 1 and "jffs2" in result.output
    ok(image, "format", "--force")
    assert visible(str(image)) == ((), (), None, (), {}, None)
    with SimFlash(image) as flash:
        assert read_mark(flash, scan_anchors(flash)).kind == "anchor"


# -- power cuts ------------------------------------------------------------------------------

def _operations(image: Path) -> int:
    with SimFlash(image) as flash:
        stats = flash.stats()
        return stats.programs + stats.erases


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    shutil.copyfile(f"{source}.sim.json", f"{target}.sim.json")
    return target


def _sweep(base: Path, args: list[str], work: Path) -> tuple:
    """Run `args` on copies of base, cut after its 1st, 2nd, ... operation; yields each cut
    image. Returns the operation count and the uncut result's visible state."""
    done = _copy(base, work / "done.img")
    before = _operations(done)
    run_cli(str(done), args)
    return _operations(done) - before, visible(str(done)), done


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_power_cuts_during_a_reset_leave_the_mark_or_the_empty_chain(geometry, tmp_path):
    """Cut after every operation of the boot's reset; the state is then "no chain" (the mark
    still wins) or the empty chain, never the old one; and the next boot ends in the empty
    chain, also when it is cut again."""
    base = tmp_path / "base.img"
    old = chain_with_newest_in(base, geometry, 2, tmp_path)
    factoryreset(base)
    count, new, _ = _sweep(base, ["probe"], tmp_path)
    assert new == ((), (), None, (), {}, None) and count >= 3
    for cut in range(1, count + 1):
        image = _copy(base, tmp_path / f"cut{cut}.img")
        assert run_cli(str(image), ["probe"], cut=cut).returncode == 99
        state = visible(str(image))
        assert state in ("no chain", new) and state != old, f"cut {cut}: {state}"
        again = run_cli(str(image), ["probe"], cut=1)
        assert again.returncode in (0, 99)
        assert visible(str(image)) in ("no chain", new), f"cut {cut}, cut again"
        # The next boot: probe, then the writes mount makes before it mounts anything.
        assert run_cli(str(image), ["probe"]).returncode == 0
        assert run_cli(str(image), [], runner=BOOT).returncode == 0
        assert run_cli(str(image), ["check"]).returncode == 0
        assert visible(str(image)) == new, f"cut {cut}: the next boot did not finish"


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_power_cuts_during_a_void_never_let_the_chain_back(geometry, tmp_path):
    """A convert cut between its commit and its switch leaves jffs2 in block 0 and the new
    chain, with a mark entry, in another anchor block; the boot voids it. Cut after every
    operation of that void: jffs2 still wins; the next boot finishes the void, after which
    even an erased block 0 brings nothing back."""
    base = tmp_path / "base.img"
    chain_with_newest_in(base, geometry, 1, tmp_path)
    sysupgrade_with_settings(base, tmp_path)
    with SimFlash(base, writable=True) as flash:
        chain = Chain(flash, over_mark=True)
        commit(chain, [r.entry for r in chain.records])      # carries a mark entry
    count, new, _ = _sweep(base, ["probe"], tmp_path)
    assert new == "no chain" and count >= 2
    for cut in range(1, count + 1):
        image = _copy(base, tmp_path / f"cut{cut}.img")
        assert run_cli(str(image), ["probe"], cut=cut).returncode == 99
        assert visible(str(image)) == "no chain", f"cut {cut}"
        assert run_cli(str(image), ["probe"]).returncode == 1
        erase_block_0(image)
        assert visible(str(image)) == "no chain", f"cut {cut}: the chain came back"


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_power_cuts_during_format_over_a_stock_mark_leave_old_or_new(geometry, tmp_path):
    base = tmp_path / "base.img"
    chain_with_newest_in(base, geometry, 3, tmp_path)
    sysupgrade_with_settings(base, tmp_path)
    count, new, _ = _sweep(base, ["format", "--force"], tmp_path)
    assert new == ((), (), None, (), {}, None)
    for cut in range(1, count + 1):
        image = _copy(base, tmp_path / f"cut{cut}.img")
        assert run_cli(str(image), ["format", "--force"], cut=cut).returncode == 99
        assert visible(str(image)) in ("no chain", new), f"cut {cut}"
        run_cli(str(image), ["check", "--repair"])
        assert visible(str(image)) in ("no chain", new), f"cut {cut}, after a repair"


# -- booting ---------------------------------------------------------------------------------

def test_a_boot_after_a_factory_reset_is_the_squashfs_and_an_empty_chain(namespaces, tmp_path):
    rootfs = make_rootfs(tmp_path)
    image = tmp_path / "flash.img"
    chain_with_newest_in(image, "nand", 3, tmp_path, text=True)
    before = boot(rootfs, image, tmp_path)
    assert before["rc"] == 0 and {"etc/a", "etc/b", "etc/c"} <= set(before["files"])
    factoryreset(image)
    after = boot(rootfs, image, tmp_path, write={"etc/x": "1\n"},
                 commands=[["save", "--from", "$T/volatile/upper"], ["list", "--json"]])
    assert after["rc"] == 0, after["log"]
    assert "started an empty chain" in after["log"]
    assert set(after["files"]) == {"etc/config/system", "etc/banner", "etc/config/network",
                                   "bin/tool"}
    assert [rc for rc, _ in after["commands"]] == [0, 0], after["commands"]
    again = boot(rootfs, image, tmp_path)
    assert again["files"]["etc/x"] == "1\n"
    assert set(again["files"]) - set(after["files"]) == {"etc/x"}


def test_a_boot_after_a_sysupgrade_that_kept_settings_is_not_the_chain(namespaces, tmp_path):
    rootfs = make_rootfs(tmp_path)
    image = tmp_path / "flash.img"
    chain_with_newest_in(image, "nor", 2, tmp_path, text=True)
    sysupgrade_with_settings(image, tmp_path)
    result = boot(rootfs, image, tmp_path)
    # snapshot leaves the partition to the stock mount_root (exit 6, nothing mounted),
    # having erased the chain's anchor blocks, so no old chain comes back over it.
    assert result["rc"] == 6
    assert result["mounts"] == {"rom": False, "overlay": False, "volatile": False}
    assert anchor_headers(image) == []


# -- preinit keeps the stock config restore --------------------------------------------------

def test_preinit_restores_the_settings_a_sysupgrade_kept(namespaces, tmp_path):
    """The stock mount_root moves sysupgrade.tgz to /; 81_snapshot's do_mount_root (which
    replaces base-files' one) must unpack it and keep the new firmware's extra accounts."""
    busybox = shutil.which("busybox")
    if busybox is None or "static" not in subprocess.run(
            ["file", "-L", busybox], capture_output=True, text=True).stdout:
        busybox = "/bin/busybox"
    root = tmp_path / "root"
    for d in ("bin", "etc/config", "tmp", "lib/preinit", "dev", "proc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin/busybox")
    for applet in ("sh", "tar", "gzip", "awk", "cp", "rm", "sync", "cat", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/ash\n"
                                     "ubus:x:81:81:ubus:/var/run/ubus:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nubus:x:81:ubus\n")
    (root / "etc/shadow").write_text("root:::0:99999:7:::\nubus:*:0:0:99999:7:::\n")
    kept = tmp_path / "kept"
    (kept / "etc/config").mkdir(parents=True)
    (kept / "etc/config/network").write_text("kept network\n")
    (kept / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/ash\n"
                                     "admin:x:1000:1000::/home/admin:/bin/ash\n")
    subprocess.run(["tar", "czf", str(root / "sysupgrade.tgz"), "-C", str(kept), "etc"],
                   check=True)
    shutil.copy(Path(__file__).parent.parent / "initscripts/lib/preinit/81_snapshot",
                root / "lib/preinit/81_snapshot")
    script = ("mount_root() { echo stock mount_root; }; boot_run_hook() { :; }; "
              ". /lib/preinit/81_snapshot; do_mount_root")
    proc = subprocess.run(["unshare", "-m", "/usr/sbin/chroot", str(root), "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "stock mount_root" in proc.stdout
    assert (root / "etc/config/network").read_text() == "kept network\n"
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert passwd == ["root:x:0:0:root:/root:/bin/ash",
                      "admin:x:1000:1000::/home/admin:/bin/ash",
                      "ubus:x:81:81:ubus:/var/run/ubus:/bin/false"]
    assert (root / "etc/group").read_text() == "root:x:0:\nubus:x:81:ubus\n"
    assert not list((root / "tmp").iterdir())
