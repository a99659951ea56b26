"""The chain on a UBI volume (mtd/ubi.py): the Flash contract on the simulator's ubi type and,
in the kernel tier, on a real UBI volume (nandsim, ubiattach, ubimkvol in the qemu guest);
the injected power-cut sweep of every write command on that volume; and a convert of a real
ubifs there, cut at each step, after which ubifs is as it was, and stays so under writes, or
the chain holds it."""
import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mtd import FlashType, FlashViolation, Geometry, MtdError, SimFlash, open_flash
from sweep import make_tree, run_cli, tree, visible
from test_kernel_sweep import run_cut, sweep_on

KIB = 1024
#: The simulator's UBI volume: 64 LEBs of a 128 KiB NAND block less UBI's two header pages.
SIM_UBI = Geometry(FlashType.UBI, 64 * 124 * KIB, 124 * KIB, 2048, 0)
#: The kernel tier's: a volume on nandsim, attached as /dev/ubi7 (clear of any number the
#: kernel would pick itself) and detached again, nandsim erased, for the tests after these.
UBI_NUMBER = 7
VOLUME = f"/dev/ubi{UBI_NUMBER}_0"
VOLUME_SIZE = "24MiB"

BACKENDS = [pytest.param("sim-ubi"), pytest.param("nandsim-ubi", marks=pytest.mark.kernel)]


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def nandsim_ubi():
    """A dynamic volume `rootfs_data` filling a UBI device on nandsim, as OpenWrt's nand.sh
    makes it (ubimkvol -N rootfs_data)."""
    mtd = os.environ["MTD_NANDSIM"]
    run("flash_erase", "-q", mtd, "0", "0")
    run("ubiattach", "-m", mtd.removeprefix("/dev/mtd"), "-d", str(UBI_NUMBER))
    try:
        run("ubimkvol", f"/dev/ubi{UBI_NUMBER}", "-N", "rootfs_data", "-s", VOLUME_SIZE)
        yield VOLUME
    finally:
        subprocess.run(["umount", "/mnt/ubifs"], capture_output=True)
        run("ubidetach", "-d", str(UBI_NUMBER))
        run("flash_erase", "-q", mtd, "0", "0")


@pytest.fixture(params=BACKENDS)
def volume(request, tmp_path):
    """A writable handle on an erased volume."""
    if request.param == "sim-ubi":
        SimFlash.create(tmp_path / "ubi.img", SIM_UBI)
        with SimFlash(tmp_path / "ubi.img", writable=True) as flash:
            yield flash
        return
    device = request.getfixturevalue("nandsim_ubi")
    run("ubiupdatevol", "-t", device)
    with open_flash(device, writable=True) as flash:
        yield flash


def sysfs(attribute: str, device: bool = False) -> str:
    where = f"ubi{UBI_NUMBER}" if device else f"ubi{UBI_NUMBER}_0"
    return Path(f"/sys/class/ubi/{where}/{attribute}").read_text().strip()


# -- the Flash contract ------------------------------------------------------------------------

def test_geometry_is_the_volumes_leb_and_the_devices_min_io_size(volume):
    g = volume.geometry
    assert g.is_ubi and not g.is_nand and g.programs_once
    if isinstance(volume, SimFlash):
        assert g == SIM_UBI
    else:
        assert g.erasesize == int(sysfs("usable_eb_size"))
        assert g.writesize == int(sysfs("min_io_size", device=True))
        assert g.size == int(sysfs("reserved_ebs")) * g.erasesize
        assert g.oobsize == 0
    # A LEB is a physical block less UBI's headers.
    assert g.erasesize & (g.erasesize - 1)


def test_an_erased_leb_reads_back_erased(volume):
    g = volume.geometry
    volume.write(g.block_offset(2), b"\x00" * g.writesize)
    volume.erase(g.block_offset(2), g.erasesize)
    assert volume.read(g.block_offset(2), g.erasesize) == b"\xff" * g.erasesize


def test_a_write_crossing_a_leb_boundary_reads_back(volume):
    g = volume.geometry
    data = os.urandom(4 * g.writesize)
    offset = g.block_offset(4) - 2 * g.writesize
    volume.write(offset, data)
    assert volume.read(offset, len(data)) == data


