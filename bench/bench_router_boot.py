"""Boot cost on a router's CPU: the real router's mipsel root (scripts/build-router.sh
ARCH=mipsel, booted by tests/router_vm.py under qemu-system-mipsel's malta, TCG), timed by
the guest's own clock:
- the boot from preinit's start (procd's "init: - preinit -" in the kernel log) to procd's
  init.d, the rc.d start ("procd: - init -"), with rootfs_data a chain against the same root
  with the same files on the stock jffs2: one flash image of each, made from the same first
  boot (the files written on jffs2, then a copy converted), booted in turn, medians;
- `snapshot mount` of the chain (sandbox form, into a target under /tmp) against busybox's
  `tar xzf` of the same snapshots' archives (`snapshot export`) into a tmpfs, interleaved in
  that guest, medians of wall time between /proc/uptime readings (the guest has one CPU);
  beside it the time the mount logs of itself, after Python's start-up.

TCG's absolute times are not a router's; the ratios are what matter. The issue names no
target for the boot: the one here is that a chain boot costs at most twice the stock one
in that window; the mount's is bench_boot.py's on the host.
Needs root (the root's build). Run: .venv/bin/python bench/bench_router_boot.py
"""
import itertools
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import interleaved, verdict  # noqa: E402
from router_vm import Router, build_root, erased_flash  # noqa: E402

BOOTS = 3
MOUNT_ROUNDS = 5
BOOT_TARGET = 2.0
MOUNT_TARGET = 1.15
#: Seconds for a boot to reach its console and for rc.d to finish (router_vm scales them).
BOOT_TIMEOUT = 400
SETTLE_TIMEOUT = 300

def files(directory: str) -> str:
    """Shell for 100 files of 8 KiB from /dev/urandom and 100 of zeros in directory."""
    return (f"mkdir -p {directory} && i=0; while [ $i -lt 100 ]; do "
            f"head -c 8192 /dev/urandom > {directory}/r$i; "
            f"head -c 8192 /dev/zero > {directory}/z$i; i=$((i + 1)); done; sync")


PREINIT = re.compile(r"^\[\s*([\d.]+)\] init: - preinit -$", re.M)
INIT_D = re.compile(r"^\[\s*([\d.]+)\] procd: - init -$", re.M)


def settled(router: Router) -> Router:
    router.login(BOOT_TIMEOUT)
    router.wait_until("ubus call service list '{\"name\": \"snapshot\"}' | grep -q exit_code",
                      SETTLE_TIMEOUT)
    return router


def reboot(router: Router) -> None:
    router.send("reboot\n")
    router.wait_exit(120)


def window(router: Router) -> float:
    """Seconds from preinit's start to procd's init.d in this boot's kernel log."""
    log = router.check("dmesg")
    return float(INIT_D.search(log).group(1)) - float(PREINIT.search(log).group(1))


def convert(root: Path, flash: Path, console_log: Path) -> None:
    """A boot of flash that runs `snapshot convert` once the overlay is jffs2 (a first boot's
    rc.d formats it), which reboots into the chain."""
    with Router(root, flash, console_log) as router:
        settled(router)
        router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", SETTLE_TIMEOUT)
        router.send("snapshot convert\n")
        router.expect("snapshot convert: converted; rebooting into the chain", 600)
        router.wait_exit(120)


BOOT_NUMBERS = itertools.count(1)


def boot_seconds(root: Path, flash: Path, work: Path, kind: str) -> float:
    """One boot of flash, which holds a chain or jffs2 (kind): its preinit-to-init.d time."""
    with Router(root, flash, work / f"console-{kind}-{next(BOOT_NUMBERS)}.log") as router:
        settled(router)
        mounts = router.check("cat /proc/mounts")
        expected = " /overlay jffs2 " if kind == "jffs2" else " /overlay tmpfs "
        if expected not in mounts:
            raise SystemExit(f"the {kind} boot mounted /overlay otherwise:\n{mounts}")
        seconds = window(router)
        reboot(router)
    return seconds

