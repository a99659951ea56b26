"""Kernel tier: `snapshot upgrade` with the real apk on real MTD, and power cuts during it
(DESIGN.md §12).

The router, its boots and the kills of qemu are those of test_kernel_boot.py (its module doc
says how a boot goes). Here its squashfs also holds the real apk v3 (scripts/
setup-openwrt-tools.sh builds it): /bin/apk with its libapk in /lib (RUNPATH $ORIGIN/../lib),
an empty package database in /lib/apk/db, a real directory of the squashfs as on OpenWrt, so
every change to it lands in /volatile/upper (RAM), and the test key in /etc/apk/keys. The
feeds are router_sandbox.Feeds' (mesh-tool 1.0-r0 and 2.0-r0, indexes signed with that key),
built into the results directory and read by apk as local-path feeds through the host tree
(/rom/.host/...). The router's feed list, /etc/apk/repositories.d/distfeeds.list, links to a
file there too, so switching the feeds to version 2 changes none of the router's layers.

One router lives through it all, in order:
1. formatted; `apk add mesh-tool` (1.0) and `snapshot push`: a confirmed snapshot; a saved
   volatile record of 48 incompressible erase blocks (/data) and a config edit; the feeds
   switched to v2; then `snapshot upgrade --no-reboot`, killed while apk runs its
   post-commit hooks: apk has written the whole upgrade (files, scripts' output, database)
   into RAM, and snapshot has stored nothing. The test squashfs's own commit hook
   (HOLD_HOOK) says so on the console and waits for the kill.
2. each later boot checks what the previous kill left, then runs the upgrade again and is
   killed during its store (transaction.store: the change's record, then the copy of the
   volatile record, 48 blocks, then the anchor commit) once the CLI's progress line has
   shown test_kernel_boot.KILLS' block counts (SNAPSHOT_ALL_KILLS=1: all six). A kill that
   left the new state (the trial) is checked, then the flash image is put back to the old
   state for the next kill, since an upgrade is refused while a trial is pending.
3. an uncut `/sbin/snapshot upgrade --no-reboot`; the reboot boots the trial (version 2),
   which is confirmed; the next reboot is version 2 again, confirmed.

The upgrade each kill interrupts runs through guest_boot/synced_cli.py (the `cut` step), so
every flash operation is on the disk image when it returns, as on real flash; the uncut one
is the router's /sbin/snapshot.
"""
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kernel_vm import FLASH_ERASE_SIZE
from openwrt_tools import tool
from router_sandbox import Feeds
from test_kernel_boot import BOOT_TIMEOUT, KILLED, KILLS, TREE_BLOCKS, Boot, Cut, Router, \
    assert_booted_from_chain, cli, cut, kernel_vm, report, sh, tree, view_diff, write
from test_kernel_convert import cli_json
from test_kernel_marks import entry

pytestmark = pytest.mark.kernel_boot

V1, V2 = "1.0-r0", "2.0-r0"
MESSAGE = f"upgrade: mesh-tool {V1} -> {V2}"
UPGRADE = ("upgrade", "--no-reboot")
#: While this file exists, HOLD_HOOK holds apk's post-commit for the host's kill.
HOLD = "/tmp/kboot-hold-commit"
HELD = "kboot-cut: apk post-commit"
#: What HOLD_HOOK says the running system holds when it is held.
COMMITTED = "kboot-cut: apk committed: "
#: A commit hook of the test squashfs, not of OpenWrt or snapshot. apk runs it chrooted into
#: its root with only PATH set; the console is the host's signal.
HOLD_HOOK = f"""#!/bin/sh
# post-commit: apk has committed the transaction (all of it in RAM); hold it there for the
# host to cut the power, while {HOLD} exists. First what the running system holds.
[ "$1" = post-commit ] && [ -e {HOLD} ] || exit 0
echo "{COMMITTED}VERSION $(cat /srv/mesh-tool/VERSION)," \
    "database $(sed -n 's/^V://p' /lib/apk/db/installed)" > /dev/ttyS0
echo "{HELD}" > /dev/ttyS0
exec sleep 600
"""


def apk_info(label: str) -> dict:
    """A step printing what apk says is installed, as `apk-LABEL: name-version ...`."""
    return sh(f"echo apk-{label}: $(apk info -v 2>&1)")


