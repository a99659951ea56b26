"""`snapshot convert` from the old fstools chain (2014, `OWRT`): reading it (FORMAT.md §8) and
converting it in place, power-cut safe (DESIGN.md §9), on NOR and NAND simulator images
written from the documented format (tests/old_chain.py), which the real `snapshot_tool` lays out
byte for byte (tests/test_kernel_snapshot_tool.py). The real router boots and converts such a
chain: tests/test_router_convert.py."""
import io
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clirun import invoke
from mtd import FlashType, Geometry, SimFlash
from old_chain import (CONF, DATA, FIRST_SEQ, MAX_LENGTH, RAND0, OldTool, archive, chain_view,
                       old_view, stock_boot)
from snapshot import convert, operations, reboot
from snapshot.store import legacy, marks
from snapshot.store.chain import Chain
from snapshot.store.format import ANCHOR_MAGIC
from snapshot.tree import archive as records
from sweep import CHECKED, GEOMETRIES, run_cli, visible

MIB = 1 << 20
#: The squashfs below the overlay, as tree() lists it.
LOWER = {"etc": ("dir", 0o755), "etc/banner": ("file", 0o644, "b" * 64),
         "etc/config": ("dir", 0o755), "etc/config/firewall": ("file", 0o644, "f" * 64),
         "etc/config/network": ("file", 0o644, "n" * 64)}
SNAPSHOT_1 = {"etc": ("dir",), "etc/config": ("dir",), "etc/config/network": "lan 1\n",
              "etc/banner": ("whiteout",), "etc/added": ("dir",), "etc/added/file": "1\n",
              "etc/added/pipe": ("fifo",)}
SNAPSHOT_3 = {"etc": ("dir",), "etc/config": ("dir",), "etc/config/network": "lan 3\n",
              "etc/added": ("whiteout",), "etc/link": ("link", "config/network")}
VOLATILE = {"etc": ("dir",), "etc/config": ("dir",), "etc/config/system": "host\n",
            "etc/config/firewall": ("whiteout",)}


def big(seed: int, kib: int) -> dict:
    """A snapshot holding an incompressible file (and a hardlink to it): its entry spans
    blocks."""
    blob = random.Random(seed).randbytes(kib * 1024)
    return {"usr": ("dir",), "usr/lib": ("dir",), "usr/lib/blob": blob,
            "usr/lib/same": ("hardlink", "usr/lib/blob")}


def old_image(tmp_path: Path, geometry: str, snapshots: list[dict], volatile=VOLATILE,
              little_endian: bool = True, **options) -> tuple[Path, OldTool, list[bytes], dict]:
    g, bad = GEOMETRIES[geometry]
    image = tmp_path / "flash.img"
    tool = OldTool(image, g, bad, little_endian)
    archives = [archive(spec) for spec in snapshots] + ([archive(volatile)] if volatile else [])
    where = tool.chain(archives[:len(snapshots)], archives[len(snapshots)] if volatile else None,
                       **options)
    return image, tool, archives, where


def read(image: Path) -> legacy.OldChain:
    with SimFlash(image) as flash:
        return legacy.read(flash)


def payloads(image: Path) -> tuple:
    """The payloads convert would import: the snapshots', the volatile's."""
    with SimFlash(image) as flash:
        old = legacy.read(flash)

        def data(entry):
            reader = legacy.Payload(flash, entry)
            return reader.read()
        return (tuple(data(e) for e in old.snapshots),
                None if old.volatile is None else data(old.volatile))


