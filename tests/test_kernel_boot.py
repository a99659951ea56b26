"""Kernel tier, end to end: the router's boot on real kernel devices, and real power cuts.

Each test drives qemu itself through tests/kernel_vm.py (so these are not `kernel` tests,
which all run inside one shared guest): every boot is a fresh guest on the same flash image,
a host file behind block2mtd, so the flash persists across boots and GuestHandle.kill() is a
power cut.

A boot (tests/guest_boot/; guest.sh and rootfs.sh there say how):
- the flash: a partition named `rootfs_data` over the whole block2mtd device, added with the
  MTD BLKPG ioctl (on a router the partition table names it), so the preinit hook's
  `snapshot --device mtd:rootfs_data` resolves as on a router;
- the root: a squashfs built here with the router's files, a busybox userland, OpenWrt's
  preinit hook mechanism (/etc/preinit, /lib/functions/preinit.sh, the stock
  /lib/preinit/80_mount_root and a stand-in for fstools' /sbin/mount_root) and our
  initscripts/lib/preinit/81_snapshot. In a private mount namespace the guest pivots into it
  and runs /etc/preinit under busybox ash; 81_snapshot's do_mount_root runs `snapshot mount`,
  which builds the layers and pivots again (or, on a flash without a chain, exits 6 and the
  hook runs the stock mount_root). Python, the venv and the checkout are the host's, reached
  through symlinks that resolve before and after that pivot. The feed package's test builds
  the root of the package as tests/openwrt_package/harness.mk staged it instead
  (package_stage.install_root): its /sbin/snapshot, hook and byte-compiled modules;
- then /sbin/init runs guest_boot/life.py: it reports the chain and the merged root, changes
  files, runs `snapshot push` / `save`, or runs one for the host to kill.

Power-cut realism: block2mtd writes go into the guest's page cache. They reach the disk image
at writeback (by default 30 s after the write) or when the device is closed (mtdchar's close
syncs); fsync() on /dev/mtdN fails with EINVAL (test_block2mtd_persistence shows this). A
kill during a command would then lose all its writes, which tests only "nothing written";
and a writeback pass writes pages in offset order, not program order, so it can put the
anchor entry (blocks 0-3) on the disk before the record's last block, which real flash cannot
do (with 10 ms writeback, one commit in 14 left such a state on the image for about 2 ms).
So the command a test kills runs through guest_boot/synced_cli.py, which syncs after every
program and erase: the disk image follows the program order, as real flash does, and a kill
falls between two flash operations or tears the one under way.

Slow (each boot takes 15-25 s; Python under TCG is 10-20x slower than native), so marked
kernel_boot. Without the kernel assets they fail with the reason (never skip).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import package_stage
from kernel_vm import BUSYBOX, FLASH_ERASE_SIZE, KernelTierUnavailable, KernelVM, \
    create_flash_image

pytestmark = pytest.mark.kernel_boot

REPO = Path(__file__).resolve().parent.parent
GUEST = Path(__file__).resolve().parent / "guest_boot"
KIB = 1 << 10
MIB = 1 << 20
BOOT_TIMEOUT = 300

#: Top-level names the test squashfs needs for itself; the host tree cannot be borrowed there.
ROUTER_DIRS = {"bin", "dev", "etc", "lib", "lib64", "mnt", "overlay", "proc", "rom", "sbin",
               "sys", "tmp", "var", "volatile", ".host"}

#: The router's own files in the squashfs.
ROUTER_FILES = {
    "etc/banner": "OpenWrt (kernel-tier test root)\n",
    "etc/config/system": "config system\n\toption hostname 'OpenWrt'\n",
    "etc/config/network": "config interface 'lan'\n\toption proto 'static'\n",
    "etc/config/firewall": "config defaults\n",
}

#: The data a cut command writes: incompressible, 48 erase blocks of payload; under TCG the
#: CLI starts in about 2 s and then writes a block every 30-50 ms (synced_cli.py included).
TREE = {"files": 48, "size": 64 * KIB}
TREE_BLOCKS = TREE["files"] * TREE["size"] // FLASH_ERASE_SIZE

#: Where the power is cut: once the guest has reported `block` erase blocks of the record
#: written (the CLI's progress line on the console), plus `delay` seconds. The first three
#: fall while the record's blocks are written; the last three after its last full block,
#: around the commit (the rest of the record and its commit marker, then the anchor entry),
#: which comes some 10-30 ms later under TCG.
ALL_KILLS = [(3, 0.0), (16, 0.0), (32, 0.0), (TREE_BLOCKS, 0.0), (TREE_BLOCKS, 0.01),
             (TREE_BLOCKS, 0.03)]
#: Each kill costs two boots (about 25 s), and push, save, convert and upgrade each take
#: every kill: the default run keeps one amid the record's blocks and the one after the
#: commit; SNAPSHOT_ALL_KILLS=1 runs all six (the ones just before the commit too).
KILLS = ALL_KILLS if os.environ.get("SNAPSHOT_ALL_KILLS") == "1" else [
    ALL_KILLS[1], ALL_KILLS[5]]

#: Kills checked per operation, for the summary line (tests/conftest.py prints it).
KILLED: dict[str, list[str]] = {}


def _load_life():
    spec = importlib.util.spec_from_file_location("kboot_life", GUEST / "life.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


life = _load_life()


# -- the router: squashfs root, flash image, boots ----------------------------------------------

def kernel_vm() -> KernelVM:
    """The harness, or a failure with the reason: this tier is never skipped silently."""
    try:
        return KernelVM()
    except KernelTierUnavailable as e:
        reason = str(e)
    pytest.fail(f"kernel tier unavailable: {reason}", pytrace=False)


def _borrowed() -> list[Path]:
    return [REPO, Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable))]


def borrowed_tops() -> list[str]:
    """Top-level directories of the host tree the guest's Python and the project live in,
    but /tmp, which tmp_links() covers."""
    tops = sorted({p.parts[1] for p in _borrowed() if len(p.parts) > 1} - {"usr", "tmp"})
    clash = sorted(set(tops) & ROUTER_DIRS)
    if clash:
        pytest.fail(f"the checkout or Python lives under /{clash[0]}, which the test squashfs "
                    f"needs for itself; move it elsewhere (e.g. /work, /opt)", pytrace=False)
    return tops


def tmp_links() -> str:
    """Names under the host's /tmp the project lives in (a CI clone can). The router's /tmp
    is its own tmpfs: guest_boot/rootfs.sh links these names there to the host tree."""
    return " ".join(sorted({p.parts[2] for p in _borrowed()
                            if len(p.parts) > 2 and p.parts[1] == "tmp"}))


def build_rootfs(dest: Path, work: Path, package: package_stage.Staged | None = None) -> Path:
    """Build the squashfs root at dest (see the module doc and guest_boot/rootfs.sh). With a
    staged feed package, snapshot is that package, installed as OpenWrt would install it
    (package_stage.install_root); otherwise it is the checkout's initscripts and the venv's
    CLI."""
    tree = work / "rootfs"
    if tree.exists():
        shutil.rmtree(tree)

    def put(rel: str, source: Path, mode: int = 0o644) -> None:
        shutil.copyfile(source, tree / rel)
        os.chmod(tree / rel, mode)

    # OpenWrt's squashfs has /overlay too; /volatile is snapshot's own (`mount` makes it).
    for d in ("proc", "sys", "dev", "tmp", "mnt", "rom", "overlay", ".host", "etc/config",
              "lib/preinit", "lib/functions", "lib/snapshot", "bin", "sbin"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    for rel, text in ROUTER_FILES.items():
        (tree / rel).write_text(text)
    # The router's userland is busybox, as on OpenWrt (util-linux's mount would need a
    # writable /run for `mount --move`).
    put("bin/busybox", Path(BUSYBOX), 0o755)
    applets = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in applets:
        if applet.startswith(("bin/", "sbin/")) and applet not in ("bin/busybox", "sbin/init"):
            (tree / applet).symlink_to("/bin/busybox")
    put("etc/preinit", GUEST / "preinit", 0o755)
    put("lib/functions/preinit.sh", GUEST / "functions-preinit.sh")
    put("lib/preinit/70_kboot", GUEST / "70_kboot")
    put("lib/preinit/80_mount_root", GUEST / "80_mount_root")
    put("sbin/mount_root", GUEST / "mount_root", 0o755)
    (tree / "sbin/init").write_text(
        "#!/bin/sh\n# After preinit: the test's life of the router.\n"
        f"exec {sys.executable} {GUEST / 'life.py'}\n")
    os.chmod(tree / "sbin/init", 0o755)
    links = {
        "rom/.host": "/.host",
        "lib64": "usr/lib64",
        "lib/x86_64-linux-gnu": "/usr/lib/x86_64-linux-gnu",
        "etc/ld.so.cache": "/rom/.host/etc/ld.so.cache",
        "var": "tmp",
    }
    links.update({top: f"/rom/.host/{top}" for top in borrowed_tops()})
    if package is None:
        put("etc/config/snapshot", REPO / "initscripts/etc/config/snapshot")
        put("lib/preinit/81_snapshot", REPO / "initscripts/lib/preinit/81_snapshot")
        # `snapshot convert` hands over to it; it pivots into the squashfs (onto its /mnt).
        put("lib/snapshot/convert-stage", REPO / "initscripts/lib/snapshot/convert-stage",
            0o755)
        # The package installs the CLI in the root's PATH; here it is the venv's.
        (tree / "sbin/snapshot").symlink_to(Path(sys.prefix) / "bin/snapshot")
        links["usr"] = "/rom/.host/usr"
    else:
        package_stage.install_root(package, tree, "/rom/.host")
    for rel, target in links.items():
        (tree / rel).symlink_to(target)
    subprocess.run(["mksquashfs", str(tree), str(dest), "-noappend", "-quiet", "-all-root"],
                   check=True, capture_output=True)
    return dest


@dataclass
class Boot:
    """What one boot printed: the state at each `report` step, and the logs."""
    output: str
    console: str
    states: dict = field(default_factory=dict)

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith(prefix)]

    def snapshot_log(self) -> list[str]:
        """What `snapshot mount` said (stderr, `snapshot: ...`)."""
        return self.lines("snapshot: ")

    def describe(self) -> str:
        return (f"--- guest output ---\n{self.output[-6000:]}\n"
                f"--- console tail ---\n{self.console}")


@dataclass
class Cut:
    """A boot ended by a power cut during its `cut` step."""
    boot: Boot
    blocks: int          # erase blocks the command had reported written when qemu was killed
    completed: bool      # the command had finished before the kill
    blocks_on_disk: int  # erase blocks of the image the command changed that reached the disk


def parse(output: str, console: str) -> Boot:
    boot = Boot(output, console)
    for line in output.splitlines():
        if line.startswith("KBOOT-STATE "):
            _, label, data = line.split(" ", 2)
            boot.states[label] = json.loads(data)
    return boot


class Router:
    """A router made of the test squashfs and one flash image that persists across boots."""

    def __init__(self, vm: KernelVM, work: Path, flash_size: int = 32 * MIB,
                 package: package_stage.Staged | None = None, ubi: bool = False):
        self.vm = vm
        # For guest.sh: KBOOT_UBI=1 makes rootfs_data a UBI volume on the flash; a test
        # may add KBOOT_UBIFS or KBOOT_RECREATE for a boot.
        self.env = {"KBOOT_UBI": "1"} if ubi else {}
        self.work = work
        # Shared with the guest (at the same path): the squashfs is loop-mounted from here.
        self.results = work / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.tree = work / "rootfs"
        self.squashfs = build_rootfs(self.results / "root.sqfs", work, package)
        self.flash = work / "flash.img"
        create_flash_image(self.flash, flash_size)
        self.boots = 0
        self.seconds = 0.0

    def start(self, plan: list[dict], *, format: bool = False):
        self.boots += 1
        env = {"KBOOT_SQUASHFS": str(self.squashfs), "KBOOT_PYTHON": sys.executable,
               "KBOOT_PLAN": json.dumps(plan), "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONUNBUFFERED": "1", "KBOOT_TMP_LINKS": tmp_links(), **self.env}
        if format:
            env["KBOOT_FORMAT"] = "1"
        return self.vm.start(["/bin/sh", str(GUEST / "guest.sh")], cwd=str(REPO), env=env,
                             results_dir=self.results, flash_image=self.flash)

    def boot(self, plan: list[dict], **kwargs) -> Boot:
        """Boot, follow the plan, power off cleanly."""
        started = time.monotonic()
        with self.start(plan, **kwargs) as guest:
            result = guest.wait(BOOT_TIMEOUT)
            console = guest.console_tail(100)
        self.seconds += time.monotonic() - started
        boot = parse(result.output, console)
        assert result.returncode == 0 and "kboot: plan done" in result.output, (
            f"boot {self.boots} failed (exit {result.returncode})\n{boot.describe()}")
        return boot

    def cut(self, plan: list[dict], block: int, delay: float, **kwargs) -> Cut:
        """Boot and follow a plan ending in a `cut` step; kill qemu once the command has
        reported `block` erase blocks written (or has finished), plus `delay` seconds."""
        started = time.monotonic()
        before = None
        with self.start(plan, **kwargs) as guest:
            while True:
                text = guest.console_path.read_bytes().decode("utf-8", errors="replace")
                at = text.rfind("kboot-cut: start")
                if at >= 0:
                    if before is None:
                        # Everything before the command was written by commands that closed
                        # the device, which syncs: the image is current; the command is
                        # still starting Python.
                        before = self.flash.read_bytes()
                    tail = text[at:]
                    if tail.count(" written") >= block or "kboot-cut: done" in tail:
                        break
                if not guest.is_running() or time.monotonic() - started > BOOT_TIMEOUT:
                    guest.kill()
                    raise AssertionError(f"boot {self.boots}: the guest stopped or hung before "
                                         f"the cut\n{self.boot_of(guest).describe()}")
                time.sleep(0.003)
            if delay:
                time.sleep(delay)
            guest.kill()
            boot = self.boot_of(guest)
            text = guest.console_path.read_bytes().decode("utf-8", errors="replace")
        self.seconds += time.monotonic() - started
        after = self.flash.read_bytes()
        changed = sum(before[i:i + FLASH_ERASE_SIZE] != after[i:i + FLASH_ERASE_SIZE]
                      for i in range(0, len(after), FLASH_ERASE_SIZE))
        tail = text[text.rfind("kboot-cut: start"):]
        return Cut(boot, tail.count(" written"), "kboot-cut: done" in tail, changed)

    def boot_of(self, guest) -> Boot:
        """What a boot printed, also one that ended without the job's exit code (killed, or
        rebooted by the guest itself), when GuestHandle.wait() has no result to give: the
        harness leaves the command's output in results/.kernel-vm/output."""
        output_file = self.results / ".kernel-vm" / "output"
        output = output_file.read_bytes().decode("utf-8", errors="replace") \
            if output_file.exists() else ""
        text = guest.console_path.read_bytes().decode("utf-8", errors="replace")
        return parse(output, "\n".join(text.splitlines()[-100:]))


