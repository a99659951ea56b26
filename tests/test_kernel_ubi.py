"""Kernel tier, end to end, on a NAND router's `rootfs_data`: a UBI volume (guest_boot/guest.sh
with KBOOT_UBI=1 attaches UBI to the block2mtd flash, which persists across boots, and makes
the volume once, as OpenWrt's nand.sh does). The preinit hook finds no MTD partition called
rootfs_data and takes the UBI volume of that name, as fstools does.

- A new, empty volume boots an empty chain; push and save survive a reboot.
- fstools' real factoryreset (UBI_IOCVOLUP 0) and a sysupgrade's new volume each give an
  empty chain, never the old one; a sysupgrade that kept settings (a new volume, ubifs on it
  holding sysupgrade.tgz) boots the stock way through fstools' real mount_root, with the
  settings restored.
- qemu is killed during push and save (test_kernel_boot's kills): the next boot shows the
  old state or the new one.
- A stock ubifs overlay, booted through fstools' real mount_root, is converted: `snapshot
  convert` stages it on the ubifs and reboots, and that boot's preinit converts it and boots
  the chain with exactly what ubifs held.
"""
import hashlib
import io
import tarfile

import pytest

from test_kernel_boot import Router, assert_booted_from_chain, cli, delete, kernel_vm, life, \
    power_cuts, report, sh, view_diff, write
from test_kernel_convert import CHANGES, CHAIN_MOUNTS, cli_json, converting_boot, final
from test_kernel_marks import KEPT_NETWORK, install_fstools

pytestmark = pytest.mark.kernel_boot

EMPTIED = "starts with an emptied UBI volume (a factory reset, firstboot, or a sysupgrade " \
          "without settings): started an empty chain"
UBIFS_MOUNTS = {"/": "overlay", "/rom": "squashfs", "/overlay": "ubifs", "/volatile": None,
                "/tmp": "tmpfs"}


@pytest.fixture
def ubi_router(tmp_path) -> Router:
    return Router(kernel_vm(), tmp_path, ubi=True)


def assert_empty_chain_booted(boot, squashfs_view: dict) -> None:
    assert any(EMPTIED in line for line in boot.snapshot_log()), boot.describe()
    assert_booted_from_chain(boot, 0, False)
    state = boot.states["boot"]
    assert state["chain"] == {"snapshots": [], "volatile": None}, boot.describe()
    assert state["view"] == squashfs_view, view_diff(state["view"], squashfs_view)


def test_a_ubi_volume_boots_its_chain_and_no_reset_or_new_volume_brings_it_back(tmp_path):
    router = Router(kernel_vm(), tmp_path, ubi=True)
    install_fstools(router)
    squashfs_view = life.manifest(router.tree, life.NOT_FILES)
    # 1: the volume nand.sh made, empty: the chain starts empty; a push and a save.
    first = router.boot([report("boot"),
                         write("/etc/config/network", "config interface 'lan' # ubi\n"),
                         delete("/etc/banner"), cli("push", "-m", "on ubi"),
                         write("/etc/saved", "saved\n"), cli("save"), report("saved"),
                         write("/etc/unsaved", "unsaved\n")])
    assert "kboot: rootfs_data is the UBI volume /dev/ubi0_0" in first.output, first.describe()
    assert_empty_chain_booted(first, squashfs_view)
    # 2: exactly what was pushed and saved; then fstools' own factoryreset.
    second = router.boot([report("boot"),
                          sh("factoryreset -y && dmesg | grep 'factoryreset: '")])
    assert_booted_from_chain(second, 1, True)
    saved = first.states["saved"]["view"]
    assert second.states["boot"]["view"] == saved, \
        view_diff(second.states["boot"]["view"], saved)
    assert "etc/unsaved" not in saved and "etc/banner" not in saved
    assert "will be erased on next mount" in second.output, second.describe()
    # 3: the emptied volume is an empty chain; a save on it.
    third = router.boot([report("boot"), write("/etc/after-reset", "x\n"), cli("save")])
    assert_empty_chain_booted(third, squashfs_view)
    # 4: a sysupgrade without settings makes the volume anew: an empty chain again.
    router.env["KBOOT_RECREATE"] = "1"
    fourth = router.boot([report("boot"), write("/etc/before-upgrade", "x\n"), cli("save")])
    assert_empty_chain_booted(fourth, squashfs_view)
    # 5: a sysupgrade that kept settings: a new volume, ubifs on it holding sysupgrade.tgz.
    # The boot is the stock one, through fstools' real mount_root, with the settings back.
    settings = router.results / "sysupgrade.tgz"
    with tarfile.open(settings, "w:gz") as tar:
        info = tarfile.TarInfo("etc/config/network")
        info.size, info.mode = len(KEPT_NETWORK), 0o644
        tar.addfile(info, io.BytesIO(KEPT_NETWORK))
    router.env.update(KBOOT_UBIFS="1", KBOOT_UBIFS_SETTINGS=str(settings))
    fifth = router.boot([report("boot")])
    state = fifth.states["boot"]
    assert state["chain"] is None and state["mounts"] == UBIFS_MOUNTS, fifth.describe()
    assert not fifth.snapshot_log(), fifth.describe()
    assert "kboot: stock mount_root" not in fifth.output, fifth.describe()
    view = state["view"]
    kept = f"f 644 {len(KEPT_NETWORK)} {hashlib.sha1(KEPT_NETWORK).hexdigest()}"
    assert view["etc/config/network"] == kept, fifth.describe()
    assert "etc/before-upgrade" not in view and "etc/after-reset" not in view
    print(f"ubi life: {router.boots} boots in {router.seconds:.0f} s")


