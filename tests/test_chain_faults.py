"""The chain under flash faults and corruption: blocks that fail, bit flips, damaged and
garbage data. Nothing hangs, nothing tracebacks, read-only commands never write."""
import json
import os
import random
import subprocess
import sys

import pytest

from mtd import FlashType, Geometry, SimFlash
from mtd.sim import CORRECTED, UNCORRECTABLE
from snapshot.store.chain import Chain
from snapshot.store.format import ANCHOR_BLOCKS
from clirun import ok, run
from sweep import make_tree, tree

KIB = 1024
NAND = Geometry(FlashType.NAND, 4096 * KIB, 128 * KIB, 2048, 64)






def chain_of(image):
    with SimFlash(image) as flash:
        chain = Chain(flash)
        return [(r.entry.seq, list(r.blocks)) for r in chain.records]


def with_two_snapshots(tmp_path, **faults):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND, **faults)
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)), "-m", "one")
    ok(image, "push", "--from", str(make_tree(tmp_path / "b", 2, 4)), "-m", "two")
    return image


def set_bitflip(image, offset, kind):
    SimFlash.add_faults(image, bitflips={offset: kind})


def payload_offset_of(image, index):
    with SimFlash(image) as flash:
        record = Chain(flash).records[index]
        return flash.geometry.block_offset(record.blocks[0]) + record.layout.payload_offset


# -- failing blocks ----------------------------------------------------------------------------

def test_block_whose_erase_fails_is_marked_bad_and_skipped(tmp_path):
    image = tmp_path / "flash.img"
    # Block 4 (the first data block) has no erases left.
    SimFlash.create(image, NAND, wear_limits={ANCHOR_BLOCKS: 0})
    ok(image, "format")
    a = make_tree(tmp_path / "a", 1, 4)
    ok(image, "push", "--from", str(a))
    with SimFlash(image) as flash:
        assert flash.is_bad(ANCHOR_BLOCKS)
        assert Chain(flash).snapshots[0].blocks == [ANCHOR_BLOCKS + 1]
    ok(image, "unpack", "--to", str(tmp_path / "out"))
    assert tree(tmp_path / "out") == tree(a)


def test_block_whose_program_fails_moves_its_data_to_the_next_block(tmp_path):
    image = tmp_path / "flash.img"
    # Block 5 survives one erase, then its programs fail: the record's second block.
    SimFlash.create(image, NAND, wear_limits={ANCHOR_BLOCKS + 1: 1})
    ok(image, "format")
    a = make_tree(tmp_path / "a", 1, 300)
    ok(image, "push", "--from", str(a))
    with SimFlash(image) as flash:
        assert flash.is_bad(ANCHOR_BLOCKS + 1)
        assert Chain(flash).snapshots[0].blocks == [4, 6, 7]
    ok(image, "unpack", "--to", str(tmp_path / "out"))
    assert tree(tmp_path / "out") == tree(a)


def test_anchor_block_that_fails_is_replaced_by_another(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND, wear_limits={0: 0})
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 1)))
    with SimFlash(image) as flash:
        assert flash.is_bad(0)
    assert chain_of(image)[0][0] == 1


# -- bit flips ---------------------------------------------------------------------------------

def test_corrected_bit_flips_are_reported_and_repair_rewrites_the_record(tmp_path):
    image = with_two_snapshots(tmp_path)
    set_bitflip(image, payload_offset_of(image, 0) + 10, CORRECTED)
    result = run(image, "check")
    assert result.exit_code == 0 and "corrected bit flips" in result.output
    assert "nothing is lost" in result.output
    old_blocks = chain_of(image)[0][1]
    assert "repaired: rewrote snapshot 1" in ok(image, "check", "--repair")
    assert chain_of(image)[0][1] != old_blocks
    assert "clean" in ok(image, "check")


def test_uncorrectable_record_ends_the_visible_chain_before_it(tmp_path):
    image = with_two_snapshots(tmp_path)
    set_bitflip(image, payload_offset_of(image, 1) + 10, UNCORRECTABLE)
    result = run(image, "unpack", "--to", str(tmp_path / "out"))
    assert result.exit_code == 4
    assert "snapshot 2 (block" in result.output and "uncorrectable" in result.output
    assert "unpacked snapshots 1..1" in result.output
    assert (tmp_path / "out/etc/config/network").read_text() == "config interface 'lan1'\n"
    assert run(image, "check").exit_code == 4


