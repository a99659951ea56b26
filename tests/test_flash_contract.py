"""The Flash protocol contract. The same tests run against the simulator on the host and, in
the kernel tier, against real kernel MTD devices (nandsim, mtdram, block2mtd) in a qemu guest,
so the simulator cannot drift from what the kernel does."""
import errno
import os
from pathlib import Path

import pytest

from mtd import Bitflips, FlashType, Geometry, MtdError, SimFlash
from mtd.device import MtdDevice

KIB = 1024
# The factory bad block of the NAND devices: sim-nand is created with it, and the kernel tier
# loads nandsim with badblocks= the same number.
NAND_BAD_BLOCK = 5

SIM_GEOMETRY = {
    "sim-nor": Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0),
    "sim-nand": Geometry(FlashType.NAND, 4096 * KIB, 128 * KIB, 2048, 64),
}
# What the kernel tier asks each device to be: (type, erasesize, writesize, oobsize).
KERNEL_GEOMETRY = {
    "nandsim": (FlashType.NAND, 128 * KIB, 2048, 64),
    "mtdram": (FlashType.RAM, 64 * KIB, 1, 0),
    "block2mtd": (FlashType.RAM, 64 * KIB, 1, 0),
}
NAND_BACKENDS = [
    pytest.param("sim-nand"),
    pytest.param("nandsim", marks=pytest.mark.kernel),
]
ALL_BACKENDS = [
    pytest.param("sim-nor"),
    *NAND_BACKENDS,
    pytest.param("mtdram", marks=pytest.mark.kernel),
    pytest.param("block2mtd", marks=pytest.mark.kernel),
]


def guest_device(backend: str) -> str:
    return os.environ[f"MTD_{backend.upper()}"]


def open_backend(backend: str, tmp_path: Path):
    if backend in SIM_GEOMETRY:
        geometry = SIM_GEOMETRY[backend]
        bad = [NAND_BAD_BLOCK] if geometry.is_nand else []
        SimFlash.create(tmp_path / "flash.img", geometry, bad_blocks=bad)
        return SimFlash(tmp_path / "flash.img", writable=True)
    return MtdDevice(guest_device(backend), writable=True)


@pytest.fixture(params=ALL_BACKENDS)
def flash(request, tmp_path):
    with open_backend(request.param, tmp_path) as dev:
        yield dev


@pytest.fixture(params=NAND_BACKENDS)
def nand(request, tmp_path):
    with open_backend(request.param, tmp_path) as dev:
        yield dev


def proc_mtd_size(device: str) -> int:
    """The device's size as /proc/mtd gives it (hexadecimal), a view of the kernel's other
    than the sysfs attributes MtdDevice reads its geometry from."""
    for line in Path("/proc/mtd").read_text().splitlines():
        if line.startswith(f"{Path(device).name}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"{device} is not in /proc/mtd")


def test_geometry_is_what_the_device_is(flash, request):
    backend = request.node.callspec.params["flash"]
    g = flash.geometry
    if backend in SIM_GEOMETRY:
        assert g == SIM_GEOMETRY[backend]
        return
    assert (g.type, g.erasesize, g.writesize, g.oobsize) == KERNEL_GEOMETRY[backend]
    assert g.size == proc_mtd_size(flash.name) and g.size % g.erasesize == 0


def test_erased_block_reads_back_as_ff(flash):
    eb = flash.geometry.erasesize
    flash.erase(eb, eb)
    assert flash.read(eb, eb) == b"\xff" * eb


def test_page_write_reads_back(flash):
    eb, page = flash.geometry.erasesize, max(flash.geometry.writesize, 512)
    flash.erase(eb, eb)
    pattern = bytes(range(256)) * (page // 256)
    flash.write(eb + page, pattern)
    assert flash.read(eb + page, page) == pattern
    assert flash.read(eb, page) == b"\xff" * page


def test_unaligned_nand_write_fails_with_a_clear_error(nand):
    eb = nand.geometry.erasesize
    nand.erase(eb, eb)
    with pytest.raises(MtdError, match="not aligned to the 2048-byte page") as e:
        nand.write(eb + 100, b"\0" * 2048)
    assert e.value.errno == errno.EINVAL
    assert nand.read(eb, 4096) == b"\xff" * 4096


def test_factory_bad_block_is_reported(nand):
    assert nand.is_bad(NAND_BAD_BLOCK)
    assert not nand.is_bad(NAND_BAD_BLOCK - 1)


def test_erasing_the_bad_block_fails_with_eio(nand):
    eb = nand.geometry.erasesize
    with pytest.raises(MtdError) as e:
        nand.erase(NAND_BAD_BLOCK * eb, eb)
    assert e.value.errno == errno.EIO


def test_ecc_statistics_are_read(flash):
    stats = flash.stats()
    assert isinstance(stats.ecc_corrected, int) and isinstance(stats.ecc_failed, int)
    data, flips = flash.read_ecc(0, flash.geometry.writesize)
    assert len(data) == flash.geometry.writesize and flips == Bitflips(0, 0)


def test_bad_block_count_is_in_the_statistics(nand):
    assert nand.stats().bad_blocks == 1


READ_ONLY = """\
import json, sys
from mtd.device import MtdDevice
with MtdDevice(sys.argv[1]) as dev:
    g = dev.geometry
    bad = [b for b in range(g.blocks) if dev.is_bad(b)]
    data, flips = dev.read_ecc(0, g.erasesize)
print(json.dumps({"geometry": list(g), "bad": bad, "erased": data == b"\\xff" * g.erasesize,
                  "flips": list(flips), "bindings": "mtd._mtd_abi" in sys.modules}))
"""


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["nandsim", "mtdram", "block2mtd"])
def test_a_read_only_open_needs_the_bindings_only_for_a_bad_block(backend, tmp_path):
    """Read-only, the geometry and the ECC counters come from sysfs and the bytes from pread:
    a command that only reads loads no bindings, unless the kernel counts bad blocks on the
    device, which only MEMGETBADBLOCK can place. What it sees is what a writer sees."""
    import json
    import subprocess
    import sys
    device = guest_device(backend)
    with MtdDevice(device, writable=True) as dev:
        dev.erase(0, dev.geometry.erasesize)
        writer = {"geometry": list(dev.geometry), "bad": dev.bad_blocks()}
    seen = json.loads(subprocess.run([sys.executable, "-c", READ_ONLY, device], check=True,
                                     capture_output=True, text=True).stdout)
    assert seen["geometry"] == writer["geometry"] and seen["bad"] == writer["bad"]
    assert seen["erased"] and seen["flips"] == [0, 0]
    assert seen["bindings"] == (backend == "nandsim") == bool(writer["bad"])
