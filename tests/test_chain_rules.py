"""The chain's safety rules, each tested where breaking it in one line makes the test fail:
the anchor log filling its blocks and moving on, and stale records that differ only in their
generation. (The writer's lock is test_chain_cli.py::test_second_writer_gets_busy.)"""
import io
import time

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot.store.chain import Chain, commit
from snapshot.store.format import ANCHOR_BLOCKS, COMPRESSION_GZIP, COMPRESSION_XZ, RecordHeader
from snapshot.tree import capture
from clirun import ok, run
from sweep import make_tree

KIB = 1024
GEOMETRIES = {
    "nor": Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0),
    "nand": Geometry(FlashType.NAND, 4096 * KIB, 128 * KIB, 2048, 64),
}


@pytest.fixture(params=sorted(GEOMETRIES))
def image(request, tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, GEOMETRIES[request.param])
    ok(path, "format")
    for n in range(3):
        ok(path, "push", "--from", str(make_tree(tmp_path / f"s{n}", n, 4)), "-m", "m" * 255)
    return path


def test_the_anchor_log_fills_its_blocks_and_moves_on_without_losing_a_commit(image):
    """Commit the chain again and again: entries are appended until a block is full, then
    the log switches to the block holding the oldest entry, never to the mark block. Every commit must be what a
    fresh reader finds, through several rounds of all four anchor blocks."""
    switches, blocks_used = 0, set()
    with SimFlash(image, writable=True) as flash:
        g = flash.geometry
        mark_block = flash.read(0, g.erasesize)
        chain = Chain(flash)
        entries = [r.entry for r in chain.records]
        last = chain.scan.newest.block
        for n in range(600):
            commit(chain, entries)
            fresh = Chain(flash)
            assert fresh.anchor == chain.anchor, f"commit {n + 1} is not what a reader finds"
            # Where the writer believes the log ends is where a reader finds it ending,
            # inside its block.
            assert (fresh.scan.newest.block, fresh.scan.newest.end) == \
                (chain.scan.newest.block, chain.scan.newest.end), f"commit {n + 1}"
            assert fresh.scan.newest.end <= flash.geometry.erasesize
            if fresh.scan.newest.block != last:
                switches += 1
                last = fresh.scan.newest.block
            blocks_used.add(last)
        # The mark block is written once and then only read (DESIGN.md §11).
        assert flash.read(0, g.erasesize) == mark_block
    assert blocks_used == set(range(1, ANCHOR_BLOCKS)) and switches >= 2 * ANCHOR_BLOCKS
    assert ok(image, "check").strip() == "clean"


def test_a_stale_record_identical_but_for_its_generation_is_rejected(image, tmp_path):
    """FORMAT.md §3: the blocks hold snapshot 3 as written at generation g; an anchor that
    lists the same record (same blocks, message, lengths, CRCs) at another generation must
    not accept it: a record left in a reused block could otherwise pass for a live one."""
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        entries = [r.entry for r in chain.records]
        stale = entries[-1]
        newer = stale._replace(gen=chain.next_gen())
        newer = newer._replace(header_crc=RecordHeader(*newer.header).crc)
        commit(chain, entries[:-1] + [newer])
    result = run(image, "check")
    assert result.exit_code == 4
    assert "snapshot 3" in result.output and "does not match the anchor" in result.output
    result = run(image, "unpack", "--to", str(tmp_path / "out"))
    assert result.exit_code == 4 and "unpacked snapshots 1..2" in result.output


@pytest.mark.parametrize("compression", [COMPRESSION_GZIP, COMPRESSION_XZ], ids=["gzip", "xz"])
def test_archives_are_the_same_bytes_whenever_they_are_made(tmp_path, monkeypatch,
                                                              compression):
    tree = make_tree(tmp_path / "t", 1, 50)
    made = []
    for when in (1_000_000_000.0, time.time() + 86400 * 365):
        monkeypatch.setattr(time, "time", lambda: when)
        out = io.BytesIO()
        capture.pack(tree, out, compression)
        made.append(out.getvalue())
    assert made[0] == made[1]
