"""Boot, on one CPU (bench/measure.py):
- the time of `snapshot mount` for chains of 1, 10 and 50 snapshots holding ~20 MiB of tree
  in all, against GNU tar extracting the same archives (`snapshot export`), one tar after
  the other, into a tmpfs: medians of interleaved rounds, CPU time (user + system, the mount
  calls' and tar's gzip included), wall time beside it;
- the flash bytes a mount reads, against the chain's payload bytes (the simulator's read
  counters): each payload is read once (DESIGN.md §8);
- the snapshot processes the preinit hook starts per boot, on an MTD partition and on a UBI
  volume (initscripts/lib/preinit/81_snapshot under busybox ash, `snapshot` a stand-in that
  counts its starts).
Needs root (mounts, in `unshare -m`). The package is compiled as installed (bench/installed.py).

Run: .venv/bin/python bench/bench_boot.py
"""
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import LAUNCHER, one_cpu, router_python, verdict  # noqa: E402
from mtd import FlashType, Geometry, SimFlash  # noqa: E402
from snapshot import operations  # noqa: E402
from snapshot.store.chain import Chain  # noqa: E402
from installed import compile_package  # noqa: E402

MIB = 1 << 20
TOTAL = 20 * MIB
ROUNDS = 5
REPO = Path(__file__).resolve().parent.parent

# In a private mount namespace: mount the squashfs, then per round `snapshot mount` (each
# into a fresh target) and the tars (into a fresh tmpfs), interleaved; the mounts are undone
# between rounds, outside what is measured. Prints the medians and the flash bytes the last
# mount read, as JSON.
MEASURE = r"""
import json, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from measure import interleaved, run
from mtd import SimFlash
snapshot, sqfs, image, work, rounds, archives = json.loads(sys.argv[2]), sys.argv[3], \
    sys.argv[4], Path(sys.argv[5]), int(sys.argv[6]), sys.argv[7:]
(work / "sq").mkdir(parents=True)
subprocess.run(["mount", "-o", "loop,ro", sqfs, str(work / "sq")], check=True)
done = {"mount": 0, "tar": 0}
read = []

def mount():
    done["mount"] += 1
    target = work / f"t{done['mount']}"
    with SimFlash(image) as flash:
        before = flash.stats().bytes_read
    cost = run([*snapshot, "--device", image, "mount", "--root", str(work / "sq"),
                "--target", str(target)])
    with SimFlash(image) as flash:
        read.append(flash.stats().bytes_read - before)
    subprocess.run(["umount", "-R", "-l", str(target)], check=True)
    subprocess.run(["umount", "-l", str(work / f".{target.name}.snapshot/base")], check=True)
    return cost

def tar():
    done["tar"] += 1
    dest = work / f"x{done['tar']}"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(dest)], check=True)
    costs = [run(["tar", "-xzf", archive, "-C", str(dest)]) for archive in archives]
    subprocess.run(["umount", str(dest)], check=True)
    return type(costs[0])(sum(c.cpu for c in costs), sum(c.wall for c in costs),
                          max(c.rss for c in costs))

medians = interleaved(rounds, {"mount": mount, "tar": tar})
print(json.dumps({name: [m.cpu, m.wall] for name, m in medians.items()} | {"read": read[-1]}))
"""