#: What every boot after a kill runs first: what it booted, apk's view, a check, the chain.
CHECKS = [report("boot"), apk_info("boot"), cli("check"), cli("list", "--json")]


@dataclass
class Kill:
    """A kill during the store and what the next boot showed."""
    block: int          # the kill point: erase blocks of the store reported written ...
    delay: float        # ... plus this many seconds
    cut: Cut            # what the host saw when it killed qemu
    outcome: str = ""   # 'old' or 'new'
    boot: Boot | None = None

    def __str__(self) -> str:
        return (f"store kill after {self.block} blocks +{self.delay * 1000:.0f} ms "
                f"({self.cut.blocks} reported"
                + (", the command done" if self.cut.completed else "") + ")")


def install_apk(router: Router, key: Path, feed_list: str) -> None:
    """Add the real apk to the router's squashfs (module doc); its feed list links to
    `feed_list`, a path of the host tree as the router sees it."""
    tree_dir = router.tree
    apk = tool("apk")
    shutil.copy(apk, tree_dir / "bin/apk")
    for lib in (apk.parent.parent / "lib").glob("libapk.so.*"):
        shutil.copy(lib, tree_dir / "lib")
    initdb = router.work / "apk-initdb"
    initdb.mkdir()
    subprocess.run([apk, "--root", initdb, "add", "--initdb", "--no-cache"], check=True,
                   capture_output=True)
    # The database and apk's configuration; not initdb's /var (RAM on the router).
    shutil.copytree(initdb / "lib/apk", tree_dir / "lib/apk")
    shutil.copytree(initdb / "etc/apk", tree_dir / "etc/apk")
    etc = tree_dir / "etc/apk"
    (etc / "keys").mkdir()
    shutil.copy(key, etc / "keys/snapshot-test.pem")
    (etc / "repositories.d").mkdir()
    (etc / "repositories.d/distfeeds.list").symlink_to(feed_list)
    (etc / "commit_hooks.d").mkdir()
    (etc / "commit_hooks.d/kboot-hold").write_text(HOLD_HOOK)
    (etc / "commit_hooks.d/kboot-hold").chmod(0o755)
    subprocess.run(["mksquashfs", str(tree_dir), str(router.squashfs), "-noappend", "-quiet",
                    "-all-root"], check=True, capture_output=True)


def apk_installed(boot: Boot, label: str) -> list[str]:
    """What `apk info -v` said in the boot's `apk-LABEL` step."""
    head = f"kboot: sh: rc=0 apk-{label}: "
    lines = boot.lines(head)
    assert len(lines) == 1, f"no apk-{label} step\n{boot.describe()}"
    return lines[0][len(head):].split()


def checked_clean(boot: Boot) -> bool:
    return any(line == "kboot: snapshot check: rc=0 clean" for line in boot.output.splitlines())