def test_an_unaligned_write_fails_with_a_clear_error(volume):
    with pytest.raises(MtdError) as e:
        volume.write(volume.geometry.writesize // 2, b"\x00" * volume.geometry.writesize)
    assert e.value.errno == errno.EINVAL and "aligned" in str(e.value)


def test_change_gives_the_leb_new_contents_and_nothing_else(volume):
    g = volume.geometry
    volume.write(g.block_offset(3), b"\x11" * (4 * g.writesize))
    volume.change(3, b"\x22" * g.writesize)
    assert volume.read(g.block_offset(3), g.erasesize) == \
        b"\x22" * g.writesize + b"\xff" * (g.erasesize - g.writesize)


def test_no_leb_is_bad_and_none_can_be_marked_bad(volume):
    assert not any(volume.is_bad(b) for b in range(volume.geometry.blocks))
    with pytest.raises(MtdError) as e:
        volume.mark_bad(1)
    assert e.value.errno == errno.EOPNOTSUPP and "UBI retires failing ones itself" in str(e.value)
    assert volume.stats().bad_blocks == 0


def test_a_page_is_programmed_once_between_erases():
    """The simulator keeps NAND's rule for UBI, whose LEBs lie on NAND."""
    with tempfile.TemporaryDirectory() as work:
        SimFlash.create(Path(work, "ubi.img"), SIM_UBI)
        with SimFlash(Path(work, "ubi.img"), writable=True) as flash:
            flash.write(0, b"\x00" * 2048)
            with pytest.raises(FlashViolation):
                flash.write(0, b"\x00" * 2048)


@pytest.mark.parametrize("faults", [{"bad_blocks": [3]}, {"bitflips": {100: "corrected"}},
                                    {"wear_limits": {3: 10}}], ids=["bad", "bitflip", "wear"])
def test_the_simulator_refuses_faults_ubi_hides(tmp_path, faults):
    with pytest.raises(ValueError):
        SimFlash.create(tmp_path / "ubi.img", SIM_UBI, **faults)


@pytest.mark.parametrize("faults", [{"bitflips": {100: "corrected"}}, {"wear_limits": {3: 10}}],
                         ids=["bitflip", "wear"])
def test_faults_ubi_hides_cannot_be_added_to_a_volume_later(tmp_path, faults):
    SimFlash.create(tmp_path / "ubi.img", SIM_UBI)
    with pytest.raises(ValueError, match="UBI handles them itself"):
        SimFlash.add_faults(tmp_path / "ubi.img", **faults)
    with SimFlash(tmp_path / "ubi.img", writable=True) as flash:
        flash.write(0, b"\x00" * 2048)


@pytest.mark.parametrize("cut_change", [True, False], ids=["change", "erase"])
def test_a_cut_change_or_erase_leaves_the_leb_whole_or_new(tmp_path, cut_change):
    """UBI makes both atomic; the simulator's power cut keeps that, over many seeds."""
    seen = set()
    for seed in range(12):
        image = tmp_path / f"ubi{seed}.img"
        SimFlash.create(image, SIM_UBI)
        with SimFlash(image, writable=True) as flash:
            flash.write(0, b"\x11" * 2048)
        op = ("f.change(0, b'\\x22' * 2048)" if cut_change else
              f"f.erase(0, {SIM_UBI.erasesize})")
        script = (f"from mtd import SimFlash\nf = SimFlash({str(image)!r}, writable=True)\n"
                  f"{op}\n")
        env = dict(os.environ, MTDSIM_POWERCUT_AFTER="1", MTDSIM_SEED=str(seed))
        assert subprocess.run([sys.executable, "-c", script],
                              env=env).returncode == 99
        with SimFlash(image) as flash:
            block = flash.read(0, SIM_UBI.erasesize)
        new = (b"\x22" * 2048 if cut_change else b"") + b"\xff" * (
            SIM_UBI.erasesize - (2048 if cut_change else 0))
        old = b"\x11" * 2048 + b"\xff" * (SIM_UBI.erasesize - 2048)
        assert block in (old, new), f"seed {seed}"
        seen.add(block == new)
    assert seen == {True, False}


# -- finding the volume ------------------------------------------------------------------------

@pytest.mark.kernel
def test_the_volume_is_found_by_name_and_as_the_default_device(nandsim_ubi):
    """No MTD partition in the guest is called rootfs_data, so the default device is the
    UBI volume of that name, as fstools finds it."""
    assert '"rootfs_data"' not in Path("/proc/mtd").read_text()
    with open_flash("ubi:rootfs_data") as by_name, open_flash(None) as default:
        assert by_name.name == default.name == nandsim_ubi
        assert default.geometry.is_ubi


@pytest.mark.kernel
def test_an_erase_leaves_the_leb_unmapped_and_a_write_maps_it(nandsim_ubi):
    with open_flash(nandsim_ubi, writable=True) as flash:
        g = flash.geometry
        flash.write(g.block_offset(5), b"\x00" * g.writesize)
        assert flash.is_mapped(5)
        flash.erase(g.block_offset(5), g.erasesize)
        assert not flash.is_mapped(5)


@pytest.mark.kernel
def test_a_volume_ubifs_has_mounted_is_refused_for_writing_in_one_line(nandsim_ubi, tmp_path):
    run("ubiupdatevol", "-t", nandsim_ubi)
    os.makedirs("/mnt/ubifs", exist_ok=True)
    run("mount", "-t", "ubifs", nandsim_ubi, "/mnt/ubifs")
    try:
        result = subprocess.run([sys.executable, "-m", "snapshot", "--device", nandsim_ubi,
                                 "format", "--force"], capture_output=True, text=True)
    finally:
        run("umount", "/mnt/ubifs")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"Error: {nandsim_ubi}: in use: another writer (a mounted filesystem, or another "
        f"snapshot command) has it open"]


