"""The real router: OpenWrt built from its sources (scripts/build-router.sh) booted in qemu,
procd as PID 1, the real /etc/preinit with the project's 81_snapshot hook, fstools'
mount_root, rc.d, ubusd and rpcd, and the project installed by its feed Makefile's
recipes with Python reduced to the packages its DEPENDS names (tests/router_vm.py).

Each boot under TCG takes a minute or more, so one boot serves the tests of a state, in
order, as in the kernel tier, and each boot starts on the flash the one before left:
1. erased flash: the stock mount_root's jffs2; `snapshot convert` reboots into
2. the chain; a batman-adv mesh with a kernel-tier guest and its health check pushed, then a
   change on trial that breaks the mesh, and a reboot into
3. the trial, which procd's `snapshot watch` rolls back, rebooting into
4. the state before it, the mesh back; qemu killed during a push, then
5. the old state or the new one; `firstboot -y` and a reboot into
6. an empty chain; apk packages from a served feed, `snapshot upgrade` rebooting into
7. the upgrade on trial, which the watch confirms; a failing post-install script; then
   `sysupgrade` keeping settings, into
8. the stock jffs2 with the settings.
Every state is reached on both CPUs (router_vm.CPUS): the `root` fixture is parametrized,
so each test runs once per CPU, x86_64 and mipsel (malta) each a chain of boots of its own
(side by side under xdist: tests/conftest.py groups them by CPU), but for the fixtures
X86_64_ONLY names and what follows them.
Marked `router`: `bash scripts/test.sh -m router` runs this tier alone, `-k mipsel` one CPU.
"""
import functools
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import cannot_run
from kernel_vm import KernelTierUnavailable, KernelVM
from router_sandbox import Feeds
from router_vm import (CPUS, HOST_ADDRESS, MESH_MAC, Router, RouterError, RouterUnavailable,
                       build_root, erased_flash, mesh_link_args)

pytestmark = pytest.mark.router

#: Seconds for a boot to reach the console, and for rc.d to finish after it (TCG on two
#: busy cores).
BOOT_TIMEOUT = 400
SETTLE_TIMEOUT = 300


def usable_root(cpu: str = "x86_64") -> Path:
    """The router root built for `cpu` (scripts/build-router.sh's cache), or the tier's
    `cannot_run` saying why there is none."""
    try:
        return build_root(cpu)
    except RouterUnavailable as e:
        cannot_run(f"real-router tier unavailable: {e}")


@pytest.fixture(scope="module", params=CPUS)
def root(request):
    return usable_root(request.param)


#: The fixtures whose boots run on x86_64 only, and why: tests/conftest.py skips a test that
#: uses one on another CPU before any fixture is set up (the first reason that applies).
X86_64_ONLY = {
    "mesh_neighbour": "the mesh's neighbour is a kernel-tier guest on x86_64's kernel",
}


@pytest.fixture(scope="module")
def first_boot(root, tmp_path_factory):
    """The router's first boot on erased flash, logged in on its console once rc.d is done:
    /etc/init.d/done (S95) has formatted jffs2 and moved the overlay onto it, and the
    snapshot service (S99) has run its `snapshot watch`."""
    work = tmp_path_factory.mktemp("router")
    flash = erased_flash(work / "flash.img")
    with Router(root, flash, work / "console.log") as router:
        router.boot_seconds = router.login(BOOT_TIMEOUT)
        router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", SETTLE_TIMEOUT)
        router.wait_until("ubus call service list '{\"name\": \"snapshot\"}' "
                          "| grep -q exit_code", SETTLE_TIMEOUT)
        yield router


def test_first_boot_runs_preinit_with_the_hook_then_mount_root(first_boot):
    """/etc/preinit's do_mount_root is the hook's, which found no chain on the erased
    rootfs_data and ran the stock mount_root: it had no filesystem to mount and put a tmpfs
    overlay over the squashfs until jffs2 was ready."""
    # /etc/preinit sources /lib/preinit/* in order: the last definition is the one it runs.
    defined = first_boot.check("grep -l '^do_mount_root()' /lib/preinit/*").split()
    assert defined == ["/lib/preinit/80_mount_root", "/lib/preinit/81_snapshot"]
    log = first_boot.check("dmesg")
    assert "init: - preinit -" in log
    assert "mount_root: no usable overlay filesystem found, using tmpfs overlay" in log