class UpgradeLife:
    """The router of this module (module doc), booted as far as a test asks."""

    def __init__(self, work: Path):
        self.router = Router(kernel_vm(), work)
        results = self.router.results
        self.feeds = Feeds.build(results / "feeds")
        self.feed_list = results / "apk-feeds.list"
        install_apk(self.router, self.feeds.apk_key, self.guest(self.feed_list))
        self.feed_list.write_text(self.feed("v1") + "\n")
        self.failed: str | None = None
        self.held: Boot | None = None           # boot 1, killed in apk's post-commit
        self.held_flash_changed: int | None = None
        self.old: dict | None = None            # the state on flash before every upgrade
        self.old_image: bytes | None = None
        self.after_held: Boot | None = None     # the boot after it
        self.apk_outcome = ""
        self.kills: list[Kill] = []
        self.last_cut: Cut | None = None
        self.upgraded: Boot | None = None       # the uncut upgrade's boot
        self.trial: Boot | None = None
        self.confirmed: Boot | None = None

    @staticmethod
    def guest(path: Path) -> str:
        """A path of the host tree as the router sees it."""
        return f"/rom/.host{path}"

    def feed(self, name: str) -> str:
        """The feed list's line for feed `name` (Feeds.NAMES): a local path."""
        return f"{self.guest(self.feeds.dir('apk', name))}/packages.adb"

    def _run(self, stage):
        if self.failed:
            pytest.fail(f"an earlier boot of this router failed:\n{self.failed}", pytrace=False)
        try:
            stage()
        except AssertionError as e:
            self.failed = str(e)
            raise

    # -- the stages -----------------------------------------------------------------------

    def apk_kill(self) -> Boot:
        """Boots 1 and 2: the kill in apk's post-commit, and the boot after it (which then
        starts the first kill during the store)."""
        if self.after_held is None:
            self._run(self._apk_kill)
        return self.after_held

    def store_kills(self) -> list[Kill]:
        """Every kill during the store, up to the boot of the uncut upgrade."""
        self.apk_kill()
        if self.upgraded is None:
            self._run(self._store_kills)
        return self.kills

    def lifecycle(self) -> tuple[Boot, Boot, Boot]:
        """The uncut upgrade's boot, the trial's boot, and the boot after its confirm."""
        self.store_kills()
        if self.confirmed is None:
            self._run(self._lifecycle)
        return self.upgraded, self.trial, self.confirmed

    def _apk_kill(self) -> None:
        prepare = [
            sh("apk add mesh-tool"),
            cli("push", "-m", "mesh-tool 1.0"),
            write("/etc/config/system", "config system\n\toption hostname 'saved'\n"),
            tree("/data/saved"),
            cli("save"),
            report("old"),
            apk_info("old"),
            # The feeds now offer version 2.
            sh(f"echo '{self.feed('v2')}' > {self.guest(self.feed_list)} && "
               f"touch {HOLD}"),
            cut(*UPGRADE),
        ]
        self.held, self.held_flash_changed = self._cut_at(prepare, HELD, format=True)
        assert "old" in self.held.states, f"boot 1 did not get to the upgrade\n" \
                                          f"{self.held.describe()}"
        self.old = self.held.states["old"]
        self.old_image = self.router.flash.read_bytes()
        self.after_held = self._cut(0)
        self.apk_outcome = self._outcome(self.after_held, "the kill in apk's post-commit")
        KILLED["upgrade (apk's post-commit)"] = [self.apk_outcome]

    def _store_kills(self) -> None:
        assert self.apk_outcome == "old", "the kill in apk's post-commit left the upgrade"
        for k in range(1, len(KILLS) + 1):
            kill = Kill(*KILLS[k - 1], self.last_cut)
            kill.boot = self._cut(k) if k < len(KILLS) else self._upgrade()
            kill.outcome = self._outcome(kill.boot, str(kill))
            self.kills.append(kill)
            if kill.outcome == "new":
                # That boot's upgrade was refused (a trial is pending): run it again from
                # the old state.
                self.router.flash.write_bytes(self.old_image)
                boot = self._cut(k) if k < len(KILLS) else self._upgrade()
                assert self._outcome(boot, f"the old flash image put back after {kill}") \
                    == "old"
        KILLED["upgrade (the store)"] = [kill.outcome for kill in self.kills]

    def _lifecycle(self) -> None:
        self.trial = self.router.boot([report("boot"), apk_info("boot"), cli("list", "--json"),
                                       cli("confirm"), report("confirmed")])
        self.confirmed = self.router.boot([report("boot"), apk_info("boot"), cli("check")])

    # -- boots ----------------------------------------------------------------------------

    def _cut(self, k: int) -> Boot:
        """A boot that checks what the flash holds, then runs the upgrade for the host to
        kill at KILLS[k]."""
        self.last_cut = self.router.cut(CHECKS + [cut(*UPGRADE)], *KILLS[k])
        return self.last_cut.boot

    def _upgrade(self) -> Boot:
        """A boot that checks what the flash holds, then upgrades through /sbin/snapshot."""
        self.upgraded = self.router.boot(CHECKS + [
            sh("/sbin/snapshot upgrade --no-reboot; echo upgrade-rc=$?"),
            report("upgraded"), apk_info("upgraded")])
        return self.upgraded

    def _cut_at(self, plan: list[dict], marker: str, **kwargs) -> tuple[Boot, int]:
        """Boot and follow a plan ending in a `cut` step; kill qemu as soon as the console
        shows `marker` after the command started. Returns the boot and how many erase blocks
        of the flash image changed from the command's start to the kill."""
        router = self.router
        started = time.monotonic()
        before = None
        with router.start(plan, **kwargs) as guest:
            while True:
                text = guest.console_path.read_bytes().decode("utf-8", errors="replace")
                at = text.rfind("kboot-cut: start")
                if at >= 0:
                    if before is None:
                        before = router.flash.read_bytes()
                    if marker in text[at:]:
                        break
                if not guest.is_running() or "kboot-cut: done" in text[max(at, 0):] or \
                        time.monotonic() - started > BOOT_TIMEOUT:
                    guest.kill()
                    raise AssertionError(f"boot {router.boots}: {marker!r} never came\n"
                                         f"{router.boot_of(guest).describe()}")
                time.sleep(0.003)
            guest.kill()
            boot = router.boot_of(guest)
        router.seconds += time.monotonic() - started
        after = router.flash.read_bytes()
        size = FLASH_ERASE_SIZE
        changed = sum(before[i:i + size] != after[i:i + size]
                      for i in range(0, len(after), size))
        return boot, changed

    # -- what a boot after a kill shows ---------------------------------------------------

    def _outcome(self, boot: Boot, what: str) -> str:
        """'old' if the boot shows exactly the state before the upgrade, 'new' if it boots
        the upgrade on trial (its exact files are compared with the uncut upgrade's later);
        anything else fails, naming `what` was cut."""
        assert "boot" in boot.states and checked_clean(boot), (
            f"{what}: the boot did not report, or `snapshot check` was not clean\n"
            f"{boot.describe()}")
        state, old = boot.states["boot"], self.old
        listing = cli_json(boot, "list", "--json")
        if state["chain"] == old["chain"]:
            assert state["view"] == old["view"], (
                f"{what}: the old chain, but not the old files\n"
                f"{view_diff(state['view'], old['view'])}\n{boot.describe()}")
            assert apk_installed(boot, "boot") == [f"mesh-tool-{V1}"], boot.describe()
            assert_booted_from_chain(boot, 1, True, after_cut=True)
            return "old"
        snapshots = state["chain"]["snapshots"]
        shape = [(s["message"], s["state"], s["integrity"].startswith("damaged")) for s in snapshots[1:]]
        assert snapshots[:1] == old["chain"]["snapshots"] and \
            shape == [(MESSAGE, "trial", False)] and state["chain"]["volatile"] is not None \
            and not state["chain"]["volatile"]["integrity"].startswith("damaged"), (
                f"{what}: after the power cut the chain is neither the old nor the new one\n"
                f"chain: {json.dumps(state['chain'])}\nold chain: {json.dumps(old['chain'])}\n"
                f"{boot.describe()}")
        # The volatile record before the upgrade is kept for a failure of the trial.
        kept = [v["size"] for v in listing["volatiles"] if v["kept_for_rollback"]]
        assert kept == [old["chain"]["volatile"]["size"]], listing
        assert apk_installed(boot, "boot") == [f"mesh-tool-{V2}"], boot.describe()
        assert state["view"]["srv/mesh-tool/VERSION"] == entry(b"2\n"), boot.describe()
        assert any("trying snapshot 2: boot 1 of 3" in line for line in boot.snapshot_log()), \
            boot.describe()
        assert_booted_from_chain(boot, 2, True, after_cut=True)
        return "new"