@pytest.fixture
def router(tmp_path) -> Router:
    return Router(kernel_vm(), tmp_path)


# -- steps of a plan ---------------------------------------------------------------------------

def report(label):
    return {"op": "report", "label": label}


def write(path, text):
    return {"op": "write", "path": path, "text": text}


def delete(path):
    return {"op": "delete", "path": path}


def tree(path):
    return {"op": "tree", "path": path, **TREE}


def cli(*args):
    return {"op": "snapshot", "args": list(args)}


def cut(*args):
    return {"op": "cut", "args": list(args)}


# -- checks ------------------------------------------------------------------------------------

BOOT_PROBLEMS = ("chain damaged", "falling back", "repair failed", "not applied",
                 "booting snapshots 1..")
#: What an interrupted anchor program leaves (an entry spanning two pages can be cut between
#: them); the boot's repair rewrites it, and the state is the old one.
TORN_ANCHOR = "an interrupted write left a torn anchor entry"


def assert_booted_from_chain(boot: Boot, snapshots: int, volatile: bool,
                             after_cut: bool = False) -> None:
    """The preinit hook booted the chain through snapshot, with no damage or fallback
    (after a power cut: but for a torn anchor entry, repaired)."""
    log = boot.snapshot_log()
    want = f"snapshot: mounted {snapshots} snapshots" + (" and the volatile record" if volatile
                                                          else " in ")
    assert any(line.startswith(want) for line in log), f"expected {want!r}\n{boot.describe()}"
    problems = [line for line in log if any(p in line for p in BOOT_PROBLEMS)
                and not (after_cut and TORN_ANCHOR in line)]
    assert not problems, f"{problems}\n{boot.describe()}"
    assert "kboot: stock mount_root" not in boot.output, boot.describe()
    assert "kboot: preinit_mount_root ran; / is overlay overlay" in boot.output, boot.describe()