# -- the power-cut sweep on a real volume ----------------------------------------------------

#: Every write command the CLI has, but the scrubs (a UBI volume never reports a bit flip)
#: and the repair of a volatile record damaged behind the flash layer's back (a volume's
#: node takes no plain writes).
KERNEL_SWEPT = ["format", "push", "save", "rollback", "pushtrial", "savetrial", "confirm",
                "trialrollback", "squash"]


@pytest.mark.kernel
@pytest.mark.parametrize("name", KERNEL_SWEPT)
def test_every_cut_on_a_ubi_volume_leaves_old_or_new_state(name, nandsim_ubi, monkeypatch):
    # Everything in a tmpfs: squash's trees hold whiteouts, which the guest's /tmp refuses
    # to make when it is the overlay over the host's (a checkout under /tmp, as CI's can be).
    with tempfile.TemporaryDirectory(dir="/dev/shm") as work:
        monkeypatch.setenv("TMPDIR", work)
        monkeypatch.setattr(tempfile, "tempdir", work)
        sweep_on(nandsim_ubi, name, Path(work), "ubi-nandsim")


# -- convert from a real ubifs ---------------------------------------------------------------

MOUNT = Path("/mnt/ubifs")


def ubifs_files(root: Path) -> dict:
    return {k: v for k, v in tree(root).items() if not k.startswith("lost+found")}


#: How the stock ubifs got its files. "mounted": formatted by its first mount on the emptied
#: volume, then written, so its log has moved on and LEB 3 is free again: the commit takes it
#: by a plain erase and program. "mkfs": a mkfs.ubifs image (-F, as for ubiupdatevol), whose
#: log is in LEB 3, so ubifs fills the whole anchor area and the commit must take LEB 3 by an
#: atomic change.
UBIFS_LAYOUTS = ["mounted", "mkfs"]


def make_ubifs(device: str, content: Path, layout: str = "mounted") -> dict:
    """A stock overlay holding content (UBIFS_LAYOUTS); returns what it holds."""
    MOUNT.mkdir(parents=True, exist_ok=True)
    if layout == "mkfs":
        image = content.parent / f"{content.name}.ubifs"
        run("mkfs.ubifs", "-F", "-m", sysfs("min_io_size", device=True), "-e",
            sysfs("usable_eb_size"), "-c", sysfs("reserved_ebs"), "-r", str(content), "-o",
            str(image))
        run("ubiupdatevol", device, str(image))
        with open_flash(device) as flash:
            assert all(flash.is_mapped(b) for b in range(4)), "ubifs leaves an anchor LEB free"
        run("mount", "-t", "ubifs", "-o", "ro", device, str(MOUNT))
    else:
        run("ubiupdatevol", "-t", device)
        run("mount", "-t", "ubifs", device, str(MOUNT))
        run("cp", "-a", f"{content}/.", str(MOUNT))
    held = ubifs_files(MOUNT)
    run("umount", str(MOUNT))
    return held