def header_offset_of(image, index):
    """Where record `index` starts: its header, which every write reads."""
    with SimFlash(image) as flash:
        return flash.geometry.block_offset(Chain(flash).records[index].blocks[0])


def test_push_on_top_of_an_uncorrectable_snapshot_is_refused(tmp_path):
    image = with_two_snapshots(tmp_path)
    set_bitflip(image, header_offset_of(image, 1) + 10, UNCORRECTABLE)
    before = image.read_bytes()
    result = run(image, "push", "--from", str(make_tree(tmp_path / "c", 3, 1)))
    assert result.exit_code == 4 and "uncorrectable" in result.output
    assert image.read_bytes() == before
    assert "emptied snapshot 2" in ok(image, "check", "--repair")


def test_a_save_refuses_to_build_on_a_snapshot_whose_payload_is_damaged(tmp_path):
    """No boot has read this image's payloads, so the save reads them, finds the damage,
    and refuses with nothing written; the repair then costs snapshot 2 only."""
    image = with_two_snapshots(tmp_path)
    set_bitflip(image, payload_offset_of(image, 1) + 10, UNCORRECTABLE)
    before = image.read_bytes()
    result = run(image, "save", "--from", str(make_tree(tmp_path / "c", 3, 1)))
    assert result.exit_code == 4
    assert "snapshot 2" in result.output and "nothing was written" in result.output
    assert "check --repair` empties snapshot 2" in result.output
    assert image.read_bytes() == before


def test_a_write_reads_headers_only_of_payloads_this_boot_verified(tmp_path):
    """What a check (as every boot's repair) verified is not read again by the next write
    (DESIGN.md §4): damage that came since is found by the next boot, whose repair costs
    that record's content only, and keeps the save made on top of it."""
    image = with_two_snapshots(tmp_path)
    assert "clean" in ok(image, "check")
    set_bitflip(image, payload_offset_of(image, 1) + 10, UNCORRECTABLE)
    ok(image, "save", "--from", str(make_tree(tmp_path / "c", 3, 1)))
    result = run(image, "check")
    assert result.exit_code == 4 and "snapshot 2" in result.output
    out = ok(image, "check", "--repair")
    assert "emptied snapshot 2" in out and "dropped" not in out
    assert [seq for seq, _ in chain_of(image)] == [1, 2, 2]


def test_corrected_bit_flips_are_scrubbed_by_the_next_save(tmp_path):
    image = with_two_snapshots(tmp_path)
    set_bitflip(image, header_offset_of(image, 0) + 10, CORRECTED)
    old_blocks = chain_of(image)[0][1]
    ok(image, "save", "--from", str(make_tree(tmp_path / "v", 3, 1)))
    assert chain_of(image)[0][1] != old_blocks
    assert "clean" in ok(image, "check")


def test_writing_past_a_damaged_record_needs_repair_which_says_what_it_drops(tmp_path):
    image = with_two_snapshots(tmp_path)
    corrupt(image, payload_offset_of(image, 0) - 2048, 4)   # snapshot 1's header
    result = run(image, "push", "--from", str(make_tree(tmp_path / "c", 3, 1)))
    assert result.exit_code == 4 and "`snapshot check --repair` empties snapshot 1" in result.output
    out = ok(image, "check", "--repair")
    assert "emptied snapshot 1" in out and "snapshot 2" not in out
    ok(image, "push", "--from", str(make_tree(tmp_path / "c", 3, 1)))
    assert [seq for seq, _ in chain_of(image)] == [1, 2, 3]


def test_repair_is_idempotent(tmp_path):
    image = with_two_snapshots(tmp_path)
    corrupt(image, payload_offset_of(image, 1) + 100, 8)
    ok(image, "check", "--repair")
    before = image.read_bytes()
    assert "clean" in ok(image, "check", "--repair")
    assert image.read_bytes() == before


# -- corruption: list, check and unpack report, never hang, never write -------------------------

def corrupt(image, offset, length, data=None):
    with open(image, "r+b") as f:
        f.seek(offset)
        old = f.read(length)
        f.seek(offset)
        f.write(data if data is not None else bytes(b ^ 0xA5 for b in old))