def view_diff(got: dict, want: dict) -> str:
    lines = []
    for path in sorted(set(got) | set(want)):
        if got.get(path) != want.get(path):
            lines.append(f"  {path}: {want.get(path, '(absent)')} -> {got.get(path, '(absent)')}")
    return "\n".join(lines[:20]) or "  (same)"


def outcome(state: dict, old: dict, new: dict, operation: str, message: str = "") -> str | None:
    """'old' or 'new' if state (a boot's report) is exactly one of them, else None.

    old is the state reported before the command (all of it saved or pushed); new the live
    state when the command started. For push, new's chain is old's snapshots plus one with
    `message`, and no volatile record; for save, old's snapshots and a volatile record."""
    chain, old_chain = state["chain"], old["chain"]
    if chain == old_chain and state["view"] == old["view"]:
        return "old"
    if any(s["integrity"].startswith("damaged") for s in chain["snapshots"]):
        return None
    if operation == "push":
        new_chain = (chain["snapshots"][:-1] == old_chain["snapshots"]
                     and len(chain["snapshots"]) == len(old_chain["snapshots"]) + 1
                     and chain["snapshots"][-1]["message"] == message
                     and chain["volatile"] is None)
    else:
        new_chain = (chain["snapshots"] == old_chain["snapshots"]
                     and chain["volatile"] is not None
                     and not chain["volatile"]["integrity"].startswith("damaged"))
    return "new" if new_chain and state["view"] == new["view"] else None