def test_first_boot_overlay_is_jffs2_on_rootfs_data(first_boot):
    mounts = first_boot.check("cat /proc/mounts")
    mtd = first_boot.check("cat /proc/mtd")
    assert '"rootfs_data"' in mtd
    assert " /overlay jffs2 " in mounts
    assert "overlayfs:/overlay / overlay " in mounts


def test_python_starts_as_openwrts_does(first_boot):
    # No Debian sitecustomize (nor apport's hook, which it imports): every start-up measured
    # on this router, `python3 -c pass` included, is OpenWrt's.
    started = first_boot.check("python3 -c 'import sys; print(sorted(sys.modules))'")
    assert "sitecustomize" not in started and "apport" not in started


def test_procd_runs_ubusd_rpcd_and_the_snapshot_service(first_boot):
    services = json.loads(first_boot.check("ubus call service list"))
    assert services["rpcd"]["instances"]["instance1"]["running"]
    # `snapshot watch` ran and ended: there is no chain to watch on jffs2.
    watch = services["snapshot"]["instances"]["watch"]
    assert watch["command"] == ["snapshot", "watch"]
    assert not watch["running"] and watch["exit_code"] == 0
    assert "snapshot" in first_boot.check("ubus list").split()


def test_ubus_snapshot_status_answers_through_rpcd(first_boot):
    """rpcd runs the project's exec plugin under the router's Python: on jffs2 there is no
    chain, which the reply says as the CLI would."""
    reply = json.loads(first_boot.check("ubus call snapshot status", 180))
    assert set(reply) == {"error", "code"}, reply
    assert reply["code"] != 0


#: Changes made on the jffs2 overlay before `snapshot convert`: a changed config (through
#: uci), a new file in a new directory, a squashfs file deleted (a whiteout).
JFFS2_CHANGES = ("uci set system.@system[0].hostname=chainrouter && uci commit system && "
                 "mkdir /etc/added && echo kept > /etc/added/file && rm /etc/banner && sync")


@pytest.fixture(scope="module")
def chain_boot(first_boot, root):
    """After the first boot's tests: changes on jffs2, `snapshot convert` (its RAM stage
    reboots, which ends qemu), then the next boot on the same flash, logged in once rc.d is
    done."""
    first_boot.check(JFFS2_CHANGES)
    first_boot.send("snapshot convert\n")
    first_boot.expect("snapshot convert: converted; rebooting into the chain", 600)
    first_boot.wait_exit(120)
    work = first_boot.console_log.parent
    with Router(root, work / "flash.img", work / "console-chain.log") as router:
        router.login(BOOT_TIMEOUT)
        router.wait_until("ubus call service list '{\"name\": \"snapshot\"}' "
                          "| grep -q exit_code", SETTLE_TIMEOUT)
        yield router


def test_convert_then_reboot_boots_the_chain(chain_boot):
    """The hook found the chain and `snapshot mount` built the root from it: the overlay
    and the volatile layer are in RAM, nothing is mounted from the flash."""
    assert "snapshot: mounted 1 snapshots" in chain_boot.check("dmesg")
    mounts = {line.split()[1]: line.split()[2]
              for line in chain_boot.check("cat /proc/mounts").splitlines()}
    assert mounts["/overlay"] == "tmpfs"
    assert mounts["/volatile"] == "tmpfs"
    assert mounts["/"] == "overlay"
    assert "jffs2" not in mounts.values()


def test_jffs2_changes_are_intact_in_the_chain(chain_boot):
    assert chain_boot.check("uci get system.@system[0].hostname") == "chainrouter\n"
    assert chain_boot.check("cat /etc/added/file") == "kept\n"
    assert chain_boot.sh("test -e /etc/banner")[0] == 1