def read_only_commands_survive(image, tmp_path):
    """Run list, check and unpack as a user would (subprocess, with a time limit): each
    answers with output or one Error line, no traceback, and the image is unchanged."""
    before = image.read_bytes()
    outputs = []
    for args in (["list", "--json"], ["check", "--json"], ["unpack", "--to", str(tmp_path / "u")]):
        proc = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image), *args],
                              capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 1, 4), proc.stderr
        if proc.returncode == 1:
            assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1
        outputs.append(proc)
    assert image.read_bytes() == before
    return outputs


def test_garbage_anchor_header_is_no_chain(tmp_path):
    image = with_two_snapshots(tmp_path)
    for block in range(ANCHOR_BLOCKS):
        corrupt(image, block * NAND.erasesize, 24)
    listed, _, _ = read_only_commands_survive(image, tmp_path)
    assert "no snapshot chain" in listed.stderr


def test_garbage_record_header_is_reported_damaged(tmp_path):
    image = with_two_snapshots(tmp_path)
    corrupt(image, payload_offset_of(image, 1) - 2048, 36)
    listed, checked, unpacked = read_only_commands_survive(image, tmp_path)
    states = [s["integrity"] for s in json.loads(listed.stdout)["snapshots"]]
    assert states[0] in ("verified", "header ok") and states[1].startswith("damaged")
    assert checked.returncode == 4 and unpacked.returncode == 4


def test_bad_payload_crc_is_reported(tmp_path):
    image = with_two_snapshots(tmp_path)
    corrupt(image, payload_offset_of(image, 0) + 50, 1)
    _, checked, unpacked = read_only_commands_survive(image, tmp_path)
    assert "payload CRC mismatch" in checked.stdout
    assert unpacked.returncode == 4 and "nothing was unpacked" in unpacked.stderr


def test_damage_inside_a_large_file_is_reported_as_a_damaged_record(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 2048)))
    # Inside the 2 MiB blob, and long enough to garble the stream there: the error surfaces
    # while unpack is writing the blob.
    corrupt(image, payload_offset_of(image, 0) + 1536 * KIB, 80 * KIB)
    _, checked, unpacked = read_only_commands_survive(image, tmp_path)
    assert "payload CRC mismatch" in checked.stdout
    assert unpacked.returncode == 4 and "payload CRC mismatch" in unpacked.stderr
    assert "nothing was unpacked" in unpacked.stderr