def check_outcome(boot: Boot, old: dict, new: dict, operation: str, message: str,
                  what: str) -> str:
    state = boot.states["boot"]
    found = outcome(state, old, new, operation, message)
    assert found is not None, (
        f"{what}: after the power cut the state is neither the old nor the new one\n"
        f"chain: {json.dumps(state['chain'])}\nold chain: {json.dumps(old['chain'])}\n"
        f"view against old:\n{view_diff(state['view'], old['view'])}\n"
        f"view against new:\n{view_diff(state['view'], new['view'])}\n{boot.describe()}")
    if found == "old":
        assert_booted_from_chain(boot, len(old["chain"]["snapshots"]),
                                 old["chain"]["volatile"] is not None, after_cut=True)
    else:
        assert_booted_from_chain(boot, len(state["chain"]["snapshots"]), operation == "save",
                                 after_cut=True)
    return found


# -- the tests ---------------------------------------------------------------------------------

def test_block2mtd_persistence(tmp_path):
    """What a kill keeps of block2mtd writes: the premise of synced_cli.py (module doc).

    A written block stays in the guest's page cache: it is not on the disk image 2 s after
    the write with the kernel's default writeback (30 s); it is as soon as the device is
    closed (mtdchar syncs at close), or after sync(). fsync() on the MTD character device is
    refused (EINVAL), so a program cannot force it that way."""
    vm = kernel_vm()
    results = tmp_path / "results"
    results.mkdir()
    flash = tmp_path / "flash.img"
    create_flash_image(flash, 4 * MIB)
    probe = str(GUEST / "persistence.py")
    with vm.start([sys.executable, probe], cwd=str(REPO), env={"KBOOT_RESULTS": str(results)},
                  results_dir=results, flash_image=flash) as guest:

        def wait_for(marker: str) -> None:
            deadline = time.monotonic() + BOOT_TIMEOUT
            while marker not in guest.console_path.read_text(errors="replace"):
                assert guest.is_running() and time.monotonic() < deadline, guest.console_tail()
                time.sleep(0.01)

        def on_disk(block: int) -> bool:
            marker = b"persistence-%03d" % block
            with open(flash, "rb") as f:
                f.seek(block * FLASH_ERASE_SIZE)
                return f.read(len(marker)) == marker

        wait_for("kboot-persist: wrote 5")
        time.sleep(2)
        after_2s = on_disk(5)
        (results / "go").write_text("close")
        wait_for("kboot-persist: closed 5")
        after_close = on_disk(5)
        (results / "go").write_text("sync")
        wait_for("kboot-persist: synced 6")
        after_sync = on_disk(6)
        console = guest.console_tail(20)
        guest.kill()
    fsync = [line for line in console.splitlines() if "kboot-persist: fsync" in line]
    print(f"block2mtd: a written block is on the disk image 2 s later (default writeback): "
          f"{after_2s}; right after close: {after_close}; right after sync(): {after_sync}; "
          f"{fsync[-1].strip()}")
    assert after_close and after_sync, console
    assert not after_2s, "block2mtd wrote through; the module doc's premise is stale"
    assert "Invalid argument" in fsync[-1], console