def test_ubus_status_reports_the_converted_chain(chain_boot):
    status = json.loads(chain_boot.check("ubus call snapshot status", 180))
    assert status["snapshots"] == 1
    assert status["trial"] is None
    watch = json.loads(chain_boot.check("ubus call service list '{\"name\": \"snapshot\"}'"))
    assert watch["snapshot"]["instances"]["watch"]["exit_code"] == 0


def test_save_then_push_on_trial_then_confirm_through_ubus(chain_boot):
    chain_boot.check("echo saved > /etc/added/saved && snapshot save", 180)
    chain_boot.check("echo tried > /etc/added/tried && snapshot push --trial -m 'on trial'",
                     180)
    trial = json.loads(chain_boot.check("ubus call snapshot status", 180))["trial"]
    assert trial["what"] == "snapshot 2" and trial["attempts"] == 0
    assert json.loads(chain_boot.check("ubus call snapshot confirm", 180)) == {
        "confirmed": "snapshot 2"}
    status = json.loads(chain_boot.check("ubus call snapshot status", 180))
    assert status["trial"] is None and status["snapshots"] == 2


# -- 3. Trial and rollback through procd -------------------------------------------------------

#: The watch decides in seconds: a round each second, two failed rounds roll back, no grace.
FAST_WATCH = ("uci set snapshot.main.interval=1 && uci set snapshot.main.grace=0 && "
              "uci set snapshot.main.fail_rounds=2 && uci commit snapshot")

#: The mesh (on x86_64): batman-adv between the router and a kernel-tier guest
#: (tests/kernel_vm.py), each with one card on a link between their qemus
#: (router_vm.mesh_link_args). bat0's addresses: the router's, the neighbour's.
MESH_ROUTER, MESH_NEIGHBOUR = "10.99.0.1", "10.99.0.2"

#: The neighbour's job in its guest (Debian's iproute2): its card into batman-adv, bat0 up
#: with its address, then idle until qemu is killed.
NEIGHBOUR_JOB = ("ip link add bat0 type batadv && ip link set eth0 master bat0 && "
                 "ip link set eth0 up && ip link set bat0 up && "
                 f"ip addr add {MESH_NEIGHBOUR}/24 dev bat0 && echo mesh-neighbour: up && "
                 "exec sleep 100000")

#: The router's mesh, configured where OpenWrt runs a user's own commands at boot (rc.local,
#: from /etc/init.d/done), with busybox's `ip link`: its mesh card (by MAC) into bat0.
MESH_RC_LOCAL = ("printf '%s\\n' "
                 f"'mesh=$(grep -l {MESH_MAC} /sys/class/net/*/address | cut -d/ -f5)' "
                 "'ip link add bat0 type batadv' 'ip link set \"$mesh\" master bat0' "
                 "'ip link set \"$mesh\" up' 'ip link set bat0 up' "
                 f"'ip addr add {MESH_ROUTER}/24 dev bat0' 'exit 0' >/etc/rc.local")

#: The required mesh check: the neighbour answers over bat0; a failure says so on the
#: console. The rollback hook says what the watch decided. (Commands of a few hundred bytes:
#: the console loses input bytes of a longer line.)
MESH_CHECK = (
    "mkdir -p /etc/snapshot/health.d /etc/snapshot/rollback.d",
    "printf '%s\\n' '#!/bin/sh' "
    f"'ping -c 2 -W 2 -I bat0 {MESH_NEIGHBOUR} >/dev/null && "
    f"echo {MESH_NEIGHBOUR} answers over bat0 && exit 0' "
    f"'echo mesh-check: {MESH_NEIGHBOUR} does not answer over bat0 | tee /dev/console' "
    "'exit 1' >/etc/snapshot/health.d/mesh",
    "printf '#!/bin/sh\\necho \"rollback-hook: $SNAPSHOT_REASON\" >/dev/console\\n' "
    ">/etc/snapshot/rollback.d/say && "
    "chmod +x /etc/snapshot/health.d/mesh /etc/snapshot/rollback.d/say")