def test_power_cuts_during_push_on_a_ubi_volume(ubi_router):
    """A kill during `snapshot push` on the volume: the old chain or the new one."""
    power_cuts(ubi_router, "push", "push on a UBI volume")


def test_power_cuts_during_save_on_a_ubi_volume(ubi_router):
    """A kill during `snapshot save` on the volume: the old volatile record or the new one."""
    power_cuts(ubi_router, "save", "save on a UBI volume")


def test_convert_a_ubifs_overlay_then_boot_the_chain(tmp_path):
    """A stock NAND router: ubifs on the volume, booted by fstools' real mount_root.
    `snapshot convert` stages the upper dir on the ubifs and reboots; that boot's preinit
    converts it before anything mounts the volume, and boots the chain, whose snapshot 1
    holds exactly the files ubifs held, the deletion, the symlink and the file mode included.
    The boot after is the chain's too."""
    router = Router(kernel_vm(), tmp_path, ubi=True)
    install_fstools(router)
    router.env["KBOOT_UBIFS"] = "1"
    first = converting_boot(router, [report("boot"), *CHANGES, report("ubifs"),
                                     final("convert")])
    ubifs = first.states["ubifs"]
    assert ubifs["chain"] is None and ubifs["mounts"] == UBIFS_MOUNTS, first.describe()
    assert not first.snapshot_log(), first.describe()
    view = ubifs["view"]
    assert "etc/banner" not in view and view["etc/secret"].startswith("f 600 ")
    assert "the next boot converts /dev/ubi0_0; rebooting" in first.output, first.describe()
    del router.env["KBOOT_UBIFS"]

    for n in (2, 3):
        boot = router.boot([report("boot"), cli("list", "--json"), cli("check")])
        converted = any("converted /dev/ubi0_0: snapshot 1 (converted from ubifs)" in line
                        for line in boot.snapshot_log())
        assert converted == (n == 2), boot.describe()
        assert_booted_from_chain(boot, 1, False)
        state = boot.states["boot"]
        assert state["mounts"] == CHAIN_MOUNTS
        assert state["view"] == view, view_diff(state["view"], view)
        listing = cli_json(boot, "list", "--json")
        assert [(s["seq"], s["message"], s["integrity"].startswith("damaged")) for s in listing["snapshots"]] == \
            [(1, "converted from ubifs", False)], listing
        assert set(state["overlay_upper"]) == set(ubifs["overlay_upper"]) | {"volatile"}
    print(f"ubifs convert end to end: {router.boots} boots in {router.seconds:.0f} s")