#: Snapshot lists whose old entries fill the anchor area in each way (the volatile comes
#: right after them): a free anchor block left; the volatile's first copy in block 3; every
#: anchor block a snapshot's.
LAYOUTS = {
    "anchor-free": lambda g: [SNAPSHOT_1, big(2, 10)],
    "volatile-block": lambda g: [SNAPSHOT_1, big(2, g.erasesize * 3 // 2 // 1024)],
    "window": lambda g: [SNAPSHOT_1, big(2, 10), SNAPSHOT_3, big(4, 20)],
}


# -- reading -----------------------------------------------------------------------------------

@pytest.mark.parametrize("little_endian", [True, False], ids=["md5-le-writer", "md5-be-writer"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_old_chain_is_read_in_seq_order_multi_block_entries_whole(tmp_path, geometry,
                                                                        little_endian):
    g, _ = GEOMETRIES[geometry]
    snapshots = [SNAPSHOT_1, big(2, g.erasesize * 3 // 2 // 1024), SNAPSHOT_3]
    image, tool, archives, where = old_image(tmp_path, geometry, snapshots,
                                             little_endian=little_endian)
    old = read(image)
    assert [e.seq for e in old.snapshots] == [FIRST_SEQ, FIRST_SEQ + 1, FIRST_SEQ + 2]
    assert [e.block for e in old.snapshots] == where["snapshots"] == [0, 1, 3]
    assert old.volatile.block == where["first_copy"] and not old.from_sentinel
    assert old.problems == []
    assert payloads(image) == (tuple(archives[:3]), archives[3])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_volatile_with_no_first_copy_is_found_through_its_sentinel(tmp_path, geometry):
    image, tool, archives, where = old_image(tmp_path, geometry, [SNAPSHOT_1],
                                             first_copy=False)
    old = read(image)
    assert old.from_sentinel and old.volatile.block == where["sentinel"]
    assert old.first_copy is None and old.problems == []
    assert payloads(image)[1] == archives[1]


def test_a_damaged_first_copy_gives_way_to_the_sentinel(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    rotten = bytearray(archives[1])
    rotten[len(rotten) // 2] ^= 0x20
    tool.entry(where["first_copy"], CONF, FIRST_SEQ, bytes(rotten), md5=read(image).volatile.md5)
    old = read(image)
    assert old.from_sentinel and old.first_fault == "damaged, its MD5 does not match"
    assert payloads(image)[1] == archives[1]


def test_a_stale_volatile_is_not_imported(tmp_path):
    """Its seq is not the last snapshot's: the old tool pushed a snapshot since (over the
    first copy) and would drop the sentinel copy at its next boot."""
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1], first_copy=False)
    tool.entry(1, DATA, FIRST_SEQ + 1, archive(SNAPSHOT_3))
    old = read(image)
    assert len(old.snapshots) == 2 and old.volatile is None
    assert old.problems == [f"the old volatile at block {where['sentinel']} (seq {FIRST_SEQ}), "
                            f"the volatile's sentinel copy, is stale (its seq is not the last "
                            f"old snapshot's, {FIRST_SEQ + 1}); not imported"]


def test_a_chain_of_only_a_volatile_is_read(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [])
    old = read(image)
    assert old.snapshots == [] and old.volatile.block == 0 and old.volatile.seq == RAND0


def test_a_bad_md5_ends_the_import_at_the_last_good_entry(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1, SNAPSHOT_3,
                                                               big(2, 10)])
    with open(image, "r+b") as f:       # one payload byte of the second entry, as rot would
        f.seek(GEOMETRIES["nor"][0].block_offset(1) + 40)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    old = read(image)
    assert [e.seq for e in old.snapshots] == [FIRST_SEQ] and old.volatile is None
    assert old.problems == [
        f"block 1: old snapshot 2 (seq {FIRST_SEQ + 1}) is damaged, its MD5 does not match: "
        f"the import ends at the one before it (seq {FIRST_SEQ})",
        f"the old volatile at block 15 (seq {FIRST_SEQ + 2}), the volatile, is not imported: "
        f"it builds on the old snapshots left out"]


@pytest.mark.parametrize("kind,length,why", [
    (DATA, 0, "a broken header (length 0, at most 9863168)"),
    (DATA, MAX_LENGTH + 1, f"a broken header (length {MAX_LENGTH + 1}, at most 9863168)"),
    (DATA, 0xFFFFFFF0, "a broken header (length 4294967280, at most 9863168)"),
    (0x4A554E4B, 100, "a broken header (type 0x4a554e4b)"),
    (DATA, 960 * 1024, "truncated: its 983040 bytes run past the end of the partition"),
], ids=["length-0", "length-over-the-limit", "length-absurd", "unknown-type", "truncated"])
def test_a_broken_header_or_a_truncated_entry_ends_the_import_and_never_hangs(
        tmp_path, kind, length, why):
    """The stock walk spins forever on a DATA entry of a bad length; this one stops."""
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1], volatile=None)
    tool.entry(1, kind, FIRST_SEQ + 1, archive(SNAPSHOT_3), length=length)
    tool.entry(14, DATA, FIRST_SEQ + 2, archive(SNAPSHOT_3))
    old = read(image)
    assert [e.block for e in old.snapshots] == [0]
    assert old.problems == [f"block 1: old snapshot 2 (seq {FIRST_SEQ + 1}) is damaged, {why}: "
                            f"the import ends at the one before it (seq {FIRST_SEQ})"]


def test_a_seq_gap_ends_the_chain_as_the_old_tools_walk_does(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1], volatile=None)
    tool.entry(1, DATA, FIRST_SEQ + 5, archive(SNAPSHOT_3))
    old = read(image)
    assert [e.block for e in old.snapshots] == [0]
    assert old.problems == [f"block 1: the old snapshot there has seq {FIRST_SEQ + 5}, not "
                            f"{FIRST_SEQ + 1}: the old chain ends before it, as the old tool's "
                            f"own walk does; not imported"]


def test_a_partition_of_headers_alone_is_read_in_bounded_time(tmp_path):
    """Every block starts with an OWRT header of the longest length, whose payloads are
    garbage: each is looked at once."""
    g, _ = GEOMETRIES["nor"]
    image = tmp_path / "flash.img"
    tool = OldTool(image, g)
    for block in range(g.blocks):
        tool.entry(block, DATA if block % 2 == 0 else CONF, FIRST_SEQ + block, b"x",
                   length=MAX_LENGTH)
    old = read(image)
    assert old.snapshots == [] and old.volatile is None and len(old.problems) == 2
    assert old.blocks == frozenset(range(g.blocks))


# -- converting --------------------------------------------------------------------------------

def convert_cli(image: Path, *args: str):
    return invoke("--device", str(image), "convert", "--legacy", *args)


def imported_messages(image: Path) -> list[tuple]:
    with SimFlash(image) as flash:
        return [(r.entry.type, r.entry.seq, r.entry.message) for r in Chain(flash).records]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_convert_imports_every_old_snapshot_and_the_volatile(tmp_path, geometry):
    """The converted chain boots the view the old chain booted: snapshots in order, the
    volatile on top, old-style whiteouts deleting, and each record says where it came
    from."""
    image, tool, archives, where = old_image(tmp_path, geometry,
                                             [SNAPSHOT_1, big(2, 10), SNAPSHOT_3])
    result = convert_cli(image)
    assert result.exit_code == 0, result.output
    assert result.output == (f"converted {image} from the old fstools chain: 3 snapshots (old "
                             f"seq {FIRST_SEQ}..{FIRST_SEQ + 2}) and the volatile\n")
    assert imported_messages(image) == [
        (1, 1, f"imported: old snapshot seq {FIRST_SEQ}"),
        (1, 2, f"imported: old snapshot seq {FIRST_SEQ + 1}"),
        (1, 3, f"imported: old snapshot seq {FIRST_SEQ + 2}"),
        (2, 3, f"imported: old volatile seq {FIRST_SEQ + 2}")]
    view = chain_view(image, LOWER)
    assert view == old_view(LOWER, archives)
    assert "etc/banner" not in view and "etc/added" not in view and \
        "etc/config/firewall" not in view and view["etc/config/system"][0] == "file"
    with SimFlash(image) as flash:
        assert marks.decide(flash) == (marks.CHAIN, None)
        assert operations.check(Chain(flash)).clean


def test_old_style_whiteouts_become_overlayfs_whiteouts(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    assert convert_cli(image).exit_code == 0
    with SimFlash(image) as flash:
        chain = Chain(flash)
        record = chain.snapshots[0]
        found = {entry.name.rstrip("/"): entry for _, entry in
                 records.entries(chain.payload(record), record.entry.compression)}
    assert found["etc/banner"].is_whiteout and found["etc/banner"].mode == 0
    assert sorted(found) == ["etc", "etc/added", "etc/added/file", "etc/added/pipe",
                             "etc/banner", "etc/config", "etc/config/network"]


def test_the_volatile_from_its_sentinel_says_so(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nand", [SNAPSHOT_1], first_copy=False)
    result = convert_cli(image)
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"and the volatile (its sentinel copy at block "
                                  f"{where['sentinel']}: the first copy is missing)\n")
    assert imported_messages(image)[-1] == (2, 1, f"imported: old volatile seq {FIRST_SEQ}, "
                                                  f"sentinel copy")
    assert chain_view(image, LOWER) == old_view(LOWER, archives)


def test_damage_ends_the_import_with_a_clear_report(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1, SNAPSHOT_3])
    tool.entry(1, DATA, FIRST_SEQ + 1, archive(SNAPSHOT_3), length=0)
    result = convert_cli(image)
    assert result.exit_code == 5
    assert result.output == (
        f"warning: block 1: old snapshot 2 (seq {FIRST_SEQ + 1}) is damaged, a broken header "
        f"(length 0, at most 9863168): the import ends at the one before it (seq "
        f"{FIRST_SEQ})\n"
        f"warning: the old volatile at block 15 (seq {FIRST_SEQ + 1}), the volatile, is not "
        f"imported: it builds on the old snapshots left out\n"
        f"converted {image} from the old fstools chain: 1 snapshot (old seq {FIRST_SEQ}), not "
        f"exactly: 2 things left out\n")
    assert imported_messages(image) == [(1, 1, f"imported: old snapshot seq {FIRST_SEQ}")]


def test_an_archive_that_cannot_be_read_ends_the_import_there(tmp_path):
    """Its MD5 is right (the old tool wrote it so), its gzip stream is not."""
    broken = bytearray(archive(SNAPSHOT_3))
    broken[30:60] = bytes(30)
    g, _ = GEOMETRIES["nor"]
    image = tmp_path / "flash.img"
    OldTool(image, g).chain([archive(SNAPSHOT_1), bytes(broken)], archive(VOLATILE))
    result = convert_cli(image)
    assert result.exit_code == 5, result.output
    assert f"warning: the old snapshot at block 1 (seq {FIRST_SEQ + 1}): its archive cannot " \
           f"be read: " in result.output
    assert "the import ends at the one before it, and the volatile is left out\n" in \
        result.output
    assert imported_messages(image) == [(1, 1, f"imported: old snapshot seq {FIRST_SEQ}")]


def test_entries_restore_would_refuse_are_left_out_with_a_warning(tmp_path):
    """An entry below a symlink an earlier snapshot made, a device node, a file whose
    directory no archive holds: restore refuses a record holding one, so the import leaves
    each out and keeps the rest."""
    first = {"etc": ("dir",), "etc/x": ("link", "/tmp")}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, kind in (("etc/x/escape", tarfile.REGTYPE), ("etc/kept", tarfile.REGTYPE),
                           ("dev", tarfile.DIRTYPE), ("dev/sda", tarfile.CHRTYPE),
                           ("orphan/file", tarfile.REGTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 8, 0
            tar.addfile(info, io.BytesIO(b""))
    image, tool, archives, where = old_image(tmp_path, "nor", [first], volatile=None)
    tool.entry(1, DATA, FIRST_SEQ + 1, out.getvalue())
    result = convert_cli(image)
    assert result.exit_code == 5
    where = f"warning: the old snapshot at block 1 (seq {FIRST_SEQ + 1}): archive entry"
    assert result.output.splitlines()[:3] == [
        f"{where} 'etc/x/escape' refused: 'etc/x' is a symlink in the target; left out",
        f"{where} 'dev/sda' refused: device node (only 0/0 whiteouts are allowed); left out",
        f"{where} 'orphan/file' refused: its directory 'orphan' is in no archive before it; "
        f"left out"]
    assert set(chain_view(image, {})) == {"etc", "etc/x", "etc/kept", "dev"}


def test_nothing_importable_is_refused_with_nothing_changed(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1], volatile=None)
    tool.entry(0, DATA, FIRST_SEQ, archives[0], length=0)
    before = image.read_bytes()
    result = convert_cli(image)
    assert result.exit_code == 1
    assert result.output == (f"Error: {image}: nothing of the old fstools chain can be "
                             f"imported (block 0: old snapshot 1 (seq {FIRST_SEQ}) is damaged, "
                             f"a broken header (length 0, at most 9863168): nothing before it "
                             f"to import); nothing was changed\n")
    assert image.read_bytes() == before


def test_convert_writes_no_block_an_old_entry_covers_but_block_0(tmp_path):
    """With a free anchor block: everything the old chain has on flash stays as it was until
    the switch, which erases block 0 only."""
    image, tool, archives, where = old_image(tmp_path, "nand", LAYOUTS["anchor-free"](None))
    g = tool.geometry
    with SimFlash(image) as flash:
        covered = sorted(legacy.covered(flash))
        before = {b: flash.read(g.block_offset(b), g.erasesize) for b in covered}
    assert convert_cli(image).exit_code == 0
    with SimFlash(image) as flash:
        changed = [b for b in covered if flash.read(g.block_offset(b), g.erasesize) != before[b]]
        assert flash.read(0, 4) == ANCHOR_MAGIC
    assert covered == [0, 1, 2, 31] and changed == [0]


def test_the_volatiles_first_copy_block_takes_the_anchor_entry_when_its_sentinel_holds_it(
        tmp_path):
    g, _ = GEOMETRIES["nor"]
    image, tool, archives, where = old_image(tmp_path, "nor", LAYOUTS["volatile-block"](g))
    assert where["first_copy"] == 3
    g = tool.geometry
    assert convert_cli(image).exit_code == 0
    with SimFlash(image) as flash:
        assert flash.read(g.block_offset(3), 4) == ANCHOR_MAGIC
        assert [b.block for b in Chain(flash).scan.blocks if b.newest] == [0, 3]


@pytest.mark.parametrize("sentinel", ["missing", "different"])
def test_without_the_same_volatile_in_its_sentinel_a_full_anchor_area_is_the_window(
        tmp_path, sentinel):
    g, _ = GEOMETRIES["nor"]
    image, tool, archives, where = old_image(tmp_path, "nor", LAYOUTS["volatile-block"](g),
                                             sentinel=sentinel == "different")
    if sentinel == "different":
        tool.entry(where["sentinel"], CONF, FIRST_SEQ + 2, archive(SNAPSHOT_1))
    result = convert_cli(image)
    assert result.exit_code == 1 and "--accept-window" in result.output


def test_an_old_chain_filling_the_anchor_area_is_refused_with_nothing_changed(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", LAYOUTS["window"](None))
    before = image.read_bytes()
    result = convert_cli(image)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {image}: the old chain fills anchor blocks 1-3, where the new chain's first "
        f"entry has to go: a power cut between erasing block 3 and writing that entry would "
        f"leave the old chain cut short at block 3 and no new chain; nothing was changed. "
        f"Keep the power on and run `snapshot convert --accept-window` to go ahead\n")
    assert image.read_bytes() == before


def test_with_accept_window_an_old_chain_filling_the_anchor_area_is_converted(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", LAYOUTS["window"](None))
    result = convert_cli(image, "--accept-window")
    assert result.exit_code == 0, result.output
    assert chain_view(image, LOWER) == old_view(LOWER, archives)


def test_a_message_is_refused_with_the_old_chain(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    result = convert_cli(image, "-m", "mine")
    assert result.exit_code == 2 and "-m goes with jffs2 only" in result.output


def test_accept_window_is_refused_without_the_old_chain(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, GEOMETRIES["nor"][0])
    result = invoke("--device", str(image), "convert", "--from", str(tmp_path),
                    "--accept-window")
    assert result.exit_code == 2 and "--accept-window goes with the old fstools chain only" \
        in result.output


def test_an_overlay_dir_is_refused_over_the_old_chain(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    before = image.read_bytes()
    result = invoke("--device", str(image), "convert", "--from", str(tmp_path))
    assert result.exit_code == 1
    assert result.output == (f"Error: {image} holds an old-format (fstools) snapshot chain: "
                             f"`snapshot convert --legacy` imports it (on the router, "
                             f"`snapshot convert`)\n")
    assert image.read_bytes() == before


def test_legacy_is_refused_without_the_old_chain(tmp_path):
    g, _ = GEOMETRIES["nor"]
    image = tmp_path / "flash.img"
    SimFlash.create(image, g)
    result = convert_cli(image)
    assert result.exit_code == 1
    assert result.output == (f"Error: {image} holds no old-format (fstools) snapshot chain "
                             f"(`OWRT` at its start); nothing to convert\n")


def test_the_router_form_checks_the_old_chain_and_hands_over_to_the_ram_stage(
        tmp_path, monkeypatch):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    stage = tmp_path / "convert-stage"
    stage.write_text("")
    monkeypatch.setattr(convert, "STAGE", str(stage))
    handed = []
    monkeypatch.setattr(convert, "hand_over", lambda device, args: handed.append((device, args)))
    # The router booted the old chain read-only from it (snapshot/reboot.py).
    monkeypatch.setattr(reboot, "BOOTED", tmp_path / "booted.json")
    with SimFlash(image) as flash:
        reboot.record(flash)
    before = image.read_bytes()
    result = invoke("--device", str(image), "convert")
    assert result.exit_code == 0, result.output
    assert result.output == (f"the RAM stage imports the old fstools chain on {image} "
                             f"(1 snapshot (old seq {FIRST_SEQ}) and the volatile) and "
                             f"reboots\n")
    assert handed == [(str(image), ["--legacy"])] and image.read_bytes() == before


def test_the_router_form_refuses_an_image_this_system_did_not_boot_from(tmp_path,
                                                                         monkeypatch):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    stage = tmp_path / "convert-stage"
    stage.write_text("")
    monkeypatch.setattr(convert, "STAGE", str(stage))
    monkeypatch.setattr(convert, "hand_over", lambda *a: pytest.fail("handed over"))
    monkeypatch.setattr(reboot, "BOOTED", tmp_path / "booted.json")
    result = invoke("--device", str(image), "convert")
    assert result.exit_code == 1
    assert result.output == (f"Error: {image} is not the overlay this system booted from, "
                             f"which the RAM stage converts before it reboots; use --legacy\n")


def test_the_router_form_refuses_the_window_before_the_ram_stage(tmp_path, monkeypatch):
    image, tool, archives, where = old_image(tmp_path, "nor", LAYOUTS["window"](None))
    monkeypatch.setattr(convert, "hand_over", lambda *a: pytest.fail("handed over"))
    result = invoke("--device", str(image), "convert")
    assert result.exit_code == 1 and "--accept-window" in result.output


def test_commands_on_the_old_chain_point_to_convert(tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    result = invoke("--device", str(image), "list")
    assert result.exit_code == 1
    assert result.output == (f"Error: {image} holds the old fstools snapshot chain, not "
                             f"converted: run `snapshot convert` first, which imports it "
                             f"(until then it boots read-only, and changes stay in RAM)\n")


def test_probe_takes_the_old_chain_for_snapshot_mount_and_writes_nothing(tmp_path):
    """Our boot boots it read-only (tests/test_boot_legacy.py), so the stock mount_root,
    which would run /sbin/snapshot unpack, never has it."""
    image, tool, archives, where = old_image(tmp_path, "nand", [SNAPSHOT_1])
    before = image.read_bytes()
    assert invoke("--device", str(image), "probe").exit_code == 0
    assert image.read_bytes() == before


# -- power cuts --------------------------------------------------------------------------------

def old_intact(image: Path, old: tuple) -> bool:
    """What the old chain was: our boot boots it read-only, the stock boot boots what it
    booted before, and a rerun of convert imports what it would have."""
    with SimFlash(image) as flash:
        if marks.decide(flash)[0] != marks.OLD:
            return False
    return (stock_boot(image), payloads(image)) == old


def _image_copy(image: Path, name: str) -> Path:
    copy = image.with_name(name)
    copy.write_bytes(image.read_bytes())
    Path(f"{copy}.sim.json").write_bytes(Path(f"{image}.sim.json").read_bytes())
    return copy


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_power_cut_at_any_step_leaves_the_old_chain_intact_or_the_new_one(
        tmp_path, geometry, layout):
    """Cut after the 1st, 2nd, ... program or erase; an intact old chain is converted again
    to the end, as it would be after the reboot. With the old chain in every anchor block
    (--accept-window), the cuts in the window (the erase of block 3 and the anchor program
    after it) leave the old chain cut short at block 3, and nothing else does."""
    g, _ = GEOMETRIES[geometry]
    image, tool, archives, where = old_image(tmp_path, geometry, LAYOUTS[layout](g))
    old = (stock_boot(image), payloads(image))
    args = ["convert", "--legacy"] + (["--accept-window"] if layout == "window" else [])
    done = _image_copy(image, "done.img")
    with SimFlash(done) as flash:
        before = flash.stats().programs + flash.stats().erases
    assert run_cli(str(done), args).returncode == 0
    with SimFlash(done) as flash:
        steps = flash.stats().programs + flash.stats().erases - before
    new = visible(str(done))
    assert chain_view(done, LOWER) == old_view(LOWER, archives)
    short = (tuple(archives[:3]), None)   # blocks 0-2: snapshots 1-3, and no volatile
    outcomes = []
    for cut in range(1, steps + 1):
        trial = _image_copy(image, f"cut{cut}.img")
        result = run_cli(str(trial), args, cut=cut)
        assert result.returncode == 99, result.stderr
        if old_intact(trial, old):
            outcomes.append("old")
            again = run_cli(str(trial), args)
            assert again.returncode == 0, f"cut {cut}: rerun failed: {again.stderr}"
        elif layout == "window" and visible(str(trial)) == "no chain" and \
                stock_boot(trial) == short:
            outcomes.append("cut short")
            continue
        else:
            outcomes.append("new")
            with SimFlash(trial) as flash:
                assert marks.decide(flash)[0] == marks.CHAIN, f"cut {cut}: boot leaves it"
        assert visible(str(trial)) == new, f"cut {cut}: neither the old chain nor the new one"
        CHECKED["convert-legacy"] = CHECKED.get("convert-legacy", 0) + 1
    # The last four operations: the commit's erase and program, then the mark block's.
    window = ["cut short"] * 2 if layout == "window" else ["old"] * 2
    assert outcomes == ["old"] * (steps - 4) + window + ["new"] * 2, outcomes


def test_an_8_mib_old_snapshot_is_converted_streamed_not_whole_in_memory(tmp_path):
    """The peak memory of the conversion is that of `list`, whatever the entry's size."""
    g = Geometry(FlashType.NAND, 32 * MIB, 128 * 1024, 2048, 64)
    image = tmp_path / "flash.img"
    blob = random.Random(8).randbytes(8 * MIB)
    OldTool(image, g).chain([archive({"etc": ("dir",), "etc/blob": blob})])

    def peak(*args: str) -> int:
        code = ("import resource, sys\nfrom snapshot.cli import main\ntry:\n"
                "    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", code, "--device", str(image), *args],
                              capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1]) * 1024
    listing = peak("list")
    converting = peak("convert", "--legacy", "--accept-window")
    assert converting < listing + 4 * MIB, (listing, converting)
    assert len(imported_messages(image)) == 1