#: The change on trial breaks the mesh: the mesh card is no longer put into bat0.
BROKEN_CHANGE = "sed -i '/master bat0/d' /etc/rc.local && echo broken > /etc/added/trial"


def free_udp_ports(count: int) -> list[int]:
    """Ports of the host's loopback that no one uses now (the kernel's pick), for qemus to
    bind a moment later."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def mesh_neighbour(tmp_path_factory):
    """The mesh neighbour's guest, up with bat0; yields the router's end of the link (its
    mesh_link)."""
    try:
        vm = KernelVM(memory_mb=512)
    except KernelTierUnavailable as e:
        cannot_run(f"the mesh neighbour needs the kernel tier: {e}")
    router_port, neighbour_port = free_udp_ports(2)
    work = tmp_path_factory.mktemp("mesh")
    link = mesh_link_args(neighbour_port, router_port, "52:54:00:5e:00:02")
    with vm.start(["sh", "-c", NEIGHBOUR_JOB], cwd="/", env={}, results_dir=work,
                  devices=tuple(link)) as guest:
        output = work / ".kernel-vm" / "output"
        deadline = time.monotonic() + BOOT_TIMEOUT
        while "mesh-neighbour: up" not in (output.read_text() if output.exists() else ""):
            if not guest.is_running() or time.monotonic() > deadline:
                raise RouterError("the mesh neighbour did not come up\n"
                                  + guest.console_tail())
            time.sleep(1)
        yield router_port, neighbour_port


def next_boot(router: Router, root, name: str,
              mesh_link: tuple[int, int] | None = None) -> Router:
    """The boot after `router` ended (a reboot in the guest), on the same flash; on the
    mesh link if given (mesh_neighbour)."""
    work = router.console_log.parent
    return Router(root, work / "flash.img", work / f"console-{name}.log", mesh_link=mesh_link)


def settled(router: Router) -> Router:
    """Logged in once rc.d has started the snapshot service and its watch has ended."""
    router.login(BOOT_TIMEOUT)
    router.wait_until("ubus call service list '{\"name\": \"snapshot\"}' | grep -q exit_code",
                      SETTLE_TIMEOUT)
    return router


@pytest.fixture(scope="module")
def rolled_back(chain_boot, root, request):
    """After the chain boot's tests: the fast watch, the mesh and its check pushed as a
    confirmed snapshot, then a change that breaks the mesh pushed on trial, and a reboot into
    it, on the mesh link. procd's `snapshot watch` in that boot rolls the trial back and
    reboots (qemu ends, no one logged in); the boot after it, on the mesh link too, is
    yielded, logged in. On mipsel there is no neighbour (X86_64_ONLY): the mesh check fails
    in the trial's boot all the same, and the watch rolls it back as on x86_64."""
    mesh_neighbour = request.getfixturevalue("mesh_neighbour") \
        if (root / "ARCH").read_text().strip() == "x86_64" else None
    for command in (MESH_RC_LOCAL, *MESH_CHECK):
        chain_boot.check(command)
    chain_boot.check(f"{FAST_WATCH} && snapshot push -m 'fast health watch, the mesh'", 180)
    chain_boot.check(f"{BROKEN_CHANGE} && snapshot push --trial -m 'mesh card out of bat0'",
                     180)
    chain_boot.send("reboot\n")
    chain_boot.wait_exit(120)
    with next_boot(chain_boot, root, "trial", mesh_neighbour) as trial:
        trial.expect("mesh-check: ", BOOT_TIMEOUT)
        trial.expect("rollback-hook: ", SETTLE_TIMEOUT)
        trial.wait_exit(SETTLE_TIMEOUT)
        trial_console = trial.console()
    with next_boot(trial, root, "rolled-back", mesh_neighbour) as router:
        router.trial_console = trial_console
        yield settled(router)


