"""luci-app-snapshot's files agree with the snapshot package they drive: every ubus method the
page calls exists in the rpcd plugin and in the app's ACL (writes in its write half, as in the
plugin's own groups), the menu needs that ACL, and the translation template is current. The
page itself is tested in a real browser against the real router (the `browser` tier)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snapshot import rpcd

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "openwrt-package/luci-app-snapshot"
VIEW = APP / "htdocs/luci-static/resources/view/snapshot/status.js"
ACL = json.loads((APP / "root/usr/share/rpcd/acl.d/luci-app-snapshot.json").read_text())
PLUGIN_ACL = json.loads((REPO / "initscripts/usr/share/rpcd/acl.d/snapshot.json").read_text())
MENU = json.loads((APP / "root/usr/share/luci/menu.d/luci-app-snapshot.json").read_text())
DECLARED = re.compile(r"rpc\.declare\(\{ object: '([\w.]+)', method: '(\w+)'")


def called() -> set[tuple[str, str]]:
    return set(DECLARED.findall(VIEW.read_text()))


def test_every_method_the_page_calls_is_the_plugins_or_the_reboot():
    snapshot = {method for obj, method in called() if obj == "snapshot"}
    assert snapshot <= set(rpcd.METHODS)
    assert {(obj, m) for obj, m in called() if obj != "snapshot"} == {("system", "reboot")}


def test_the_acl_grants_reads_and_writes_as_the_plugins_groups_do():
    group = ACL["luci-app-snapshot"]
    for half, plugin_group in (("read", "snapshot-read"), ("write", "snapshot-write")):
        assert sorted(group[half]["ubus"]["snapshot"]) == \
            sorted(PLUGIN_ACL[plugin_group][half]["ubus"]["snapshot"])
    granted = {("snapshot", m) for half in ("read", "write") for m in group[half]["ubus"]["snapshot"]}
    granted |= {("system", m) for m in group["write"]["ubus"]["system"]}
    assert called() <= granted


def test_the_menu_entry_opens_the_view_and_needs_the_acl():
    entry = MENU["admin/system/snapshot"]
    assert entry["action"] == {"type": "view", "path": "snapshot/status"}
    assert entry["depends"]["acl"] == list(ACL)


def test_the_package_depends_on_snapshot_and_luci_base_and_uses_luci_mk():
    makefile = (APP / "Makefile").read_text()
    assert "LUCI_DEPENDS:=+snapshot +luci-base" in makefile
    assert "include $(TOPDIR)/feeds/luci/luci.mk" in makefile


def test_the_translation_template_holds_every_string_of_the_views():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import importlib
        pot = importlib.import_module("luci-pot")
    finally:
        sys.path.pop(0)
    assert (APP / "po/templates/snapshot.pot").read_text() == pot.template(), \
        "run python3 scripts/luci-pot.py"
    assert "Roll back and reboot" in pot.strings()


def test_the_view_is_valid_javascript():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the browser tier loads the view instead")
    checked = subprocess.run([node, "--check", str(VIEW)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
