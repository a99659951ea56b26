"""Squash benchmark, measured side by side in one run (ratios, not absolute times):

20 pushes that each rewrite the same 1 MiB of files (half text, half incompressible), on a
simulated NAND image, then `snapshot squash`. It prints:

1. the flash the chain uses before and after, and after against one snapshot of the final
   state pushed onto an empty chain. Target: after <= one snapshot + one block.
2. the time of `snapshot squash` against what a user would do with GNU tar: unpack the 20
   exported snapshots in order (`tar -xzf`, into tmpfs) and pack the result (`tar czf`).
   GNU tar writes no flash and keeps no whiteouts; squash reads and writes the flash.
3. the peak RSS of squash against that of `snapshot list` (start-up and imports): what the
   merge itself holds. Target: under 8 MiB more, while the records hold 20 MiB.

Commands run as a user would run them (subprocesses), with the package compiled as installed
(bench/installed.py).
Run: .venv/bin/python bench/bench_squash.py
"""
import json
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
PUSHES = 20
# A small process between this one and the command measured: a child's peak RSS starts at
# its parent's, and this process holds the trees.
MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], "
           "stdout=subprocess.DEVNULL); _, s, r = os.wait4(p.pid, 0); "
           "print(os.waitstatus_to_exitcode(s), r.ru_maxrss * 1024)")


def rewrite(root: Path, seed: int) -> Path:
    """The same 64 paths, 1 MiB in all, with new contents: 32 config-like text files and 32
    incompressible ones of 16 KiB each."""
    rng = random.Random(seed)
    words = [rng.randbytes(5).hex() for _ in range(300)]
    for i in range(64):
        path = root / f"usr/lib/pkg{i % 8}/file{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            path.write_bytes(rng.randbytes(16 * 1024))
        else:
            text = " ".join(rng.choice(words) for _ in range(3000)).encode()
            path.write_bytes(text[:16 * 1024])
    return root


def snapshot(image: Path, *args) -> str:
    return subprocess.run([*CLI, "--device", str(image), *map(str, args)], check=True,
                          capture_output=True, text=True).stdout


def measured(image: Path, *args) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one snapshot command."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *CLI, "--device", str(image),
                           *map(str, args)], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    status, peak = map(int, done.stdout.split())
    if status != 0:
        raise SystemExit(f"snapshot {' '.join(map(str, args))} failed")
    return elapsed, peak


def fresh_image(path: Path) -> Path:
    for p in (path, Path(f"{path}.sim.json")):
        p.unlink(missing_ok=True)
    subprocess.run([*CLI, "flash", "create", str(path), "--type", "nand", "--size", "64M",
                    "--erase-size", "128K"], check=True, stdout=subprocess.DEVNULL)
    snapshot(path, "format")
    return path


def copy(image: Path, to: Path) -> Path:
    shutil.copyfile(image, to)
    shutil.copyfile(f"{image}.sim.json", f"{to}.sim.json")
    return to


def used(image: Path) -> int:
    return json.loads(snapshot(image, "list", "--json"))["used_bytes"]


def main() -> None:
    compile_package()
    # Not /tmp: on a router that is RAM, and here it may be small.
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-", dir=os.getcwd()) as tmp:
        work = Path(tmp)
        image = fresh_image(work / "chain.img")
        tree = work / "tree"
        archives = []
        for n in range(1, PUSHES + 1):
            snapshot(image, "push", "--from", rewrite(tree, n), "-m", f"upgrade {n}")
            archives.append(work / f"s{n}.tar.gz")
            snapshot(image, "export", n, "-o", archives[-1])
        one = fresh_image(work / "one.img")
        snapshot(one, "push", "--from", tree)
        before, single = used(image), used(one)

        ours, theirs, peaks = [], [], []

        def squash(attempt):
            copied = copy(image, work / f"squash{attempt}.img")
            elapsed, peak = measured(copied, "squash")
            ours.append(elapsed)
            peaks.append(peak)
            return copied

        def gnu_tar(attempt):
            target = scratch / f"tar{attempt}"
            target.mkdir()
            start = time.perf_counter()
            for tgz in archives:
                subprocess.run(["tar", "-xzf", str(tgz), "-C", str(target)], check=True)
            subprocess.run(["tar", "czf", str(work / "result.tgz"), "-C", str(target), "."],
                           check=True)
            theirs.append(time.perf_counter() - start)
            shutil.rmtree(target)

        # GNU tar unpacks into tmpfs, as it would have to on a router; alternating who goes
        # first.
        scratch = Path(tempfile.mkdtemp(prefix="snapshot-bench-", dir="/dev/shm"))
        try:
            for attempt in range(5):
                if attempt % 2:
                    squashed = squash(attempt)
                    gnu_tar(attempt)
                else:
                    gnu_tar(attempt)
                    squashed = squash(attempt)
        finally:
            shutil.rmtree(scratch)
        after = used(squashed)
        es = 128 * 1024
        print(f"flash used by {PUSHES} snapshots of the same 1 MiB: {before / MIB:.2f} MiB "
              f"before squash, {after / MIB:.2f} MiB after ({before / after:.1f}x less); "
              f"one snapshot of the final state {single / MIB:.2f} MiB: ratio "
              f"{after / single:.2f} (target: at most one block more) "
              f"{'OK' if after <= single + es else 'MISSED'}")
        ratio = min(ours) / min(theirs)
        print(f"squash of {PUSHES} snapshots: snapshot {min(ours):.3f}s  GNU tar -xzf x "
              f"{PUSHES} + tar czf {min(theirs):.3f}s  ratio {ratio:.2f}")
        start_up, baseline = min(measured(squashed, "list") for _ in range(5))
        print(f"  of which start-up and exit (snapshot list): {start_up:.3f}s; squashing "
              f"itself: {min(ours) - start_up:.3f}s, ratio "
              f"{(min(ours) - start_up) / min(theirs):.2f} to all of GNU tar")
        grown = max(peaks) - baseline
        print(f"peak RSS of squash: {max(peaks) / MIB:.1f} MiB, {grown / MIB:.1f} MiB above "
              f"snapshot list's {baseline / MIB:.1f} MiB, for records of "
              f"{PUSHES} MiB (target < 8 MiB above) {'OK' if grown < 8 * MIB else 'MISSED'}")


if __name__ == "__main__":
    main()