def chain_of(n: int, work: Path) -> tuple[Path, list[Path], int]:
    """A chain of n snapshots and their archives; and its payload bytes."""
    image = work / f"chain{n}.img"
    SimFlash.create(image, Geometry(FlashType.NAND, 64 * MIB, 128 * 1024, 2048, 64))
    rng = random.Random(n)
    archives = []
    with SimFlash(image, writable=True) as flash:
        operations.format_device(flash)
        for i in range(n):
            src = work / f"c{n}-s{i}"
            for j in range(max(1, 1000 // n)):
                d = src / f"usr/lib/p{i}/{j % 10}"
                d.mkdir(parents=True, exist_ok=True)
                size = TOTAL // n // max(1, 1000 // n)
                data = rng.randbytes(size // 2) + bytes(size - size // 2)
                (d / f"f{j}").write_bytes(data)
            operations.push(Chain(flash), src, f"snapshot {i + 1}")
            archives.append(work / f"c{n}-s{i}.tgz")
            operations.export(Chain(flash), i + 1, archives[-1])
        payload = sum(r.entry.payload_length for r in Chain(flash).records)
    return image, archives, payload


def bench_mount(work: Path) -> None:
    python, env = router_python(work)
    snapshot = [*python, str(LAUNCHER)]   # as preinit starts it on a router
    rootfs = work / "rootfs"
    for name in ("etc", "rom", "overlay", "tmp"):
        (rootfs / name).mkdir(parents=True)
    (rootfs / "etc/banner").write_text("OpenWrt\n")
    sqfs = work / "root.sqfs"
    subprocess.run(["mksquashfs", str(rootfs), str(sqfs), "-quiet", "-noappend"],
                   check=True, capture_output=True)
    for n in (1, 10, 50):
        image, archives, payload = chain_of(n, work)
        out = subprocess.run(
            ["unshare", "-m", "--propagation", "private", sys.executable, "-c", MEASURE,
             str(Path(__file__).resolve().parent), json.dumps(snapshot), str(sqfs), str(image),
             str(work / f"m{n}"), str(ROUNDS), *map(str, archives)],
            capture_output=True, text=True, check=True, cwd=REPO, env=env)
        result = json.loads(out.stdout.splitlines()[-1])
        (ours, ours_wall), (tar, tar_wall) = result["mount"], result["tar"]
        ratio = ours / tar
        print(f"{n:>2} snapshots: snapshot mount {ours:.3f}s CPU ({ours_wall:.3f}s wall), "
              f"GNU tar {tar:.3f}s CPU ({tar_wall:.3f}s wall): "
              f"ratio {ratio:.2f} {verdict(ratio, 1.15)}")
        read = result["read"] / payload
        print(f"{n:>2} snapshots: flash bytes read by the mount {result['read']} / payload "
              f"bytes {payload}: ratio {read:.4f} {verdict(read, 1.02)}")


# The preinit hook's do_mount_root, with the stock functions it calls stubbed.
PREINIT = """
mount_root() { :; }
boot_run_hook() { :; }
. "$HOOK"
do_mount_root
"""


def bench_preinit_processes(work: Path) -> None:
    fake = work / "bin/snapshot"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "$*" >> "$STARTS"\nexit "$STATUS"\n')
    fake.chmod(0o755)
    routers = {"MTD partition": '"rootfs_data"', "UBI volume": '"ubi"'}
    for name, partition in routers.items():
        proc_mtd = work / "mtd"
        proc_mtd.write_text(f'dev:    size   erasesize  name\nmtd3: 00800000 00010000 '
                            f'{partition}\n')
        hook = work / "81_snapshot"
        hook.write_text((REPO / "initscripts/lib/preinit/81_snapshot").read_text()
                        .replace("/proc/mtd", str(proc_mtd)))
        most = 0
        for status in (0, 1, 6):   # booted, failed, no chain
            starts = work / "starts"
            starts.write_text("")
            subprocess.run(["busybox", "ash", "-c", PREINIT], check=True, capture_output=True,
                           env={"PATH": f"{fake.parent}:/usr/bin:/bin", "HOOK": str(hook),
                                "STARTS": str(starts), "STATUS": str(status)})
            most = max(most, len(starts.read_text().splitlines()))
        print(f"preinit on a {name}: snapshot processes started per boot {most} "
              f"{verdict(most, 1)}")


def main() -> None:
    one_cpu()
    compile_package()
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-", dir=os.getcwd()) as tmp:
        bench_preinit_processes(Path(tmp) / "preinit")
        bench_mount(Path(tmp))


if __name__ == "__main__":
    main()
