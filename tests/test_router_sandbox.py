"""Tier 2: the sandbox router of tests/router_sandbox.py runs the real apk v3 and opkg in its
own root, from feeds built with the real tools, the way a chain-booted router does: package
changes land in /volatile/upper (RAM) until pushed, and a pushed change survives a reboot.
The outputs and exit codes asserted here are the ones `snapshot upgrade` and the package
hooks build on."""
import pytest

from router_sandbox import (apk_rootfs, apk_router, opkg_rootfs, opkg_router,  # noqa: F401
                            sandbox_feeds, ROUTER_PATH, Router, build_rootfs)


# -- the router itself ---------------------------------------------------------------------------

def test_the_router_boots_the_chain_with_ram_layers_and_its_own_tools(apk_router):
    booted = apk_router.boot()
    assert booted.rc == 0, booted.log
    assert "mounted 0 snapshots" in booted.log
    mounts = booted.mounts()
    assert mounts["/"] == "overlay" and mounts["/volatile"] == "tmpfs"
    assert mounts["/overlay"] == "tmpfs" and mounts["/tmp"] == "tmpfs"
    tools = booted.run("readlink /bin/sh; apk --version; snapshot list --json")
    assert tools.rc == 0, tools.output
    assert tools.out.startswith("/bin/busybox\napk-tools 3.0.6")
    assert '"volatile": null' in tools.out


def test_reboot_in_the_router_is_recorded_not_performed(apk_router):
    booted = apk_router.boot()
    assert not booted.reboot_requested
    assert booted.run("reboot").rc == 0
    assert booted.reboot_requested
    assert not apk_router.reboot().reboot_requested


def test_syslog_messages_reach_the_harness(apk_router):
    booted = apk_router.boot()
    assert booted.run("logger -t snapshot 'pushed snapshot 2'").rc == 0
    assert any(line.endswith("snapshot: pushed snapshot 2") for line in booted.syslog())


# -- apk -------------------------------------------------------------------------------------------

def test_apk_add_installs_version_1_into_ram(apk_router):
    booted = apk_router.boot()
    added = booted.run("apk add mesh-tool")
    assert added.rc == 0, added.output
    assert "(1/1) Installing mesh-tool (1.0-r0)" in added.out
    assert booted.read("/srv/mesh-tool/VERSION") == "1\n"
    assert booted.run("/srv/mesh-tool/bin/mesh-tool").out == "mesh-tool 1\n"
    # Its post-install script ran in the router's root.
    assert booted.read("/srv/mesh-tool/configured") == "release 1 upgrade=0\n"
    volatile = booted.volatile()
    assert {"srv/mesh-tool/VERSION", "lib/apk/db/installed", "etc/apk/world"} <= set(volatile)


def test_apk_upgrade_simulate_names_the_upgrade_and_changes_nothing(apk_router):
    booted = apk_router.boot()
    assert booted.run("apk add mesh-tool").rc == 0
    before = booted.volatile()
    apk_router.use_feeds("v2")
    assert booted.run("apk update").rc == 0
    simulated = booted.run("apk upgrade --simulate")
    assert simulated.rc == 0, simulated.output
    assert simulated.out.splitlines()[0] == "(1/1) Upgrading mesh-tool (1.0-r0 -> 2.0-r0)"
    assert booted.read("/srv/mesh-tool/VERSION") == "1\n"
    assert booted.volatile() == before


def test_apk_upgrade_installs_version_2_and_runs_post_upgrade(apk_router):
    booted = apk_router.boot()
    assert booted.run("apk add mesh-tool").rc == 0
    apk_router.use_feeds("v2")
    upgraded = booted.run("apk update && apk upgrade")
    assert upgraded.rc == 0, upgraded.output
    assert booted.read("/srv/mesh-tool/VERSION") == "2\n"
    assert booted.read("/srv/mesh-tool/configured") == "release 2 upgrade=1\n"
    assert booted.run("apk info -e mesh-tool && apk list --installed").out.splitlines()[1] \
        .startswith("mesh-tool-2.0-r0 ")


def test_apk_failing_post_install_gives_1_and_every_later_transaction_too(apk_router):
    booted = apk_router.boot()
    assert booted.run("apk add mesh-agent").rc == 0
    apk_router.use_feeds("v2")
    failed = booted.run("apk update && apk upgrade mesh-agent")
    assert failed.rc == 1, failed.output
    assert "ERROR: lib/apk/exec/mesh-agent-2.0-r0.post-upgrade: exited with error 3" in failed.err
    # The package stays installed, at version 2; apk remembers the broken script.
    assert booted.read("/srv/mesh-agent/VERSION") == "2\n"
    assert booted.run("apk add mesh-tool").rc == 1


