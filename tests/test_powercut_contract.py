"""The simulator's power-cut contract, seen from outside the process as external checks see it:
MTDSIM_POWERCUT_AFTER=N tears the N-th program or erase, flushes, and exits 99 at once."""
import os
import subprocess
import sys

import pytest

from mtd import FlashType, Geometry, SimFlash

KIB = 1024
NOR = Geometry(FlashType.NOR, 256 * KIB, 64 * KIB, 1, 0)
NAND = Geometry(FlashType.NAND, 1024 * KIB, 128 * KIB, 2048, 64)

# Operation 1 erases block 1, operation 2 programs all of it with 0x00, operation 3 erases
# block 2. A `finally` leaves a marker file: it must not exist after a cut.
WRITER = """
import sys
from mtd import SimFlash
image, marker = sys.argv[1:]
f = SimFlash(image, writable=True)
try:
    eb = f.geometry.erasesize
    f.erase(eb, eb)
    f.write(eb, b"\\x00" * eb)
    f.erase(2 * eb, eb)
finally:
    open(marker, "w").close()
f.close()
"""


def run_writer(tmp_path, geometry, cut=None, seed="1"):
    image = tmp_path / "flash.img"
    SimFlash.create(image, geometry)
    with SimFlash(image, writable=True) as f:
        f.write(2 * geometry.erasesize, b"\x55" * geometry.erasesize)
    env = dict(os.environ, MTDSIM_SEED=seed)
    if cut is not None:
        env["MTDSIM_POWERCUT_AFTER"] = str(cut)
    marker = tmp_path / "finally-ran"
    proc = subprocess.run([sys.executable, "-c", WRITER, str(image), str(marker)], env=env)
    block = lambda n: image.read_bytes()[n * geometry.erasesize:(n + 1) * geometry.erasesize]
    return proc.returncode, marker.exists(), block, image


@pytest.mark.parametrize("geometry", [NOR, NAND], ids=["nor", "nand"])
def test_without_a_cut_the_writer_finishes(tmp_path, geometry):
    rc, finally_ran, block, _ = run_writer(tmp_path, geometry)
    assert (rc, finally_ran) == (0, True)
    assert block(1) == b"\x00" * geometry.erasesize


@pytest.mark.parametrize("geometry", [NOR, NAND], ids=["nor", "nand"])
def test_cut_during_a_program_exits_99_with_only_a_prefix_written(tmp_path, geometry):
    rc, finally_ran, block, _ = run_writer(tmp_path, geometry, cut=2)
    assert (rc, finally_ran) == (99, False)
    data = block(1)
    written = len(data) - len(data.lstrip(b"\x00"))
    assert written < geometry.erasesize
    # Past the torn page (NAND) or byte (NOR) nothing was programmed.
    torn_end = (written // geometry.writesize + 1) * geometry.writesize
    assert data[torn_end:] == b"\xff" * (geometry.erasesize - torn_end)
    # The later operation never ran.
    assert block(2) == b"\x55" * geometry.erasesize


@pytest.mark.parametrize("geometry", [NOR, NAND], ids=["nor", "nand"])
def test_cut_during_an_erase_leaves_the_block_partly_erased(tmp_path, geometry):
    rc, finally_ran, block, _ = run_writer(tmp_path, geometry, cut=3)
    assert (rc, finally_ran) == (99, False)
    data = block(2)
    assert data.startswith(b"\xff") and data != b"\xff" * geometry.erasesize
    assert block(1) == b"\x00" * geometry.erasesize


def test_the_sidecar_is_flushed_before_exit(tmp_path):
    _, _, _, image = run_writer(tmp_path, NAND, cut=2)
    with SimFlash(image) as f:
        assert f.stats().erase_counts[1] == 1
        assert f.stats().erases == 1


def test_a_torn_nand_page_counts_as_programmed(tmp_path):
    _, _, block, image = run_writer(tmp_path, NAND, cut=2)
    torn = len(block(1)) - len(block(1).lstrip(b"\x00"))
    torn_page = 128 * KIB + torn // 2048 * 2048
    from mtd import FlashViolation
    with SimFlash(image, writable=True) as f, pytest.raises(FlashViolation):
        f.write(torn_page, b"\x00" * 2048)


def test_the_same_seed_tears_the_same_way(tmp_path):
    images = []
    for attempt in range(2):
        (tmp_path / str(attempt)).mkdir()
        images.append(run_writer(tmp_path / str(attempt), NAND, cut=2, seed="7")[3].read_bytes())
    assert images[0] == images[1]


def test_another_seed_tears_another_way(tmp_path):
    images = []
    for seed in ("7", "8"):
        (tmp_path / seed).mkdir()
        images.append(run_writer(tmp_path / seed, NAND, cut=3, seed=seed)[3].read_bytes())
    assert images[0] != images[1]
