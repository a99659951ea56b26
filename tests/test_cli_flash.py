"""`snapshot flash create` and `snapshot flash info`, and how bad input is answered."""
import json
import os

import pytest

from clirun import error_of, invoke




def create(tmp_path, *extra):
    image = str(tmp_path / "flash.img")
    result = invoke("flash", "create", image, *extra)
    assert result.exit_code == 0, result.output
    return image


def info(image):
    result = invoke("--device", image, "flash", "info", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_create_nor_defaults_to_one_byte_pages_and_no_oob(tmp_path):
    image = create(tmp_path, "--type", "nor", "--size", "1M", "--erase-size", "64K")
    assert info(image)["geometry"] == {"type": "nor", "size": 1 << 20, "erasesize": 65536,
                                       "writesize": 1, "oobsize": 0, "flags": 0, "blocks": 16}
    assert os.path.getsize(image) == 1 << 20


def test_create_nand_defaults_to_2k_pages_and_64_bytes_oob(tmp_path):
    image = create(tmp_path, "--type", "nand", "--size", "4M", "--erase-size", "128K",
                   "--bad-blocks", "3,17")
    data = info(image)
    assert (data["geometry"]["writesize"], data["geometry"]["oobsize"]) == (2048, 64)
    assert data["bad_blocks"] == [3, 17]


def test_create_refuses_to_replace_an_existing_file(tmp_path):
    (tmp_path / "flash.img").write_bytes(b"keep me")
    result = invoke("flash", "create", str(tmp_path / "flash.img"), "--type", "nor",
                 "--size", "256K", "--erase-size", "64K")
    assert error_of(result) == f"Error: {tmp_path}/flash.img exists; add --force to replace it"
    assert (tmp_path / "flash.img").read_bytes() == b"keep me"


def test_create_with_force_replaces_an_existing_file(tmp_path):
    (tmp_path / "flash.img").write_bytes(b"old")
    create(tmp_path, "--type", "nor", "--size", "256K", "--erase-size", "64K", "--force")
    assert (tmp_path / "flash.img").stat().st_size == 256 * 1024


def test_create_takes_page_and_oob_sizes(tmp_path):
    image = create(tmp_path, "--type", "nand", "--size", "2M", "--erase-size", "256K",
                   "--page-size", "4K", "--oob-size", "128")
    assert info(image)["geometry"]["writesize"] == 4096


def test_info_json_reports_wear_statistics(tmp_path):
    image = create(tmp_path, "--type", "nor", "--size", "256K", "--erase-size", "64K")
    stats = info(image)["stats"]
    assert stats == {"programs": 0, "erases": 0, "bytes_programmed": 0, "bytes_read": 0,
                     "erase_counts": [0, 0, 0, 0], "ecc_corrected": 0, "ecc_failed": 0,
                     "bad_blocks": 0}


def test_info_text_names_the_geometry(tmp_path):
    image = create(tmp_path, "--type", "nand", "--size", "1M", "--erase-size", "128K")
    result = invoke("--device", image, "flash", "info")
    assert "1 MiB in 8 blocks of 128 KiB" in result.output


def test_device_can_come_from_the_environment(tmp_path):
    image = create(tmp_path, "--type", "nor", "--size", "256K", "--erase-size", "64K")
    result = invoke("flash", "info", "--json", env={"SNAPSHOT_DEVICE": image})
    assert json.loads(result.output)["device"] == image




def test_size_that_does_not_divide_is_an_error(tmp_path):
    result = invoke("flash", "create", str(tmp_path / "x.img"), "--type", "nor",
                 "--size", "100K", "--erase-size", "64K")
    assert error_of(result) == "Error: size 102400 is not a multiple of the erase size 65536"
    assert not (tmp_path / "x.img").exists()


def test_page_size_that_does_not_divide_is_an_error(tmp_path):
    result = invoke("flash", "create", str(tmp_path / "x.img"), "--type", "nand",
                 "--size", "1M", "--erase-size", "128K", "--page-size", "256K")
    assert "not a multiple of the page size 262144" in error_of(result)


def test_bad_block_outside_the_device_is_an_error(tmp_path):
    result = invoke("flash", "create", str(tmp_path / "x.img"), "--type", "nand",
                 "--size", "1M", "--erase-size", "128K", "--bad-blocks", "8")
    assert error_of(result) == "Error: bad block 8 is outside 0..7"


def test_unparsable_size_is_a_usage_error(tmp_path):
    result = invoke("flash", "create", str(tmp_path / "x.img"), "--type", "nor",
                 "--size", "12Q", "--erase-size", "64K")
    assert result.exit_code == 2 and "'12Q' is not a size" in result.output


def test_missing_device_is_an_error(tmp_path):
    result = invoke("--device", str(tmp_path / "nothing"), "flash", "info")
    assert error_of(result) == f"Error: {tmp_path}/nothing: no such device or image"


def test_regular_file_is_not_an_mtd_device(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = invoke("--device", str(tmp_path / "notes.txt"), "flash", "info")
    assert error_of(result).endswith("not an MTD device, a UBI volume or a simulated flash image")


def test_character_device_without_mtd_ioctls_is_not_an_mtd_device():
    result = invoke("--device", "/dev/null", "flash", "info")
    assert error_of(result) == "Error: /dev/null: not an MTD device"


def test_unknown_partition_name_is_an_error():
    result = invoke("--device", "mtd:no_such_partition", "flash", "info")
    assert "no MTD partition named 'no_such_partition'" in error_of(result)


def test_permission_denied_is_an_error(tmp_path, monkeypatch):
    image = create(tmp_path, "--type", "nor", "--size", "256K", "--erase-size", "64K")
    real_open = os.open

    def deny(path, *args, **kwargs):
        if str(path) == image:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    result = invoke("--device", image, "flash", "info")
    assert error_of(result) == f"Error: {image}: permission denied"


@pytest.mark.parametrize("command", [[], ["flash"], ["flash", "create"], ["flash", "info"]])
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


@pytest.mark.parametrize("size,message", [
    ("5000G", "is more than an MTD device can have"),
    ("0", "size must be positive"),
])
def test_a_size_no_mtd_device_has_is_refused_and_nothing_is_created(tmp_path, size, message):
    result = invoke("flash", "create", str(tmp_path / "x.img"), "--type", "nor",
                    "--size", size, "--erase-size", "64K")
    assert message in error_of(result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("erase,page,message", [
    ("3000", "1", "erase size 3000 is not a power of two"),
    ("128K", "7", "page size 7 is not a power of two"),
])
def test_an_absurd_geometry_is_refused_with_the_reason(tmp_path, erase, page, message):
    result = invoke("flash", "create", str(tmp_path / "x.img"), "--type", "nor",
                    "--size", "1M", "--erase-size", erase, "--page-size", page)
    assert message in error_of(result)