def test_apk_fresh_install_with_a_failing_post_install_gives_1(apk_router):
    apk_router.use_feeds("v2")
    booted = apk_router.boot()
    failed = booted.run("apk add mesh-agent")
    assert failed.rc == 1
    assert "mesh-agent-2.0-r0.post-install: exited with error 3" in failed.err


@pytest.mark.parametrize("feed, warning", [
    ("badsig", "UNTRUSTED signature"),
    ("corrupt", "file format is invalid or inconsistent"),
    ("unreachable", "Connection refused"),
])
def test_apk_a_feed_it_cannot_use_fails_update_with_1_and_upgrade_with_99(apk_router, feed,
                                                                          warning):
    booted = apk_router.boot()
    assert booted.run("apk add mesh-tool").rc == 0
    apk_router.use_feeds(feed)
    before = booted.volatile()
    update = booted.run("apk update")
    assert update.rc == 1, update.output
    assert "1 unavailable, 0 stale" in update.out and warning in update.err
    upgrade = booted.run("apk upgrade")
    assert upgrade.rc == 99, upgrade.output
    assert "Not continuing due to stale/unavailable repositories" in upgrade.err
    assert booted.read("/srv/mesh-tool/VERSION") == "1\n"
    assert booted.volatile() == before


#: A commit hook that logs its argument, cwd and environment as apk gave them.
HOOK = ("#!/bin/sh\n"
        "{ echo \"$1 cwd=$(pwd)\"; tr '\\0' '\\n' < /proc/$$/environ; } >> /root/hook.log\n"
        "echo hook says hi\n")


def test_apk_commit_hooks_in_the_firmware_run_in_the_router_with_only_path(tmp_path,
                                                                           sandbox_feeds):
    rootfs = build_rootfs(tmp_path, "apk", sandbox_feeds,
                          files={"/etc/apk/commit_hooks.d/log": HOOK})
    with Router(tmp_path / "router", rootfs, sandbox_feeds) as router:
        booted = router.boot()
        added = booted.run("apk add mesh-tool", env={"SNAPSHOT_SECRET": "not passed on"})
        assert added.rc == 0, added.output
        assert added.out.startswith("Executing pre-commit log\n* hook says hi\n")
        assert "Executing post-commit log\n* hook says hi\n" in added.out
        # A no-op transaction runs both hooks too; --simulate runs none.
        assert booted.run("apk add mesh-tool").rc == 0
        assert booted.run("apk add --simulate lib-extra").rc == 0
        runs = booted.read("/root/hook.log").split("\n")
    calls = [line for line in runs if " cwd=" in line]
    assert calls == ["pre-commit cwd=/", "post-commit cwd=/"] * 2
    env = sorted(set(runs) - set(calls) - {""})
    assert env == ["APK_SCRIPT=post-commit", "APK_SCRIPT=pre-commit", f"PATH={ROUTER_PATH}"]


def test_apk_pushed_package_survives_a_reboot(apk_router):
    booted = apk_router.boot()
    assert booted.run("apk add mesh-tool").rc == 0
    pushed = booted.snapshot("push", "--from", "/volatile/upper", "-m", "add mesh-tool 1.0-r0")
    assert pushed.rc == 0, pushed.output
    booted = apk_router.reboot()
    assert "mounted 1 snapshots" in booted.log
    assert booted.volatile() == []
    assert booted.read("/srv/mesh-tool/VERSION") == "1\n"
    info = booted.run("apk info -e mesh-tool")
    assert info.rc == 0 and info.out == "mesh-tool\n"


def test_apk_unpushed_package_is_gone_after_a_reboot(apk_router):
    booted = apk_router.boot()
    assert booted.run("apk add mesh-tool").rc == 0
    booted = apk_router.reboot()
    assert not booted.exists("/srv/mesh-tool")
    assert booted.run("apk info -e mesh-tool").rc == 1


def test_apk_out_of_ram_fails_with_2_and_warns_of_an_inconsistent_database(apk_router):
    booted = apk_router.boot(ram=256 * 1024)
    assert booted.run("dd if=/dev/zero of=/fill bs=1024 count=512").rc == 1
    added = booted.run("apk add mesh-tool")
    assert added.rc == 2, added.output
    assert "ERROR: System state may be inconsistent: failed to write database: " \
        "No space left on device" in added.err


# -- opkg ------------------------------------------------------------------------------------------

