"""Boot time of `snapshot mount` for chains of 1, 10 and 50 snapshots holding ~20 MiB in all,
against GNU tar extracting the same archives in order into tmpfs, measured side by side in
one run, to show how the cost grows with chain length. Needs root (mounts, in `unshare -m`).

The package is compiled as installed (bench/installed.py).
Run: .venv/bin/python bench/bench_boot.py
"""
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtd import FlashType, Geometry, SimFlash  # noqa: E402
from snapshot import operations  # noqa: E402
from snapshot.store.chain import Chain  # noqa: E402
from installed import compile_package  # noqa: E402

MIB = 1 << 20
TOTAL = 20 * MIB

# In a private mount namespace: mount the squashfs, time `snapshot mount`, and time GNU tar
# unpacking the exported archives into a tmpfs.
MEASURE = r"""
import subprocess, sys, time
from pathlib import Path
sqfs, image, work, archives = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
for d in ("sq", "t", "tar"): (work / d).mkdir(parents=True)
subprocess.run(["mount", "-o", "loop,ro", sqfs, str(work / "sq")], check=True)
start = time.perf_counter()
subprocess.run([sys.executable, "-m", "snapshot", "--device", image, "mount",
                "--root", str(work / "sq"), "--target", str(work / "t")], check=True,
               capture_output=True)
ours = time.perf_counter() - start
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(work / "tar")], check=True)
start = time.perf_counter()
for archive in archives:
    subprocess.run(["tar", "-xzf", archive, "-C", str(work / "tar")], check=True)
print(ours, time.perf_counter() - start)
"""


def chain_of(n: int, work: Path) -> tuple[Path, list[Path]]:
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
    return image, archives


def main() -> None:
    compile_package()
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-", dir=os.getcwd()) as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs"
        for name in ("etc", "rom", "overlay", "tmp"):
            (rootfs / name).mkdir(parents=True)
        (rootfs / "etc/banner").write_text("OpenWrt\n")
        sqfs = work / "root.sqfs"
        subprocess.run(["mksquashfs", str(rootfs), str(sqfs), "-quiet", "-noappend"],
                       check=True, capture_output=True)
        print(f"{'snapshots':>9}  {'snapshot mount':>14}  {'GNU tar -xzf':>12}  ratio")
        for n in (1, 10, 50):
            image, archives = chain_of(n, work)
            runs = []
            for attempt in range(3):
                out = subprocess.run(
                    ["unshare", "-m", "--propagation", "private", sys.executable, "-c", MEASURE,
                     str(sqfs), str(image), str(work / f"m{n}-{attempt}"),
                     *map(str, archives)],
                    capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
                runs.append(tuple(map(float, out.stdout.split())))
            ours, tar = min(r[0] for r in runs), min(r[1] for r in runs)
            print(f"{n:>9}  {ours:>13.2f}s  {tar:>11.2f}s  {ours / tar:.2f}")


if __name__ == "__main__":
    main()