@pytest.fixture(scope="module")
def upgrade_life(tmp_path_factory) -> UpgradeLife:
    return UpgradeLife(tmp_path_factory.mktemp("kernel-upgrade"))


def test_a_kill_while_apk_commits_the_upgrade_boots_exactly_the_state_before_it(upgrade_life):
    """The power is cut once apk has committed the upgrade (version 2 in RAM, database
    included) and before snapshot stores it: nothing on the flash changed, and the next boot
    is exactly the state before, mesh-tool 1.0 by its files and by apk's database."""
    after = upgrade_life.apk_kill()
    held, old = upgrade_life.held, upgrade_life.old
    assert [(s["message"], s["state"]) for s in old["chain"]["snapshots"]] == \
        [("mesh-tool 1.0", "confirmed")] and old["chain"]["volatile"] is not None, old["chain"]
    assert apk_installed(held, "old") == [f"mesh-tool-{V1}"], held.describe()
    assert old["view"]["srv/mesh-tool/VERSION"] == entry(b"1\n")
    # When the power went, the running system held version 2, in its files and database,
    # and the upgrade had written nothing to the flash.
    assert f"{COMMITTED}VERSION 2, database {V2}" in held.console, held.describe()
    assert "kboot-cut: done" not in held.console, held.describe()
    assert upgrade_life.held_flash_changed == 0
    assert upgrade_life.apk_outcome == "old", after.describe()


