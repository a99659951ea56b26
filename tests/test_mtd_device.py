"""The kernel MTD binding's host-side parts: finding partitions, naming errors."""
import errno

import pytest

from mtd import MtdError
from mtd._mtd_abi import ffi
from mtd.device import MtdDevice, default_partition_name, partitions, path_for_name
from mtd.errors import FlashOpenError, from_errno

PROC_MTD = """dev:    size   erasesize  name
mtd0: 00040000 00010000 "u-boot"
mtd1: 00fb0000 00010000 "firmware"
mtd5: 00880000 00010000 "rootfs_data"
"""


@pytest.fixture
def proc_mtd(tmp_path):
    path = tmp_path / "mtd"
    path.write_text(PROC_MTD)
    return str(path)


def test_partitions_are_read_from_proc_mtd(proc_mtd):
    assert partitions(proc_mtd) == {"u-boot": "/dev/mtd0", "firmware": "/dev/mtd1",
                                    "rootfs_data": "/dev/mtd5"}


def test_partition_is_found_by_name(proc_mtd):
    assert path_for_name("rootfs_data", proc_mtd) == "/dev/mtd5"


def test_unknown_partition_name_is_a_clear_error(proc_mtd):
    with pytest.raises(FlashOpenError, match="no MTD partition named 'overlay'"):
        path_for_name("overlay", proc_mtd)


def test_default_partition_is_rootfs_data(tmp_path):
    (tmp_path / "cmdline").write_text("console=ttyS0,115200 rootfstype=squashfs\n")
    assert default_partition_name(str(tmp_path / "cmdline")) == "rootfs_data"


def test_kernel_command_line_can_name_another_partition(tmp_path):
    (tmp_path / "cmdline").write_text("console=ttyS0 fstools_overlay_name=ubi_data quiet\n")
    assert default_partition_name(str(tmp_path / "cmdline")) == "ubi_data"


def test_errno_becomes_an_mtd_error_naming_device_operation_and_offset():
    e = from_errno(errno.EIO, "/dev/mtd5", "MEMERASE64", 0x20000)
    assert isinstance(e, OSError) and isinstance(e, MtdError)
    assert e.errno == errno.EIO
    assert str(e) == "/dev/mtd5: MEMERASE64 at 0x20000 failed: I/O error (failing or bad block)"


def test_struct_layouts_come_from_the_kernel_header():
    assert ffi.sizeof("struct erase_info_user") == 8
    assert ffi.sizeof("struct erase_info_user64") == 16


def test_regular_file_is_refused_as_not_an_mtd_device(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(FlashOpenError, match="not an MTD device"):
        MtdDevice(str(tmp_path / "f"))


def test_character_device_that_is_not_mtd_is_refused():
    with pytest.raises(FlashOpenError, match="/dev/null: not an MTD device"):
        MtdDevice("/dev/null")
