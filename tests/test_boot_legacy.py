"""Tier 2: `snapshot mount` of an unconverted old fstools chain (DESIGN.md §8, §9), on real
squashfs, overlayfs and tmpfs in private mount namespaces (tests/test_boot.py's boots), over
images written from the documented format (tests/old_chain.py). The boot is read-only: it
shows what the stock boot shows, writes nothing to the flash, refuses `save` and `push`, and
leaves the old chain to a later `snapshot convert`. Such a chain boots through the real
router's preinit in tests/test_router_convert.py."""
import io
import random
import tarfile
from pathlib import Path

import pytest

from clirun import invoke
from mtd import SimFlash
from old_chain import DATA, FIRST_SEQ, OldTool, archive, old_view, stock_boot
from sweep import GEOMETRIES, tree
from test_boot import boot, make_rootfs
from test_legacy import SNAPSHOT_1, SNAPSHOT_3, VOLATILE, big, old_image
from test_overlayfs import namespaces  # noqa: F401  (the tier-2 availability fixture)

OLD_BOOT = "holds the old fstools snapshot chain, not converted: booting it read-only"


@pytest.fixture
def rootfs(tmp_path):
    return make_rootfs(tmp_path)


def lower(tmp_path: Path) -> dict:
    """The squashfs's tree (make_rootfs), as the booted root's is listed."""
    return {k: v for k, v in tree(tmp_path / "rootfs").items()
            if k.split("/")[0] not in ("rom", "overlay", "volatile")}


def booted_tree(result: dict) -> dict:
    assert result["rc"] == 0, result["log"]
    return {k: tuple(v) for k, v in result["tree"].items()}


def writes(image: Path) -> int:
    with SimFlash(image) as flash:
        stats = flash.stats()
        return stats.programs + stats.erases


def flash_untouched(image: Path):
    """A check that nothing was programmed or erased since, and the image reads the same."""
    before, count = image.read_bytes(), writes(image)
    return lambda: image.read_bytes() == before and writes(image) == count