def ubifs_survives_writes(device: str, held: dict) -> None:
    """ubifs mounts with exactly what it held, then takes writes enough to reach the LEBs
    it had free (where the cut convert wrote), and reads them all back after a remount."""
    run("mount", "-t", "ubifs", device, str(MOUNT))
    try:
        assert ubifs_files(MOUNT) == held
        for i in range(3):
            (MOUNT / f"fill{i}").write_bytes(os.urandom(6 * 1024 * KIB))
        run("sync")
        written = ubifs_files(MOUNT)
    finally:
        run("umount", str(MOUNT))
    run("mount", "-t", "ubifs", device, str(MOUNT))
    try:
        assert ubifs_files(MOUNT) == written
        for i in range(3):
            (MOUNT / f"fill{i}").unlink()
    finally:
        run("umount", str(MOUNT))


@pytest.mark.kernel
@pytest.mark.parametrize("layout", UBIFS_LAYOUTS)
def test_a_cut_convert_of_ubifs_leaves_ubifs_intact_or_the_chain(nandsim_ubi, tmp_path, layout):
    """Every cut of `convert --from` over a real ubifs: the chain, holding the tree, or no
    chain and ubifs as it was, which then writes into the LEBs the convert had written
    (ubifs unmaps a free LEB before it takes it) and reads everything back."""
    device = nandsim_ubi
    content = make_tree(tmp_path / "overlay", 3, 600)
    upper = make_tree(tmp_path / "upper", 4, 300)
    args = ["convert", "--from", str(upper)]
    held = make_ubifs(device, content, layout)
    count = tmp_path / "count"
    result = run_cut(device, args, count_to=count)
    assert result.returncode == 0, result.stderr
    converted = visible(device)
    assert converted != "no chain" and converted[4] == tree(upper)
    total = int(count.read_text())
    outcomes = []
    for cut in range(1, total + 1):
        held = make_ubifs(device, content, layout)
        result = run_cut(device, args, cut=cut)
        assert result.returncode == 99, f"cut {cut}: {result.stderr}"
        state = visible(device)
        if state == "no chain":
            ubifs_survives_writes(device, held)
            outcomes.append("ubifs")
        else:
            assert state == converted, f"convert cut {cut} of {total}"
            outcomes.append("chain")
    assert outcomes[0] == "ubifs" and outcomes[-1] == "chain", outcomes
    print(f"convert over ubifs ({layout}): {total} cut points, {outcomes}")


@pytest.mark.kernel
def test_a_convert_over_ubifs_with_a_reader_open_is_refused_with_ubifs_intact(nandsim_ubi,
                                                                              tmp_path):
    """The commit over ubifs's LEB 3 must be atomic: while another process holds the volume
    open, UBI refuses the atomic change, and the convert fails instead of erasing that LEB
    first; ubifs is as it was."""
    content = make_tree(tmp_path / "overlay", 3, 200)
    held = make_ubifs(nandsim_ubi, content, "mkfs")
    upper = make_tree(tmp_path / "upper", 4, 100)
    with open_flash(nandsim_ubi):
        result = subprocess.run([sys.executable, "-m", "snapshot", "--device", nandsim_ubi,
                                 "convert", "--from", str(upper)], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: {nandsim_ubi}: UBI_IOCEBCH at 0x{3 * int(sysfs('usable_eb_size')):x} failed: "
        f"busy: another process has it open"]
    assert visible(nandsim_ubi) == "no chain"
    ubifs_survives_writes(nandsim_ubi, held)


