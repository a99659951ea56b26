"""The OpenWrt side: the preinit hook and the init.d service run under busybox ash with the
OpenWrt functions they call stubbed, and the device named in the configuration file (which
test_config.py reads through the real uci and the file parser)."""
import subprocess
from pathlib import Path

import pytest

from openwrt_tools import tool
from snapshot import config

INITSCRIPTS = Path(__file__).parent.parent / "initscripts"
BUSYBOX = "busybox"


def ash(script: str, tmp_path: Path, env: dict | None = None) -> str:
    """Run script under busybox ash with a fake `snapshot` that logs its arguments and
    answers `mount` with $MOUNT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "snapshot"
    fake.write_text('#!/bin/sh\necho "snapshot $*" >> "$CALLS"\n'
                    'case "$*" in *mount*) exit ${MOUNT:-0};; esac\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    run_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), **(env or {})}
    result = subprocess.run([BUSYBOX, "ash", "-c", script], env=run_env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return calls.read_text() + result.stdout


PREINIT = """
mount_root() { echo "stock mount_root"; }
boot_run_hook() { echo "hook $1"; }
. HOOK
do_mount_root
"""
#: /proc/mtd of a router whose rootfs_data is an MTD partition.
MTD_ROUTER = 'dev:    size   erasesize  name\nmtd3: 00800000 00010000 "rootfs_data"\n'
#: /proc/mtd of a NAND router whose rootfs_data is a UBI volume inside the `ubi` partition.
UBI_ROUTER = 'dev:    size   erasesize  name\nmtd4: 07000000 00020000 "ubi"\n'


def preinit(tmp_path: Path, env: dict | None = None, proc_mtd: str = MTD_ROUTER,
            cmdline: str = "console=ttyS0 rootfstype=squashfs\n") -> str:
    """Run the preinit hook's do_mount_root, reading the given /proc/mtd and /proc/cmdline."""
    (tmp_path / "mtd").write_text(proc_mtd)
    (tmp_path / "cmdline").write_text(cmdline)
    source = (INITSCRIPTS / "lib/preinit/81_snapshot").read_text()
    hook = tmp_path / "81_snapshot"
    hook.write_text(source.replace("/proc/mtd", str(tmp_path / "mtd"))
                    .replace("/proc/cmdline", str(tmp_path / "cmdline")))
    return ash(PREINIT.replace("HOOK", str(hook)), tmp_path, env)


def test_preinit_boots_through_snapshot_when_the_partition_holds_a_chain(tmp_path):
    out = preinit(tmp_path, {"MOUNT": "0"})
    assert out.startswith("snapshot --device mtd:rootfs_data mount\n")
    assert "stock mount_root" not in out
    assert "hook preinit_mount_root" in out


def test_preinit_keeps_the_stock_behaviour_without_a_chain(tmp_path):
    """`snapshot mount` exits 6: no chain there, nothing mounted, nothing went wrong."""
    out = preinit(tmp_path, {"MOUNT": "6"})
    assert "stock mount_root" in out and "failed" not in out


def test_preinit_falls_back_to_stock_when_snapshot_mount_fails(tmp_path):
    out = preinit(tmp_path, {"MOUNT": "1"})
    assert "snapshot --device mtd:rootfs_data mount" in out and "stock mount_root" in out


def test_preinit_leaves_the_flash_alone_in_failsafe(tmp_path):
    out = preinit(tmp_path, {"FAILSAFE": "true"})
    assert "stock mount_root" in out and "snapshot" not in out.replace("snapshot:", "")


def test_preinit_follows_fstools_overlay_name(tmp_path):
    out = preinit(tmp_path, proc_mtd=MTD_ROUTER.replace("rootfs_data", "ubi_data"),
                  cmdline="console=ttyS0 fstools_overlay_name=ubi_data rootfstype=squashfs\n")
    assert "snapshot --device mtd:ubi_data mount" in out


def test_preinit_takes_the_ubi_volume_when_no_mtd_partition_has_the_name(tmp_path):
    out = preinit(tmp_path, {"MOUNT": "0"}, proc_mtd=UBI_ROUTER)
    assert "snapshot --device ubi:rootfs_data mount" in out


@pytest.mark.parametrize("proc_mtd", [MTD_ROUTER, UBI_ROUTER], ids=["mtd", "ubi"])
@pytest.mark.parametrize("status", ["0", "1", "6"])
def test_preinit_starts_one_snapshot_process_per_boot(tmp_path, proc_mtd, status):
    """A UBI volume's staged conversion and the question whether there is a chain are
    `snapshot mount`'s own first steps (DESIGN.md §8): one Python start per boot."""
    out = preinit(tmp_path, {"MOUNT": status}, proc_mtd=proc_mtd)
    assert len([line for line in out.splitlines() if line.startswith("snapshot --")]) == 1


SERVICE = f"""
config_load() {{ :; }}
config_get_bool() {{ eval "$1=$SAVE"; }}
. {INITSCRIPTS}/etc/init.d/snapshot
shutdown
"""


@pytest.mark.parametrize("save,expected", [("1", True), ("0", False)])
def test_service_saves_the_volatile_on_shutdown_only_when_configured(tmp_path, save, expected):
    volatile = Path("/volatile/upper")
    script = SERVICE.replace("/volatile/upper", str(tmp_path))
    service = (INITSCRIPTS / "etc/init.d/snapshot").read_text().replace(str(volatile),
                                                                        str(tmp_path))
    (tmp_path / "service").write_text(service)
    script = script.replace(f"{INITSCRIPTS}/etc/init.d/snapshot", str(tmp_path / "service"))
    out = ash(script, tmp_path, {"SAVE": save})
    assert (f"snapshot save --from {tmp_path}" in out) == expected


@pytest.mark.parametrize("reader", ["uci", "file parser"])
def test_the_device_can_come_from_the_config_file(reader, tmp_path, monkeypatch):
    from mtd import FlashType, Geometry, SimFlash
    from clirun import invoke
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1 << 20, 64 << 10, 1, 0))
    uci = tmp_path / "snapshot"
    uci.write_text(f"config snapshot 'main'\n\toption device '{image}'\n")
    monkeypatch.setenv("PATH", str(tool("uci").parent) if reader == "uci" else "")
    monkeypatch.setattr(config, "SAVE_DIR", str(tmp_path / "uci-save"))
    monkeypatch.setenv("SNAPSHOT_CONFIG", str(uci))
    monkeypatch.delenv("SNAPSHOT_DEVICE", raising=False)
    assert invoke("flash", "info", "--json").exit_code == 0


def test_the_service_starts_the_health_watch(tmp_path):
    script = f"""
procd_open_instance() {{ echo "instance $1"; }}
procd_set_param() {{ [ "$1" = command ] && shift && echo "runs $*"; :; }}
procd_close_instance() {{ echo "closed"; }}
. {INITSCRIPTS}/etc/init.d/snapshot
start_service
"""
    out = ash(script, tmp_path)
    assert out == "instance watch\nruns snapshot watch\nclosed\n"