@pytest.mark.parametrize("cpus", [1, 2], ids=["in-process", "reading-process"])
def test_a_record_damaged_after_its_files_were_unpacked_leaves_exactly_the_ones_before(
        tmp_path, monkeypatch, cpus):
    """Into an empty directory records are unpacked in place; snapshot 2 replaces snapshot
    1's files before the damage near its end shows, and the directory is rebuilt."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    second = make_tree(tmp_path / "b", 2, 1024)
    (second / "etc/added").write_text("only in snapshot 2")
    ok(image, "push", "--from", str(second))
    with SimFlash(image) as flash:
        length = Chain(flash).records[1].entry.payload_length
    corrupt(image, payload_offset_of(image, 1) + length - 64 * KIB, 1)
    ok(image, "unpack", "--to", str(tmp_path / "first"), "--upto", "1")
    result = run(image, "unpack", "--to", str(tmp_path / "out"))
    assert result.exit_code == 4 and "unpacked snapshots 1..1" in result.output
    assert tree(tmp_path / "out") == tree(tmp_path / "first")


def test_truncated_record_is_reported(tmp_path):
    image = with_two_snapshots(tmp_path)
    # Erase the end of snapshot 2: its commit marker is gone, as after a torn write.
    start = payload_offset_of(image, 1)
    corrupt(image, start + 512, NAND.erasesize - (start % NAND.erasesize) - 512,
            b"\xff" * (NAND.erasesize - (start % NAND.erasesize) - 512))
    _, checked, _ = read_only_commands_survive(image, tmp_path)
    assert "snapshot 2" in checked.stdout and checked.returncode == 4


def test_record_claiming_a_huge_length_is_reported(tmp_path):
    image = with_two_snapshots(tmp_path)
    # Rewrite the newest anchor entry so snapshot 2 claims 2**40 payload bytes, with a
    # correct CRC: only a crafted image can do this.
    from snapshot.store.format import Anchor
    with SimFlash(image) as flash:
        chain = Chain(flash)
        block = chain.scan.newest
        entries = [r.entry for r in chain.records]
    entries[1] = entries[1]._replace(payload_length=1 << 40)
    data = Anchor(block.newest.gen + 1, tuple(entries)).pack()
    corrupt(image, block.block * NAND.erasesize + block.end, len(data), data)
    listed, checked, unpacked = read_only_commands_survive(image, tmp_path)
    assert "fewer good blocks than its length needs" in checked.stdout


def test_anchor_entry_length_beyond_its_block_stops_the_walk(tmp_path):
    image = with_two_snapshots(tmp_path)
    with SimFlash(image) as flash:
        block = Chain(flash).scan.newest
    import struct
    header = struct.pack("<4sIHHIQ", b"SnpA", 0, 1, 0, 10 ** 9, 99)
    corrupt(image, block.block * NAND.erasesize + block.end, len(header), header)
    listed, checked, _ = read_only_commands_survive(image, tmp_path)
    assert len(json.loads(listed.stdout)["snapshots"]) == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes_over_the_whole_image(tmp_path, seed):
    image = with_two_snapshots(tmp_path)
    image.write_bytes(random.Random(seed).randbytes(NAND.size))
    listed, _, _ = read_only_commands_survive(image, tmp_path)
    assert "no snapshot chain" in listed.stderr


# -- several records rewritten by one operation ------------------------------------------------

NOR_4M = Geometry(FlashType.NOR, 4096 * KIB, 64 * KIB, 1, 0)


@pytest.fixture(params=["nor", "nand"])
def flipped(request, tmp_path):
    """Two snapshots and a volatile record, each with a corrected bit flip in its header:
    whatever rewrites one of them rewrites them all (writes read headers, repairs all)."""
    image = tmp_path / "flash.img"
    SimFlash.create(image, NOR_4M if request.param == "nor" else NAND)
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 100)), "-m", "one")
    ok(image, "push", "--from", str(make_tree(tmp_path / "b", 2, 100)), "-m", "two")
    ok(image, "save", "--from", str(make_tree(tmp_path / "v", 3, 10)))
    ok(image, "unpack", "--to", str(tmp_path / "before"), "--volatile-to",
       str(tmp_path / "before-volatile"))
    for index in range(3):
        set_bitflip(image, header_offset_of(image, index) + 10, CORRECTED)
    return image


def assert_every_record_intact(image, tmp_path, records=3):
    """Every record has blocks of its own, the chain checks clean, and it unpacks to what it
    held before the rewrites."""
    blocks = [b for _, record_blocks in chain_of(image) for b in record_blocks]
    assert len(chain_of(image)) == records
    assert len(blocks) == len(set(blocks)), chain_of(image)
    assert ok(image, "check").strip() == "clean"
    out = tmp_path / f"after{len(list(tmp_path.glob('after*')))}"
    ok(image, "unpack", "--to", str(out), "--upto", "2")
    assert tree(out) == tree(tmp_path / "before")


def test_a_repair_that_rewrites_several_records_gives_each_its_own_blocks(flipped, tmp_path):
    out = ok(flipped, "check", "--repair")
    assert "rewrote snapshot 1" in out and "rewrote snapshot 2" in out
    assert "rewrote the volatile record" in out
    assert_every_record_intact(flipped, tmp_path)
    # A second repair finds nothing to do (it used to drop every snapshot).
    assert ok(flipped, "check", "--repair").strip() == "clean"
    assert_every_record_intact(flipped, tmp_path)


def test_a_push_that_rewrites_records_below_it_gives_each_its_own_blocks(flipped, tmp_path):
    ok(flipped, "push", "--from", str(make_tree(tmp_path / "c", 4, 100)), "-m", "three")
    assert_every_record_intact(flipped, tmp_path)


def test_a_save_that_rewrites_records_below_it_gives_each_its_own_blocks(flipped, tmp_path):
    ok(flipped, "save", "--from", str(make_tree(tmp_path / "w", 5, 10)))
    assert_every_record_intact(flipped, tmp_path)


def test_a_boot_repair_that_rewrites_several_records_keeps_them_all(flipped, tmp_path):
    from boot_decision import boot_writes
    from snapshot import boot
    for _ in range(2):   # the second boot used to drop every snapshot
        report = boot.BootReport()
        with SimFlash(flipped, writable=True) as flash:
            chain = boot_writes(flash, lambda message, loud=False: None, report).chain
            assert len(chain.snapshots) == 2 and chain.volatile is not None
        assert (report.snapshots, report.volatile) == (2, True)
        assert report.problems == []
    assert_every_record_intact(flipped, tmp_path)