@pytest.mark.kernel
def test_with_a_reader_open_a_rewrite_falls_back_unless_it_must_be_atomic(nandsim_ubi):
    """UBI refuses the atomic LEB change while another process (here a second handle) has
    the volume open; an anchor block is then erased and programmed as on raw flash, and a
    rewrite that must be atomic (convert's, over ubifs) fails with nothing written."""
    from snapshot.store.chain import rewrite_block
    run("ubiupdatevol", "-t", nandsim_ubi)
    with open_flash(nandsim_ubi, writable=True) as flash, open_flash(nandsim_ubi):
        g = flash.geometry
        old = b"\x11" * g.writesize + b"\xff" * (g.erasesize - g.writesize)
        new = b"\x22" * g.writesize + b"\xff" * (g.erasesize - g.writesize)
        flash.write(g.block_offset(2), old[:g.writesize])
        with pytest.raises(MtdError) as e:
            rewrite_block(flash, 2, new[:g.writesize], atomic=True)
        assert e.value.errno == errno.EBUSY
        assert flash.read(g.block_offset(2), g.erasesize) == old
        rewrite_block(flash, 2, new[:g.writesize])
        assert flash.read(g.block_offset(2), g.erasesize) == new


def test_an_uncorrectable_read_is_reported_as_the_protocol_says(monkeypatch):
    """UBI fails such a read with EBADMSG; read_ecc reports it as uncorrectable, so the chain
    takes the record for damaged, as on raw NAND (read itself raises)."""
    from mtd import ubi
    volume = ubi.UbiVolume.__new__(ubi.UbiVolume)
    volume.name, volume.geometry, volume._fd = "/dev/ubi0_0", SIM_UBI, -1

    def pread(fd, length, offset):
        raise OSError(errno.EBADMSG, os.strerror(errno.EBADMSG))
    monkeypatch.setattr(ubi.os, "pread", pread)
    data, flips = volume.read_ecc(0, 2048)
    assert flips.uncorrectable == 1 and len(data) == 2048
    with pytest.raises(MtdError) as e:
        volume.read(0, 2048)
    assert "uncorrectable bit flips" in str(e.value)


# -- convert from ubifs, on the simulator -----------------------------------------------------

def mkfs_ubifs(work: Path) -> Path:
    """A real ubifs image for SIM_UBI (mkfs.ubifs, mtd-utils), holding an overlay upper dir:
    its LEBs 0-3 (superblock, master nodes, the first log LEB) and some others in use."""
    root = make_tree(work / "ubifs-root" / "upper", 6, 200).parent
    (root / "work").mkdir()
    image = work / "ubifs.img"
    subprocess.run(["mkfs.ubifs", "-m", str(SIM_UBI.writesize), "-e", str(SIM_UBI.erasesize),
                    "-c", str(SIM_UBI.blocks), "-r", str(root), "-o", str(image)], check=True,
                   env=dict(os.environ, PATH=f"{os.environ['PATH']}:/usr/sbin:/sbin"))
    return image