def test_boot_push_save_reboot(router):
    """A router's life: on an erased flash the hook leaves the boot to the stock mount_root;
    once formatted, it boots the chain; push and save survive a reboot, unsaved changes do
    not."""
    stock = router.boot([report("boot"), cli("format"), report("formatted")])
    assert "kboot: stock mount_root: tmpfs overlay" in stock.output, stock.describe()
    assert "kboot: preinit_mount_root ran; / is overlayfs:/tmp/root overlay" in stock.output, \
        stock.describe()
    assert not stock.snapshot_log(), stock.describe()
    squashfs_view = life.manifest(router.tree, life.NOT_FILES)
    state = stock.states["boot"]
    assert state["chain"] is None
    assert state["mounts"] == {"/": "overlay", "/rom": "squashfs", "/overlay": None,
                               "/volatile": None, "/tmp": "tmpfs"}
    assert state["view"] == squashfs_view, view_diff(state["view"], squashfs_view)
    assert stock.states["formatted"]["chain"] == {"snapshots": [], "volatile": None}

    first = router.boot([
        report("boot"),
        write("/etc/config/network", "config interface 'lan'\n\toption proto 'dhcp'\n"),
        delete("/etc/banner"),
        write("/etc/pushed", "pushed\n"),
        cli("push", "-m", "from the router"),
        write("/etc/config/system", "config system\n\toption hostname 'saved'\n"),
        write("/etc/saved", "saved\n"),
        cli("save"),
        report("saved"),
        write("/etc/unsaved", "unsaved\n"),
        write("/etc/config/firewall", "unsaved edit\n"),
        delete("/etc/pushed"),
        report("end"),
    ])

    # Formatted: the empty chain, booted by our hook; the merged root is the squashfs.
    assert first.lines("kboot: preinit_essential ran"), first.describe()
    assert_booted_from_chain(first, 0, False)
    state = first.states["boot"]
    assert state["chain"] == {"snapshots": [], "volatile": None}
    assert state["mounts"] == {"/": "overlay", "/rom": "squashfs", "/overlay": "tmpfs",
                               "/volatile": "tmpfs", "/tmp": "tmpfs"}
    assert state["view"] == squashfs_view, view_diff(state["view"], squashfs_view)
    assert state["volatile_upper"] == [] and state["overlay_upper"] == ["volatile"]
    assert any("pushed snapshot 1" in line for line in first.lines("kboot: snapshot push"))
    assert any("saved the volatile record" in line
               for line in first.lines("kboot: snapshot save"))
    end = first.states["end"]["view"]
    assert "etc/unsaved" in end and "etc/pushed" not in end

    second = router.boot([report("boot"), cli("check")])
    assert_booted_from_chain(second, 1, True)
    state = second.states["boot"]
    chain = state["chain"]
    assert [s["message"] for s in chain["snapshots"]] == ["from the router"]
    assert chain["volatile"] is not None
    assert not chain["volatile"]["integrity"].startswith("damaged")
    assert state["mounts"] == first.states["boot"]["mounts"]
    view = state["view"]
    # Exactly what was pushed and saved, nothing unsaved.
    assert view == first.states["saved"]["view"], view_diff(view, first.states["saved"]["view"])
    assert view["etc/config/network"] == first.states["saved"]["view"]["etc/config/network"]
    assert "etc/banner" not in view and "etc/pushed" in view and "etc/saved" in view
    assert "etc/unsaved" not in view
    assert view["etc/config/firewall"] == squashfs_view["etc/config/firewall"]
    # The pushed changes are a snapshot layer (the deletion a whiteout); the saved ones are
    # back in the volatile layer.
    assert {"etc/config/network", "etc/pushed", "etc/banner"} <= set(state["overlay_upper"])
    assert {"etc/config/system", "etc/saved"} <= set(state["volatile_upper"])
    assert "etc/unsaved" not in state["volatile_upper"]
    print(f"end to end: {router.boots} boots in {router.seconds:.0f} s; volatile record after "
          f"push + save holds {state['volatile_upper']}")


