"""Archive benchmarks, measured side by side in one run (ratios, not absolute times), on one
CPU (bench/measure.py), as on a router:

1. `snapshot unpack` of a chain of 3 snapshots holding ~20 MiB in a few thousand files,
   against GNU `tar -xzf` of the same three archives in order, both into tmpfs (what boot
   unpacks into): the ratio of CPU times (user + system, children included, so tar's gzip
   counts), medians of interleaved rounds. Target: ratio <= 1.2.
2. Peak RSS of `snapshot push` and `snapshot unpack` of a 100 MiB tree. Target: < 40 MiB.

Both run the commands as a user would (subprocesses), on a simulated NAND image, with the
package compiled as installed (bench/installed.py).
Run: .venv/bin/python bench/bench_archive.py
"""
import os
import random
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from installed import compile_package
from measure import LAUNCHER, interleaved, one_cpu, router_python, run, verdict

MIB = 1 << 20
#: The command as a router starts it (main(): measure.router_python and the launcher).
CLI: list[str] = []
ROUNDS = 9


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


def cli(image: Path, *args, rss: bool = False):
    """One snapshot command's Run (it must succeed); with `rss`, its peak RSS too."""
    return run([*CLI, "--device", str(image), *map(str, args)], rss=rss)


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
    # Into tmpfs, as at boot (the upper dirs are tmpfs).
    scratch = Path(tempfile.mkdtemp(prefix="snapshot-bench-", dir="/dev/shm"))
    target = scratch / "target"

    def unpacked(measure):
        def once():
            try:
                return measure()
            finally:
                shutil.rmtree(target, ignore_errors=True)
        return once

    gnu_tar = "mkdir " + shlex.quote(str(target)) + "".join(
        f" && tar -xzf {shlex.quote(str(a))} -C {shlex.quote(str(target))}" for a in archives)
    try:
        medians = interleaved(ROUNDS, {
            "snapshot": unpacked(lambda: cli(image, "unpack", "--to", target)),
            "tar": unpacked(lambda: run(["sh", "-c", gnu_tar])),
            # What every command pays before it does anything: the interpreter, the imports,
            # opening the chain, and the interpreter's exit.
            "start-up": lambda: cli(image, "list"),
        })
    finally:
        shutil.rmtree(scratch)
    ours, theirs, start_up = medians["snapshot"], medians["tar"], medians["start-up"]
    ratio = ours.cpu / theirs.cpu
    print(f"unpack 3 snapshots, ~20 MiB, 3600 files, CPU: snapshot {ours.cpu:.3f}s  "
          f"GNU tar -xzf {theirs.cpu:.3f}s  ratio {ratio:.2f} {verdict(ratio, 1.2)}")
    print(f"  wall: snapshot {ours.wall:.3f}s  GNU tar -xzf {theirs.wall:.3f}s  "
          f"ratio {ours.wall / theirs.wall:.2f}")
    print(f"  of which start-up and exit (snapshot list): {start_up.cpu:.3f}s CPU; "
          f"unpacking itself: {ours.cpu - start_up.cpu:.3f}s, "
          f"ratio {(ours.cpu - start_up.cpu) / theirs.cpu:.2f} to all of GNU tar")


def bench_memory(work: Path) -> None:
    image = fresh_image(work / "memory.img", 256)
    big = tree(work / "big", 100 * MIB, 2000, 9)
    push = cli(image, "push", "--from", big, rss=True)
    unpack = cli(image, "unpack", "--to", work / "big-out", rss=True)
    for name, measured in (("push", push), ("unpack", unpack)):
        rss = measured.rss / MIB
        print(f"peak RSS of {name} (100 MiB tree): {rss:.1f} MiB {verdict(rss, 40)}")


def main() -> None:
    one_cpu()
    compile_package()
    # Not /tmp: on a router that is RAM, and here it may be small; the working dirs are big.
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-", dir=os.getcwd()) as tmp:
        python, env = router_python(Path(tmp))
        os.environ.update(env)   # every command below starts as a router's does
        CLI[:] = [*python, str(LAUNCHER)]
        bench_unpack(Path(tmp))
        bench_memory(Path(tmp))


if __name__ == "__main__":
    main()