def test_opkg_install_installs_version_1_into_ram(opkg_router):
    booted = opkg_router.boot()
    installed = booted.run("opkg update && opkg install mesh-tool")
    assert installed.rc == 0, installed.output
    assert "Signature check passed." in installed.out
    assert "Installing mesh-tool (1.0) to root..." in installed.out
    assert booted.read("/srv/mesh-tool/VERSION") == "1\n"
    # opkg inside the router's root runs the postinst there.
    assert booted.read("/srv/mesh-tool/configured") == "release 1 upgrade=0\n"
    assert booted.run("opkg list-installed").out == "mesh-tool - 1.0\n"
    volatile = booted.volatile()
    assert {"srv/mesh-tool/VERSION", "usr/lib/opkg/status",
            "usr/lib/opkg/info/mesh-tool.list"} <= set(volatile)
    # The lists are in /var (RAM), not in a layer.
    assert not any(p.startswith(("tmp", "var")) for p in volatile)


def test_opkg_list_upgradable_names_installed_and_available_versions(opkg_router):
    booted = opkg_router.boot()
    assert booted.run("opkg update && opkg install mesh-tool").rc == 0
    opkg_router.use_feeds("v2")
    listed = booted.run("opkg update >/dev/null && opkg list-upgradable")
    assert listed.rc == 0, listed.output
    assert listed.out == "mesh-tool - 1.0 - 2.0\n"
    upgraded = booted.run("opkg upgrade mesh-tool")
    assert upgraded.rc == 0, upgraded.output
    assert booted.read("/srv/mesh-tool/configured") == "release 2 upgrade=1\n"
    assert booted.run("opkg list-upgradable").out == ""


def test_opkg_failing_postinst_gives_255_and_leaves_the_package_unpacked(opkg_router):
    booted = opkg_router.boot()
    assert booted.run("opkg update && opkg install mesh-agent").rc == 0
    opkg_router.use_feeds("v2")
    failed = booted.run("opkg update >/dev/null && opkg upgrade mesh-agent")
    assert failed.rc == 255, failed.output
    assert 'package "mesh-agent" postinst script returned status 3' in failed.err
    assert booted.read("/srv/mesh-agent/VERSION") == "2\n"
    assert "Status: install user unpacked" in booted.run("opkg status mesh-agent").out
    # Every later transaction configures it again, and fails.
    assert booted.run("opkg install mesh-tool").rc == 255


def test_opkg_a_bad_signature_drops_the_list_yet_update_gives_0(opkg_router):
    opkg_router.use_feeds("badsig")
    booted = opkg_router.boot()
    update = booted.run("opkg update")
    assert update.rc == 0, update.output
    assert "Signature check failed.\nRemove wrong Signature file.\n" in update.out
    assert booted.run("ls /var/opkg-lists").out == ""
    install = booted.run("opkg install mesh-tool")
    assert install.rc == 255 and "Unknown package 'mesh-tool'." in install.out


def test_opkg_a_corrupt_list_updates_with_0_and_offers_nothing(opkg_router):
    opkg_router.use_feeds("corrupt")
    booted = opkg_router.boot()
    update = booted.run("opkg update")
    assert update.rc == 0 and "Signature check passed." in update.out, update.output
    assert booted.run("opkg list").out == ""
    assert booted.run("opkg install mesh-tool").rc == 255


def test_opkg_an_unreachable_feed_fails_update_with_1(opkg_router):
    opkg_router.use_feeds("unreachable")
    booted = opkg_router.boot()
    update = booted.run("opkg update")
    assert update.rc == 1, update.output
    assert "*** Failed to download the package list from http://127.0.0.1:9/opkg/Packages.gz" \
        in update.out
    assert "Connection refused" in update.err


def test_opkg_pushed_package_survives_a_reboot(opkg_router):
    booted = opkg_router.boot()
    assert booted.run("opkg update && opkg install mesh-conf").rc == 0
    pushed = booted.snapshot("push", "-m", "add mesh-conf 1.0")
    assert pushed.rc == 0, pushed.output
    booted = opkg_router.reboot()
    assert "mounted 1 snapshots" in booted.log
    assert booted.volatile() == []
    assert booted.run("opkg list-installed").out == "lib-extra - 1.0\nmesh-conf - 1.0\n"
    assert booted.read("/etc/mesh-conf/mesh.conf") == "option release '1'\n"


def test_opkg_out_of_ram_exits_0_leaving_empty_files_and_an_empty_status(opkg_router):
    """opkg checks free space on /overlay (its overlay_root), not where it writes."""
    booted = opkg_router.boot(ram=256 * 1024)
    assert booted.run("opkg update").rc == 0
    assert booted.run("dd if=/dev/zero of=/fill bs=1024 count=512").rc == 1
    installed = booted.run("opkg install mesh-tool")
    assert installed.rc == 0, installed.output
    assert "Couldn't close //usr/lib/opkg/status: No space left on device." in installed.err
    assert booted.read("/srv/mesh-tool/VERSION") == ""
    assert booted.run("opkg list-installed").out == ""