def power_cuts(router: Router, operation: str, label: str | None = None) -> list[str]:
    """Cut the power during `operation` at each of KILLS, chaining the trials: each boot
    checks the state the previous cut left, then prepares the next trial and starts the
    command for the host to kill. Returns the outcomes ('old' or 'new')."""

    def trial(k: int) -> list[dict]:
        """Make the old state (all of it on flash), then the changes the command stores."""
        if operation == "push":
            # The push consumes a volatile record: save one first.
            steps = [write("/etc/config/system", f"config system # before push {k}\n"),
                     cli("save"), report("old"), tree(f"/data/push-{k}")]
        else:
            # Replace the saved data with new data; delete the last trial's, if it survived.
            steps = [report("old"), delete("/data"),
                     write("/etc/config/system", f"config system # save {k}\n"),
                     tree(f"/data/save-{k}")]
        return steps + [report("new"), cut(operation, *(["-m", f"trial {k}"]
                                                           if operation == "push" else []))]

    outcomes, details = [], []
    previous = None
    prepare = [write("/etc/config/network", "config interface 'lan' # base\n"),
               cli("push", "-m", "base")]
    for k, (block, delay) in enumerate(KILLS, 1):
        plan = ([report("boot")] if previous else prepare) + trial(k)
        result = router.cut(plan, block, delay, format=previous is None)
        boot = result.boot
        if previous:
            outcomes.append(check_outcome(boot, *previous, f"{operation} kill {k - 1}"))
        assert {"old", "new"} <= set(boot.states), (
            f"{operation} trial {k}: the guest did not get to the command\n{boot.describe()}")
        details.append(f"kill {k}: after {result.blocks} of ~{TREE_BLOCKS} blocks reported "
                       f"written (+{delay * 1000:.0f} ms)"
                       + (", after the command finished" if result.completed else "")
                       + f", {result.blocks_on_disk} blocks changed on the disk image")
        previous = (boot.states["old"], boot.states["new"], operation,
                    f"trial {k}" if operation == "push" else "")
    last = router.boot([report("boot"), cli("check")])
    outcomes.append(check_outcome(last, *previous, f"{operation} kill {len(KILLS)}"))
    KILLED[label or operation] = outcomes
    summary = (f"{operation}: {len(KILLS)} power cuts (qemu killed) in {router.boots} boots, "
               f"{router.seconds:.0f} s; outcomes {outcomes}\n  "
               + "\n  ".join(f"{d} -> {o}" for d, o in zip(details, outcomes)))
    print(summary)
    return outcomes