@pytest.mark.parametrize("first_copy", [True, False], ids=["volatile", "volatile-sentinel"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_an_unconverted_old_chain_boots_what_the_stock_boot_shows_and_writes_nothing(
        namespaces, rootfs, tmp_path, geometry, first_copy):
    """Its snapshots in seq order, old-style whiteouts deleting, the volatile (from its
    sentinel copy when the first copy is gone) on top."""
    image, tool, archives, where = old_image(tmp_path, geometry,
                                             [SNAPSHOT_1, big(2, 10), SNAPSHOT_3],
                                             first_copy=first_copy)
    stock = stock_boot(image)
    assert stock == (tuple(archives[:3]), archives[3])
    untouched = flash_untouched(image)
    result = boot(rootfs, image, tmp_path, tree=True)
    view = booted_tree(result)
    assert view == old_view(lower(tmp_path), list(stock[0]) + [stock[1]])
    assert "etc/banner" not in view and "etc/added" not in view and \
        view["etc/config/system"][0] == "file"
    assert result["mounts"] == {"rom": True, "overlay": True, "volatile": True}
    assert result["volatile_upper"] == ["etc", "etc/config", "etc/config/system"]
    assert OLD_BOOT in result["log"] and "`snapshot convert` moves it to the new format" in \
        result["log"]
    assert "mounted 3 snapshots and the volatile of the old fstools chain (read-only)" in \
        result["log"]
    assert untouched()


def test_writes_stay_in_ram_and_save_and_push_refuse_with_one_line(namespaces, rootfs,
                                                                    tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1])
    untouched = flash_untouched(image)
    result = boot(rootfs, image, tmp_path, write={"etc/new": "x\n"},
                  commands=[["save", "--from", "$T/volatile/upper"],
                            ["push", "--from", "$T/volatile/upper", "-m", "mine"],
                            ["status"], ["list"]])
    assert "etc/new" in result["volatile_upper"]
    for rc, out in result["commands"]:
        assert rc == 1 and out == (f"Error: {image} holds the old fstools snapshot chain, not "
                                   f"converted: run `snapshot convert` first, which imports "
                                   f"it (until then it boots read-only, and changes stay in "
                                   f"RAM)\n")
    assert untouched()
    # The next boot is the old chain's again: what was written at run time is gone.
    assert "etc/new" not in booted_tree(boot(rootfs, image, tmp_path, tree=True))


def test_convert_after_booting_the_old_chain_boots_the_same_root(namespaces, rootfs,
                                                                 tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nand", [SNAPSHOT_1, SNAPSHOT_3])
    old = booted_tree(boot(rootfs, image, tmp_path, tree=True))
    converted = invoke("--device", str(image), "convert", "--legacy")
    assert converted.exit_code == 0, converted.output
    result = boot(rootfs, image, tmp_path, tree=True)
    assert booted_tree(result) == old
    assert "mounted 2 snapshots and the volatile record in" in result["log"]
    assert OLD_BOOT not in result["log"]


def test_a_damaged_old_snapshot_boots_the_ones_before_it_and_no_volatile(namespaces, rootfs,
                                                                        tmp_path):
    """The reader's rules (FORMAT.md §8), as convert imports it: the volatile builds on every
    snapshot, so it is left out too."""
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1, SNAPSHOT_3])
    tool.entry(1, DATA, FIRST_SEQ + 1, archives[1], md5=bytes(16))
    untouched = flash_untouched(image)
    result = boot(rootfs, image, tmp_path, tree=True)
    assert booted_tree(result) == old_view(lower(tmp_path), archives[:1])
    assert f"old chain: block 1: old snapshot 2 (seq {FIRST_SEQ + 1}) is damaged, its MD5 " \
           f"does not match" in result["log"]
    assert "mounted 1 snapshots of the old fstools chain (read-only)" in result["log"]
    assert untouched()


def cut_short(spec: dict) -> bytes:
    """An archive whose end is missing, with an MD5 the old tool computed over what is left:
    its first entries unpack before its reading fails."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, data in spec.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()[:-len(spec["etc/last"]) // 2]


def test_an_old_archive_that_fails_midway_boots_exactly_the_snapshots_before_it(
        namespaces, rootfs, tmp_path):
    """Entries go in as they pass: the failed one's are taken out again, and the volatile
    is left out."""
    g, _ = GEOMETRIES["nor"]
    image = tmp_path / "flash.img"
    first, volatile = archive(SNAPSHOT_1), archive(VOLATILE)
    broken = cut_short({"etc/config/network": b"from the broken one\n",
                        "etc/last": random.Random(1).randbytes(20_000)})
    OldTool(image, g).chain([first, broken], volatile)
    result = boot(rootfs, image, tmp_path, tree=True)
    assert booted_tree(result) == old_view(lower(tmp_path), [first])
    assert f"old chain: the old snapshot at block 1 (seq {FIRST_SEQ + 1}): its archive " \
           f"cannot be read" in result["log"]
    assert "mounted 1 snapshots of the old fstools chain" in result["log"]


def test_an_old_chain_with_nothing_readable_boots_the_squashfs_and_says_why(namespaces,
                                                                           rootfs, tmp_path):
    image, tool, archives, where = old_image(tmp_path, "nor", [SNAPSHOT_1], volatile=None)
    tool.entry(0, DATA, FIRST_SEQ, archives[0], length=0)
    assert invoke("--device", str(image), "probe").exit_code == 0
    result = boot(rootfs, image, tmp_path, tree=True)
    assert booted_tree(result) == lower(tmp_path)
    assert f"old chain: block 0: old snapshot 1 (seq {FIRST_SEQ}) is damaged, a broken header " \
           f"(length 0, at most 9863168): nothing before it to import" in result["log"]
    assert "mounted 0 snapshots of the old fstools chain (read-only)" in result["log"]