#: In the guest, per round: `snapshot mount` into a fresh target, then busybox tar of the
#: archives into a fresh tmpfs; /proc/uptime before and after each, one line per contender.
#: The mounts are undone between rounds, outside what is measured.
MOUNT_ROUND = r"""
n=ROUND
read a _ </proc/uptime
snapshot mount --root /rom --target /tmp/m$n >/tmp/mount.log 2>&1 || { cat /tmp/mount.log; exit 1; }
read b _ </proc/uptime
echo "mount $a $b"
# What the mount logs of its own time (after Python's start-up and the imports): on stderr,
# as a sandbox mount logs only there (the kernel log's line is the boot's own mount).
echo "work 0 $(grep 'snapshot: mounted' /tmp/mount.log | tail -n 1 | sed 's/.* in \([0-9.]*\)s$/\1/')"
grep -o " /tmp/\.\?m$n[^ ]*" /proc/mounts | sort -r | while read -r m; do umount "$m"; done
mkdir /tmp/x$n && mount -t tmpfs tmpfs /tmp/x$n
read a _ </proc/uptime
for f in /tmp/archive-*.tgz; do tar xzf "$f" -C /tmp/x$n || exit 1; done
read b _ </proc/uptime
echo "tar $a $b"
umount /tmp/x$n
"""


def bench_mount(router: Router) -> None:
    """On a chain boot: two more snapshots pushed, every snapshot exported, then the rounds."""
    for i in (1, 2):
        router.check(f"{files(f'/srv/pushed{i}')} && snapshot push -m 'bench {i}'", 600)
    count = int(re.search(r'"snapshots": (\d+)',
                          router.check("snapshot status --json", 300)).group(1))
    for i in range(1, count + 1):
        router.check(f"snapshot export {i} -o /tmp/archive-{i}.tgz", 600)
    # Each round runs both, one after the other (interleaved, as measure.interleaved does).
    times = {"mount": [], "work": [], "tar": []}
    for n in range(MOUNT_ROUNDS):
        for line in router.check(MOUNT_ROUND.replace("ROUND", str(n)), 900).splitlines():
            what, before, after = line.split()
            times[what].append(float(after) - float(before))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["mount"] / medians["tar"]
    print(f"mipsel guest, {count} snapshots: snapshot mount {medians['mount']:.2f}s, busybox "
          f"tar xzf {medians['tar']:.2f}s (wall, medians of {MOUNT_ROUNDS}): "
          f"ratio {ratio:.2f} {verdict(ratio, MOUNT_TARGET)}; the mount after start-up "
          f"{medians['work']:.2f}s: ratio {medians['work'] / medians['tar']:.2f}")


def main() -> None:
    root = build_root("mipsel")
    with tempfile.TemporaryDirectory(prefix="bench-router-boot-") as tmp:
        work = Path(tmp)
        jffs2 = erased_flash(work / "jffs2.img")
        with Router(root, jffs2, work / "console-first.log") as router:
            settled(router)
            router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", SETTLE_TIMEOUT)
            router.check(files("/srv/bench"), 300)
            reboot(router)
        chain = work / "chain.img"
        shutil.copyfile(jffs2, chain)
        convert(root, chain, work / "console-convert.log")
        medians = interleaved(BOOTS, {
            "jffs2": lambda: boot_seconds(root, jffs2, work, "jffs2"),
            "chain": lambda: boot_seconds(root, chain, work, "chain"),
        })
        ratio = medians["chain"] / medians["jffs2"]
        print(f"mipsel guest, preinit to init.d: chain {medians['chain']:.2f}s, jffs2 "
              f"{medians['jffs2']:.2f}s (medians of {BOOTS} boots each): "
              f"ratio {ratio:.2f} {verdict(ratio, BOOT_TARGET)}")
        with Router(root, chain, work / "console-mount.log") as router:
            bench_mount(settled(router))


if __name__ == "__main__":
    main()
