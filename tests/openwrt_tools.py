"""The router's own tools, built from the pinned sources by scripts/setup-openwrt-tools.sh.

Tests that claim OpenWrt behaviour run these, never a stand-in. A missing build is a tier that
cannot run here: skipped with the reason, and a failure in CI (conftest.cannot_run)."""
import os
from pathlib import Path

from conftest import cannot_run

PREFIX = Path(os.environ.get("SNAPSHOT_OPENWRT_TOOLS", "/var/cache/snapshot-openwrt-tools"))
WHERE = {"ubusd": "sbin", "rpcd": "sbin", "snapshot_tool": "fstools",
         "factoryreset": "fstools", "mount_root": "fstools"}


def tool(name: str) -> Path:
    """The built tool `name` (uci, ubus, ubusd, rpcd, usign, apk, opkg, snapshot_tool,
    factoryreset, mount_root)."""
    path = PREFIX / WHERE.get(name, "bin") / name
    if not (PREFIX / "READY").exists() or not path.exists():
        cannot_run(f"{name} is not built in {PREFIX}: run scripts/setup-openwrt-tools.sh")
    return path