def test_power_cuts_during_push(router):
    """A kill during `snapshot push` leaves the old chain and volatile record, or the new
    chain and no volatile record; the next boot says which and shows exactly that."""
    power_cuts(router, "push")


def test_power_cuts_during_save(router):
    """A kill during `snapshot save` leaves the old volatile record or the new one."""
    power_cuts(router, "save")


# -- changes on trial, through real reboots ---------------------------------------------------

def sh(script):
    return {"op": "sh", "script": script}


def snapshot_states(state: dict) -> list[str]:
    return [s["state"] for s in state["chain"]["snapshots"]]


def test_a_trial_that_never_gets_confirmed_gives_way_after_max_attempts_boots(router):
    """A crash loop: the trial boots through the preinit hook, each boot counting it, and no
    boot confirms it; after max_attempts (3) the next boot is the state before it."""
    first = router.boot([write("/etc/config/network", "config interface 'lan' # good\n"),
                         cli("push", "-m", "good"),
                         write("/etc/config/network", "config interface 'lan' # broken\n"),
                         cli("push", "--trial", "-m", "broken"), report("pushed")],
                        format=True)
    assert snapshot_states(first.states["pushed"]) == ["confirmed", "trial"]
    broken = first.states["pushed"]["view"]["etc/config/network"]
    for attempt in range(1, 4):
        boot = router.boot([report("boot")])
        assert any(f"trying snapshot 2: boot {attempt} of 3" in line
                   for line in boot.snapshot_log()), boot.describe()
        assert boot.states["boot"]["view"]["etc/config/network"] == broken
    fallen = router.boot([report("boot"), cli("status")])
    assert any("rolled back: snapshot 2 was not confirmed in 3 boots" in line
               for line in fallen.snapshot_log()), fallen.describe()
    state = fallen.states["boot"]
    assert snapshot_states(state) == ["confirmed", "failed"]
    assert state["view"]["etc/config/network"] != broken
    assert any("last rollback" in line and "not confirmed in 3 boots" in line
               for line in fallen.output.splitlines()), fallen.describe()
    # status also says how much RAM the running system's two tmpfs layers use.
    assert "RAM in /overlay: " in fallen.output and "RAM in /volatile: " in fallen.output, \
        fallen.describe()


#: The router's mesh, as its configuration says: a batman-adv bat0 over one end of a veth pair
#: whose other end is a neighbour in a network namespace. /etc/mesh-broken (a change that
#: breaks the mesh) leaves the neighbour's end down.
MESH = r"""
set -e
# The router's iproute2: busybox's ip (which its ash runs in place of any other) knows no
# netns, veth or batadv.
ip=/usr/bin/ip
mkdir -p /run/netns
$ip netns add peer
$ip link add vA type veth peer name vB netns peer
$ip link add bat0 type batadv
$ip link set vA master bat0
$ip link set vA up
$ip link set bat0 up
$ip -n peer link add bat0 type batadv
$ip -n peer link set vB master bat0
$ip -n peer link set bat0 up
[ -e /etc/mesh-broken ] || $ip -n peer link set vB up
cat > /tmp/health.conf <<CONF
config snapshot 'main'
	option interval '2'
	option grace '0'
	option pass_rounds '2'
	option fail_rounds '3'
	option window '600'
	option health_dir '/tmp/none'
	option rollback_dir '/tmp/none'
config check 'mesh'
	option type 'batman'
	option meshif 'bat0'
	option fresh '5'
CONF
"""


ROUTER_PATH = "PATH=/usr/sbin:/usr/bin:$PATH"


#: Waits (up to 60 s) until bat0 has a batman-adv neighbour.
BATMAN_NEIGHBOUR = (f"for i in $(seq 120); do {ROUTER_PATH} batctl meshif bat0 n -H | "
                    f"grep -q vA && exit 0; sleep 0.5; done; exit 1")