def test_the_watch_rolls_a_trial_that_breaks_the_mesh_back_and_reboots(rolled_back):
    """In the trial's boot the mesh check ran from health.d, failed, and the watch rolled
    back: it ran the rollback hooks with the failing check as the reason, then rebooted."""
    console = rolled_back.trial_console
    assert console.count(f"mesh-check: {MESH_NEIGHBOUR} does not answer over bat0") >= 2
    hook = console[console.index("rollback-hook: "):].splitlines()[0]
    assert "mesh" in hook, hook


def test_the_boot_after_the_rollback_is_the_state_before_the_trial(rolled_back):
    assert rolled_back.sh("test -e /etc/added/trial")[0] == 1
    assert "master bat0" in rolled_back.check("cat /etc/rc.local")
    # The snapshots before the trial, the last one included.
    assert rolled_back.check("uci get snapshot.main.interval") == "1\n"
    assert rolled_back.check("cat /etc/added/tried") == "tried\n"
    status = json.loads(rolled_back.check("snapshot status --json", 180))
    assert status["trial"] is None and status["snapshots"] == 3
    assert "mesh" in status["last_rollback"]["reason"]


def test_the_boot_after_the_rollback_has_the_mesh_back(rolled_back, mesh_neighbour):
    """The neighbour answers over bat0 again, and the same check passes."""
    rolled_back.wait_until(f"ping -c 1 -W 1 -I bat0 {MESH_NEIGHBOUR} >/dev/null", 120)
    rc, output = rolled_back.sh("snapshot health --json", 180)
    assert rc == 0, output
    mesh = {r["name"]: r for r in json.loads(output)["results"]}["mesh"]
    assert mesh["ok"] and mesh["detail"] == f"{MESH_NEIGHBOUR} answers over bat0", mesh


# -- 6. A power cut during a push --------------------------------------------------------------

#: The launcher of the CLI that makes each flash operation reach the disk image before it
#: returns (block2mtd writes back in offset order, not program order; its module
#: doc): a kill then lands between two operations, as on flash.
SYNCED_CLI = Path(__file__).resolve().parent / "synced_cli.py"

#: What the cut push stores: incompressible, so that it spans many erase blocks.
CUT_BLOCKS = 24


def copy_into(router: Router, source: Path, target: str) -> None:
    """A host file into the guest (Router.write_file)."""
    router.write_file(source.read_bytes(), target)


@pytest.fixture(scope="module")
def power_cut(rolled_back, root):
    """On the rolled-back boot: incompressible data written, then `snapshot push` started;
    qemu is killed once the push has reported CUT_BLOCKS erase blocks written, close to its
    commit (the record's last block, its commit marker, the anchor entry). The next boot is
    yielded, logged in."""
    router = rolled_back
    copy_into(router, SYNCED_CLI, "/tmp/synced_cli.py")
    before = json.loads(router.check("snapshot status --json", 180))
    digest = router.check(f"mkdir /root/cut && head -c {CUT_BLOCKS * 64 * 1024} /dev/urandom "
                          ">/root/cut/blob && sha256sum /root/cut/blob").split()[0]
    router.send("python3 /tmp/synced_cli.py push -m 'cut' </dev/null\n")
    for _ in range(CUT_BLOCKS):
        router.expect(" written", 300)
    router.kill()
    with next_boot(router, root, "after-cut") as after:
        after.cut = {"snapshots": before["snapshots"], "digest": digest}
        yield settled(after)


def cut_outcome(router: Router) -> str:
    """"old" or "new": the state the boot after a push of /root/cut/blob was cut shows, by
    router.cut (the number of snapshots before the push, the blob's digest); any other
    state fails the test. The chain then passes `snapshot check`."""
    snapshots = json.loads(router.check("snapshot status --json", 180))["snapshots"]
    rc, output = router.sh("sha256sum /root/cut/blob")
    if snapshots == router.cut["snapshots"]:
        assert rc == 1, output
        outcome = "old"
    else:
        assert snapshots == router.cut["snapshots"] + 1
        assert output.split()[0] == router.cut["digest"]
        outcome = "new"
    router.check("snapshot check", 300)
    return outcome