def ubifs_volume(path: Path, ubifs: Path) -> dict[int, bytes]:
    """A simulated volume holding the ubifs image as UBI would (free LEBs unmapped, so
    erased); returns LEB -> contents of the LEBs ubifs uses."""
    SimFlash.create(path, SIM_UBI)
    data, g = ubifs.read_bytes(), SIM_UBI
    used = {}
    with SimFlash(path, writable=True) as flash:
        for leb in range(len(data) // g.erasesize):
            block = data[leb * g.erasesize:(leb + 1) * g.erasesize]
            if block == b"\xff" * g.erasesize:
                continue
            end = len(block.rstrip(b"\xff"))
            end += -end % g.writesize
            flash.write(g.block_offset(leb), block[:end])
            used[leb] = block
    return used


class UbifsConvert:
    """The uncut convert of a simulated volume holding a real ubifs: the base image, the
    LEBs ubifs uses, the converted state, and how many flash operations the convert takes.
    Built once, when the cut tests are collected."""

    def __init__(self, work: Path):
        self.work = work
        self.base = work / "base.img"
        self.used = ubifs_volume(self.base, mkfs_ubifs(work))
        assert {0, 1, 2, 3} <= set(self.used)
        self.upper = make_tree(work / "upper", 7, 300)
        self.args = ["convert", "--from", str(self.upper)]
        done = self.copy(work / "done.img")
        with SimFlash(done) as flash:
            before = flash.stats()
        result = run_cli(str(done), self.args)
        assert result.returncode == 0, result.stderr
        with SimFlash(done) as flash:
            after = flash.stats()
        self.operations = after.programs + after.erases - before.programs - before.erases
        self.converted = visible(str(done))

    def copy(self, image: Path) -> Path:
        for suffix in ("", ".sim.json"):
            Path(f"{image}{suffix}").write_bytes(Path(f"{self.base}{suffix}").read_bytes())
        return image


_UBIFS: list[UbifsConvert] = []


def ubifs_convert() -> UbifsConvert:
    if not _UBIFS:
        _UBIFS.append(UbifsConvert(Path(tempfile.mkdtemp(prefix="snapshot-ubifs-"))))
    return _UBIFS[0]


def pytest_generate_tests(metafunc):
    if "ubifs_cut" in metafunc.fixturenames:
        # Simulator tests: the kernel tier's guest, which runs only kernel tests, skips the
        # build.
        in_guest = os.environ.get("SNAPSHOT_KERNEL_GUEST") == "1"
        cuts = range(1, 1 if in_guest else ubifs_convert().operations + 1)
        metafunc.parametrize("ubifs_cut", cuts, ids=[f"convert-ubifs-cut{c}" for c in cuts])


def test_convert_over_ubifs_gives_the_chain_of_the_upper_dir():
    case = ubifs_convert()
    assert case.converted != "no chain"
    assert case.converted[3] == ((1, "converted from ubifs"),)
    assert case.converted[4] == tree(case.upper)


def test_a_cut_convert_over_ubifs_leaves_every_leb_ubifs_uses_or_the_chain(tmp_path,
                                                                           ubifs_cut):
    """Before the commit every LEB ubifs uses holds what it held (the record went into
    LEBs ubifs left unmapped); the commit is an atomic change of LEB 3, the switch."""
    case = ubifs_convert()
    image = case.copy(tmp_path / "cut.img")
    result = run_cli(str(image), case.args, cut=ubifs_cut, seed=ubifs_cut)
    assert result.returncode == 99, result.stderr
    state = visible(str(image))
    if state == "no chain":
        with SimFlash(image) as flash:
            g = flash.geometry
            assert {leb: flash.read(g.block_offset(leb), g.erasesize)
                    for leb in case.used} == case.used
    else:
        assert state == case.converted, f"convert over ubifs, cut {ubifs_cut}"


# -- the stock tools' marks on a volume --------------------------------------------------------

def chain_with_newest_entry_in(image: Path, block: int, work: Path) -> None:
    """A chain on a simulated volume whose newest anchor entry lies in anchor block
    `block` (saves until it does)."""
    from snapshot import operations
    from snapshot.store.chain import Chain, scan_anchors
    SimFlash.create(image, SIM_UBI)
    with open_flash(str(image), writable=True) as flash:
        operations.format_device(flash)
    for n in range(200):
        with open_flash(str(image), writable=True) as flash:
            if n and scan_anchors(flash).newest.block == block:
                return
            operations.save(Chain(flash), make_tree(work / f"v{n}", n, 1))
    raise AssertionError(f"no entry reached anchor block {block}")


@pytest.mark.parametrize("block", [1, 2, 3])
def test_an_emptied_volume_gives_an_empty_chain_never_the_old_one(tmp_path, block):
    """factoryreset's UBI_IOCVOLUP 0 (and a sysupgrade's new volume) leave every LEB
    erased: the boot starts an empty chain, whichever anchor block held the newest entry."""
    from snapshot.store import marks
    from snapshot.store.chain import Chain
    image = tmp_path / "ubi.img"
    chain_with_newest_entry_in(image, block, tmp_path)
    with SimFlash(image, writable=True) as flash:
        flash.erase(0, SIM_UBI.size)
        assert marks.decide(flash) == (marks.CHAIN, "reset")
        logged = []
        assert marks.settle(flash, lambda line, loud=False: logged.append(line)) == marks.CHAIN
        chain = Chain(flash)
        assert chain.records == [] and chain.mark.kind == "anchor"
    assert logged == [f"{image} starts with an emptied UBI volume (a factory reset, firstboot, "
                      f"or a sysupgrade without settings): started an empty chain"]


def test_a_volume_holding_ubifs_boots_the_stock_way_and_is_left_alone(tmp_path):
    """A sysupgrade that kept settings: a new volume with ubifs (holding sysupgrade.tgz)."""
    from snapshot.store import marks
    image = tmp_path / "ubi.img"
    used = ubifs_volume(image, mkfs_ubifs(tmp_path))
    with SimFlash(image, writable=True) as flash:
        assert marks.decide(flash) == (marks.STOCK, None)
        assert marks.settle(flash) == marks.STOCK
        g = flash.geometry
        assert {leb: flash.read(g.block_offset(leb), g.erasesize) for leb in used} == used


def test_format_refuses_a_ubifs_without_force(tmp_path):
    image = tmp_path / "ubi.img"
    ubifs_volume(image, mkfs_ubifs(tmp_path))
    result = run_cli(str(image), ["format"])
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {image} holds a ubifs filesystem; add --force to " \
                                    f"replace it"


def test_the_default_device_is_a_ubi_volume_when_no_mtd_partition_has_the_name(tmp_path):
    from mtd import ubi
    for name, volume in (("kernel", "ubi0_0"), ("rootfs_data", "ubi0_1")):
        (tmp_path / volume).mkdir()
        (tmp_path / volume / "name").write_text(f"{name}\n")
    assert ubi.path_for_name("rootfs_data", str(tmp_path)) == "/dev/ubi0_1"
    assert ubi.volume_exists("kernel", str(tmp_path))
    assert not ubi.volume_exists("rootfs_data2", str(tmp_path))


# -- convert at boot: what `snapshot convert` staged on the ubifs ------------------------------

@pytest.mark.kernel
def test_a_staged_ubifs_overlay_is_converted_at_boot_and_a_bad_one_set_aside(nandsim_ubi,
                                                                              tmp_path):
    """convert_pending (the first step of the preinit hook's `snapshot mount`) converts
    what stage_for_boot put on the ubifs; a staged archive that cannot be converted is
    renamed aside, ubifs untouched otherwise, and the next boot does not try again."""
    from snapshot import convert
    content = make_tree(tmp_path / "overlay" / "upper", 8, 200).parent
    (content / "work").mkdir()
    logged = []

    def log(line, loud=False):
        logged.append(line)
    for damaged in (True, False):
        held = make_ubifs(nandsim_ubi, content)
        run("mount", "-t", "ubifs", nandsim_ubi, str(MOUNT))
        try:
            convert.stage_for_boot(MOUNT, "converted from ubifs", 1)
            if damaged:
                staged = MOUNT / convert.PENDING / "overlay.tar.gz"
                staged.write_bytes(staged.read_bytes()[:100])
        finally:
            run("umount", str(MOUNT))
        assert convert.convert_pending(nandsim_ubi, log) is not damaged
        if damaged:
            assert visible(nandsim_ubi) == "no chain"
            run("mount", "-t", "ubifs", "-o", "ro", nandsim_ubi, str(MOUNT))
            try:
                assert (MOUNT / f"{convert.PENDING}.failed").is_dir()
                assert not (MOUNT / convert.PENDING).exists()
                assert {k: v for k, v in ubifs_files(MOUNT).items()
                        if not k.startswith(convert.PENDING)} == held
            finally:
                run("umount", str(MOUNT))
            assert convert.convert_pending(nandsim_ubi, log) is False
        else:
            state = visible(nandsim_ubi)
            assert state[3] == ((1, "converted from ubifs"),)
            assert state[4] == tree(content / "upper")
            assert convert.convert_pending(nandsim_ubi, log) is False
    assert any("failed" in line for line in logged) and \
        logged[-1] == f"converted {nandsim_ubi}: snapshot 1 (converted from ubifs)"


@pytest.mark.kernel
def test_flash_info_names_the_ubi_backend_and_no_bad_blocks(nandsim_ubi):
    import json
    result = subprocess.run([sys.executable, "-m", "snapshot", "--device", "ubi:rootfs_data",
                             "flash", "info", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["device"] == nandsim_ubi and info["backend"] == "ubi"
    assert info["geometry"]["type"] == "ubi" and info["bad_blocks"] == []
    assert info["geometry"]["erasesize"] == int(sysfs("usable_eb_size"))
