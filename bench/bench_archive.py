"""Archive benchmarks, measured side by side in one run (ratios, not absolute times):

1. `snapshot unpack` of a chain of 3 snapshots holding ~20 MiB in a few thousand files,
   against GNU `tar -xzf` of the same three archives in order, both into tmpfs (what boot
   unpacks into). Target: ratio <= 1.5.
2. Peak RSS of `snapshot push` and `snapshot unpack` of a 100 MiB tree. Target: < 40 MiB.

Both run the commands as a user would (subprocesses), on a simulated NAND image, with the
package compiled as installed (bench/installed.py).
Run: .venv/bin/python bench/bench_archive.py
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from installed import compile_package

MIB = 1 << 20
CLI = [sys.executable, "-m", "snapshot"]


def tree(root: Path, total: int, files: int, seed: int) -> Path:
    rng = random.Random(seed)
    words = [rng.randbytes(5).hex() for _ in range(300)]
    per_file = total // files
    for i in range(files):
        d = root / f"usr/lib/pkg{i % 60}/sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(per_file // 4, per_file * 7 // 4)
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = " ".join(rng.choice(words) for _ in range(size // 11)).encode()
        (d / f"f{i}").write_bytes(data)
    return root


def cli(image: Path, *args) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one snapshot command."""
    start = time.perf_counter()
    proc = subprocess.Popen([*CLI, "--device", str(image), *map(str, args)],
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"snapshot {' '.join(map(str, args))} failed")
    return elapsed, usage.ru_maxrss * 1024


def fresh_image(path: Path, size_mib: int) -> Path:
    for p in (path, Path(f"{path}.sim.json")):
        p.unlink(missing_ok=True)
    subprocess.run([*CLI, "flash", "create", str(path), "--type", "nand", "--size",
                    f"{size_mib}M", "--erase-size", "128K"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*CLI, "--device", str(path), "format"], check=True, stdout=subprocess.DEVNULL)
    return path


def bench_unpack(work: Path) -> None:
    image = fresh_image(work / "unpack.img", 64)
    archives = []
    for n in range(3):
        cli(image, "push", "--from", tree(work / f"t{n}", 7 * MIB, 1200, n), "-m", f"s{n}")
        archives.append(work / f"s{n + 1}.tar.gz")
        cli(image, "export", n + 1, "-o", archives[-1])
    ours, theirs = [], []

    def snapshot_unpack(target):
        ours.append(cli(image, "unpack", "--to", target)[0])

    def gnu_tar(target):
        target.mkdir()
        start = time.perf_counter()
        for tgz in archives:
            subprocess.run(["tar", "-xzf", str(tgz), "-C", str(target)], check=True)
        theirs.append(time.perf_counter() - start)

    # Into tmpfs, as at boot (the upper dirs are tmpfs); alternating who goes first.
    scratch = Path(tempfile.mkdtemp(prefix="snapshot-bench-", dir="/dev/shm"))
    try:
        for attempt in range(8):
            for run in (snapshot_unpack, gnu_tar) if attempt % 2 else (gnu_tar, snapshot_unpack):
                target = scratch / f"{run.__name__}{attempt}"
                run(target)
                shutil.rmtree(target)
    finally:
        shutil.rmtree(scratch)
    ratio = min(ours) / min(theirs)
    print(f"unpack 3 snapshots, ~20 MiB, 3600 files: snapshot {min(ours):.3f}s  "
          f"GNU tar -xzf {min(theirs):.3f}s  ratio {ratio:.2f} (target <= 1.5) "
          f"{'OK' if ratio <= 1.5 else 'MISSED'}")
    # What every command pays before it does anything: the interpreter, the imports, opening
    # the chain, and the interpreter's exit.
    start_up = min(cli(image, "list")[0] for _ in range(8))
    print(f"  of which start-up and exit (snapshot list): {start_up:.3f}s; "
          f"unpacking itself: {min(ours) - start_up:.3f}s, "
          f"ratio {(min(ours) - start_up) / min(theirs):.2f} to all of GNU tar")


def bench_memory(work: Path) -> None:
    image = fresh_image(work / "memory.img", 256)
    big = tree(work / "big", 100 * MIB, 2000, 9)
    _, push_rss = cli(image, "push", "--from", big)
    _, unpack_rss = cli(image, "unpack", "--to", work / "big-out")
    for name, rss in (("push", push_rss), ("unpack", unpack_rss)):
        print(f"peak RSS of {name} (100 MiB tree): {rss / MIB:.1f} MiB (target < 40) "
              f"{'OK' if rss < 40 * MIB else 'MISSED'}")


def main() -> None:
    compile_package()
    # Not /tmp: on a router that is RAM, and here it may be small; the working dirs are big.
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-", dir=os.getcwd()) as tmp:
        bench_unpack(Path(tmp))
        bench_memory(Path(tmp))


if __name__ == "__main__":
    main()