def test_after_a_power_cut_during_a_push_the_boot_is_old_or_new(power_cut):
    print(f"power cut during a push on the router: the next boot is {cut_outcome(power_cut)}")


# -- 5. The stock tools ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def after_firstboot(power_cut, root):
    """On the boot after the power cut: base-files' `firstboot -y` (fstools' factoryreset,
    which writes its 0xdeadc0de mark at the start of rootfs_data), then `reboot`. The next
    boot is yielded, logged in."""
    power_cut.check("firstboot -y", 120)
    power_cut.send("reboot\n")
    power_cut.wait_exit(120)
    with next_boot(power_cut, root, "after-firstboot") as router:
        yield settled(router)


def test_firstboot_then_reboot_is_an_empty_chain(after_firstboot):
    """DESIGN.md §11: the stock mark resets the chain; the router runs on an empty chain,
    the squashfs as flashed, nothing of the old state left."""
    status = json.loads(after_firstboot.check("snapshot status --json", 180))
    assert status["snapshots"] == 0 and status["trial"] is None
    mounts = {line.split()[1]: line.split()[2]
              for line in after_firstboot.check("cat /proc/mounts").splitlines()}
    assert mounts["/overlay"] == "tmpfs" and "jffs2" not in mounts.values()
    assert after_firstboot.sh("test -e /etc/added || test -e /root/cut")[0] == 1
    assert after_firstboot.check("uci get system.@system[0].hostname") == "OpenWrt\n"
    assert after_firstboot.check("uci get snapshot.main.interval") == "30\n"
    # The empty chain takes writes.
    after_firstboot.check("echo after-reset > /etc/after-reset && snapshot save", 180)


# -- 4. `snapshot upgrade` from an apk feed ------------------------------------------------------