def test_kills_during_the_store_boot_the_old_state_or_the_upgrade_on_trial(upgrade_life):
    """Each kill while the upgrade's change and the volatile copy are written, or around the
    commit, leaves the state before the upgrade or the upgrade on trial (snapshot 2, the
    volatile record kept for a failure), never a mix: a kill before the copy's last full
    block leaves the old state; a new state holds exactly the files the uncut upgrade's trial
    boots. `snapshot check` is clean after each boot's repair."""
    kills = upgrade_life.store_kills()
    _, trial, _ = upgrade_life.lifecycle()
    want = trial.states["boot"]["view"]
    for kill in kills:
        if kill.cut.blocks < TREE_BLOCKS:
            assert kill.outcome == "old", f"{kill}: the copy was not written, yet new"
        if kill.cut.completed:
            assert kill.outcome == "new", f"{kill}: the upgrade had finished, yet old"
        if kill.outcome == "new":
            got = kill.boot.states["boot"]["view"]
            assert got == want, f"{kill}\n{view_diff(got, want)}"
    router = upgrade_life.router
    print("upgrade on real MTD: " + "; ".join(f"{kill} -> {kill.outcome}" for kill in kills)
          + f"; {router.boots} boots in {router.seconds:.0f} s")


def test_an_uncut_upgrade_boots_version_2_on_trial_and_keeps_it_once_confirmed(upgrade_life):
    """`/sbin/snapshot upgrade --no-reboot` stores the upgrade as snapshot 2 on trial; the
    reboot boots exactly what ran after the transaction, version 2, counted as the trial's
    first boot; once confirmed, the next boot is version 2 again with nothing on trial."""
    upgraded, trial, confirmed = upgrade_life.lifecycle()
    done = upgraded.output.partition("kboot: sh: rc=0 upgraded ")[2]
    assert done.startswith(f"mesh-tool {V1} -> {V2}; stored as snapshot 2") and \
        "on trial" in done.splitlines()[0] and "upgrade-rc=0" in done, upgraded.describe()
    ran = upgraded.states["upgraded"]
    assert apk_installed(upgraded, "upgraded") == [f"mesh-tool-{V2}"]
    # The trial boots what ran after the transaction.
    state = trial.states["boot"]
    assert any("trying snapshot 2: boot 1 of 3" in line for line in trial.snapshot_log()), \
        trial.describe()
    assert_booted_from_chain(trial, 2, True)
    assert state["view"] == ran["view"], view_diff(state["view"], ran["view"])
    assert state["view"]["srv/mesh-tool/VERSION"] == entry(b"2\n")
    assert apk_installed(trial, "boot") == [f"mesh-tool-{V2}"]
    listing = cli_json(trial, "list", "--json")
    assert [(s["message"], s["state"]) for s in listing["snapshots"]] == \
        [("mesh-tool 1.0", "confirmed"), (MESSAGE, "trial")], listing
    assert [s["state"] for s in trial.states["confirmed"]["chain"]["snapshots"]] == \
        ["confirmed", "confirmed"]
    # Confirmed, it stays: no trial counted, version 2 again.
    assert not any("trying" in line for line in confirmed.snapshot_log()), confirmed.describe()
    assert_booted_from_chain(confirmed, 2, True)
    assert checked_clean(confirmed), confirmed.describe()
    after = confirmed.states["boot"]
    assert after["view"] == state["view"], view_diff(after["view"], state["view"])
    assert apk_installed(confirmed, "boot") == [f"mesh-tool-{V2}"]
    assert [(s["message"], s["state"]) for s in after["chain"]["snapshots"]] == \
        [("mesh-tool 1.0", "confirmed"), (MESSAGE, "confirmed")]
    router = upgrade_life.router
    print(f"upgrade end to end: {router.boots} boots in {router.seconds:.0f} s")