def test_a_trial_that_breaks_the_batman_mesh_is_rolled_back_by_the_watch(router):
    router.boot([write("/etc/config/network", "config interface 'lan' # good\n"),
                 cli("push", "-m", "good"),
                 write("/etc/mesh-broken", "this change breaks the mesh\n"),
                 cli("push", "--trial", "-m", "breaks the mesh")], format=True)
    tried = router.boot([report("boot"), sh(MESH),
                         sh(f"{ROUTER_PATH} SNAPSHOT_CONFIG=/tmp/health.conf snapshot watch "
                            f"--no-reboot; [ $? -eq 5 ]")])
    assert "etc/mesh-broken" in tried.states["boot"]["view"], tried.describe()
    assert any("rolled back snapshot 2: mesh: bat0: 0 batman-adv neighbours" in line
               for line in tried.output.splitlines()), tried.describe()
    # One `snapshot health` judges the mesh at once: first let batman-adv find the peer,
    # which takes a few of its 1 s rounds, more when the guest runs slowly.
    after = router.boot([report("boot"), sh(MESH), sh(BATMAN_NEIGHBOUR),
                         sh(f"{ROUTER_PATH} SNAPSHOT_CONFIG=/tmp/health.conf snapshot "
                            f"health")])
    state = after.states["boot"]
    assert snapshot_states(state) == ["confirmed", "failed"]
    assert "etc/mesh-broken" not in state["view"], after.describe()
    assert any("pass  mesh: bat0: 1 batman-adv neighbours" in line
               for line in after.output.splitlines()), after.describe()


# -- the feed package, as OpenWrt installs it ---------------------------------------------------

#: Where the router's interpreter finds the modules it imports (`import` as the package's
#: /sbin/snapshot does; click as python3-click would provide it).
MODULES = ('/usr/bin/python3 -c "import snapshot, mtd._mtd_abi as abi, click; '
           'print(snapshot.__file__, abi.__file__, click.__file__)"')


def test_a_router_made_of_the_staged_feed_package_boots_its_chain(tmp_path):
    """The squashfs holds the feed package as tests/openwrt_package/harness.mk staged it
    (package_stage.py): its /sbin/snapshot, preinit hook, init script and byte-compiled
    Python packages, which the router's /usr/bin/python3 finds in
    /usr/lib/python3.X/site-packages; nothing of the checkout. A user formats, pushes and
    saves through /sbin/snapshot; the next boot's preinit hook boots the chain through it,
    and the state survives the reboot."""
    staged = package_stage.stage(tmp_path / "package")
    router = Router(kernel_vm(), tmp_path / "router", package=staged)
    site = f"/{package_stage.SITE_PACKAGES}"

    stock = router.boot([report("boot"), sh(MODULES), sh("/sbin/snapshot format"),
                         report("formatted")])
    assert "kboot: stock mount_root: tmpfs overlay" in stock.output, stock.describe()
    (modules,) = stock.lines("kboot: sh: rc=0 /usr/lib/")
    assert modules.split()[3:] == [f"{site}/snapshot/__init__.pyc",
                                   f"{site}/mtd/_mtd_abi.abi3.so", f"{site}/click/__init__.py"]
    assert stock.states["formatted"]["chain"] == {"snapshots": [], "volatile": None}

    lived = router.boot([
        report("boot"),
        write("/etc/config/network", "config interface 'lan'\n\toption proto 'dhcp'\n"),
        write("/etc/pushed", "pushed\n"),
        sh("/sbin/snapshot push -m 'from the package'"),
        write("/etc/config/system", "config system\n\toption hostname 'saved'\n"),
        sh("/sbin/snapshot save"),
        report("saved"),
        write("/etc/unsaved", "unsaved\n"),
    ])
    assert_booted_from_chain(lived, 0, False)
    assert any("pushed snapshot 1" in line for line in lived.lines("kboot: sh: rc=0")), \
        lived.describe()
    assert any("saved the volatile record" in line for line in lived.lines("kboot: sh: rc=0")), \
        lived.describe()
    # The root the router ran: every file of the package is the staged one.
    packaged = {rel: entry for rel, entry in life.manifest(staged.root).items()
                if entry.startswith("f ")}
    view = lived.states["boot"]["view"]
    assert {rel: view.get(rel) for rel in packaged} == packaged

    rebooted = router.boot([report("boot"), sh("/sbin/snapshot list")])
    assert_booted_from_chain(rebooted, 1, True)
    state = rebooted.states["boot"]
    assert [s["message"] for s in state["chain"]["snapshots"]] == ["from the package"]
    assert state["view"] == lived.states["saved"]["view"], \
        view_diff(state["view"], lived.states["saved"]["view"])
    assert "etc/unsaved" not in state["view"]
    # What `snapshot list` printed, after its first line.
    assert "confirmed   from the package" in rebooted.output.partition("kboot: sh: rc=0 ")[2], \
        rebooted.describe()
    print(f"feed package: {router.boots} boots in {router.seconds:.0f} s from the staged tree")