@pytest.fixture(scope="module")
def feeds(tmp_path_factory):
    """The sandbox tier's signed apk feeds (tests/router_sandbox.py), served over HTTP on the
    host's loopback, which qemu's user-mode network gives the guest as HOST_ADDRESS. Yields
    the guest's URL of a feed by name."""
    built = Feeds.build(tmp_path_factory.mktemp("feeds"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=built.root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://{HOST_ADDRESS}:{server.server_address[1]}/apk"
    yield built, lambda name: f"{url}/{name}/packages.adb"
    server.shutdown()


def use_feed(router: Router, url: str) -> None:
    router.check(f"mkdir -p /etc/apk/repositories.d && "
                 f"echo {url} > /etc/apk/repositories.d/distfeeds.list && apk update", 300)


@pytest.fixture(scope="module")
def upgraded(after_firstboot, feeds, root):
    """On the boot after firstboot: the feeds' key trusted, mesh-tool 1 installed from feed
    v1 (the commit hook stores it on trial; confirmed), the fast watch saved, then feed v2
    and `snapshot upgrade`, which stores mesh-tool 2 on trial and reboots. In the next boot
    the watch confirms it (no check fails); that boot is yielded, logged in."""
    built, feed = feeds
    router = after_firstboot
    copy_into(router, built.apk_key, "/etc/apk/keys/snapshot-test.pem")
    use_feed(router, feed("v1"))
    router.check("apk add mesh-tool && snapshot confirm", 300)
    router.check(f"{FAST_WATCH} && snapshot save", 180)
    use_feed(router, feed("v2"))
    before = json.loads(router.check("snapshot status --json", 180))
    router.send("snapshot upgrade\n")
    router.wait_exit(600)
    with next_boot(router, root, "upgraded") as after:
        after.before = before
        yield settled(after)


def test_snapshot_upgrade_boots_on_trial_and_the_watch_confirms_it(upgraded):
    status = json.loads(upgraded.check("snapshot status --json", 180))
    assert status["trial"] is None and status["last_rollback"] is None
    assert status["snapshots"] == upgraded.before["snapshots"] + 1
    watch = json.loads(upgraded.check("ubus call service list '{\"name\": \"snapshot\"}'"))
    assert watch["snapshot"]["instances"]["watch"]["exit_code"] == 0
    assert "confirmed" in upgraded.check("logread | grep 'snapshot'")
    assert upgraded.check("cat /srv/mesh-tool/VERSION") == "2\n"
    # Its post-upgrade script ran in the upgrade, and what it wrote was stored with it.
    assert upgraded.check("cat /srv/mesh-tool/configured") == "release 2 upgrade=1\n"


def test_a_failing_post_install_script_stores_nothing(upgraded, feeds):
    """mesh-agent 2's post-upgrade script exits 3: the upgrade fails (exit 12) and flash
    keeps what it held; status says the running system holds a change flash does not."""
    _, feed = feeds
    use_feed(upgraded, feed("v1"))
    upgraded.check("apk add mesh-agent && snapshot confirm", 300)
    use_feed(upgraded, feed("v2"))
    before = json.loads(upgraded.check("snapshot status --json", 180))
    rc, output = upgraded.sh("snapshot upgrade", 600)
    assert rc == 12, output
    assert output.count("Error: ") == 1, output
    after = json.loads(upgraded.check("snapshot status --json", 180))
    assert after["snapshots"] == before["snapshots"] and after["trial"] is None
    assert after["volatile"] == before["volatile"]
    assert "unsaved package change" in upgraded.check("snapshot status", 180)


# -- 5. sysupgrade keeping settings ------------------------------------------------------------

@pytest.fixture(scope="module")
def after_sysupgrade(upgraded, root):
    """On the upgraded boot: a changed hostname, kept by the user's /etc/sysupgrade.conf, and a
    file that no list keeps, both saved into the chain; then base-files' `sysupgrade` keeping
    settings (the board's image step: scripts/build-router.sh, step 6b). The next boot
    is yielded, logged in."""
    upgraded.check("uci set system.@system[0].hostname=sysupgraded && uci commit system && "
                   "echo /etc/config/system >> /etc/sysupgrade.conf && "
                   "echo lost > /etc/not-kept && snapshot save && echo image > /tmp/fw.bin",
                   180)
    upgraded.send("sysupgrade /tmp/fw.bin\n")
    upgraded.wait_exit(600)
    with next_boot(upgraded, root, "after-sysupgrade") as router:
        router.login(BOOT_TIMEOUT)
        router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", SETTLE_TIMEOUT)
        yield router


def test_sysupgrade_keeping_settings_boots_jffs2_with_the_settings(after_sysupgrade):
    """DESIGN.md §11: a jffs2 node in the mark block voids the chain: its other anchor
    blocks are erased, the stock mount_root mounts the jffs2, and preinit restores the
    settings from its sysupgrade.tgz. The chain's state is gone but for what was kept.

    The partition beyond the settings' jffs2 still holds what was there before: the chain's
    records, and nodes of the jffs2 the router ran on before `snapshot convert`. Mounted
    with them, jffs2 took the old filesystem's inode of the same number as sysupgrade.tgz's
    for it (a directory), and nothing was restored. OpenWrt's kernel erases all of that from
    the end mark `mtd -j` writes after the jffs2 (the initramfs does it here)."""
    router = after_sysupgrade
    assert "jffs2's end of filesystem mark at block" in router.console()
    assert "snapshot: restoring the settings a sysupgrade kept" in router.check("dmesg")
    assert router.check("uci get system.@system[0].hostname") == "sysupgraded\n"
    assert router.sh("test -e /etc/not-kept || test -e /srv/mesh-tool")[0] == 1
    assert "mount_root: switching to jffs2 overlay" in router.check("dmesg")
    starts = router.check("for b in 0 1 2 3; do dd if=/dev/mtd0 bs=65536 skip=$b count=1 "
                          "2>/dev/null | head -c 4; echo; done")
    assert "SnpA" not in starts, starts
    rc, output = router.sh("snapshot status", 180)
    assert rc != 0 and output.startswith("Error: "), output
