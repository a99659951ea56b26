"""Chain benchmarks, each measured side by side in one run (ratios, not absolute times):

1. push of a ~20 MiB mixed tree, against `tar czf` of the same tree plus a raw copy of those
   bytes onto the same kind of simulated image. Target: ratio <= 1.3.
2. erases per save, against the old fstools tool's cost for the same record (it wrote the
   volatile twice, plus one extra erase: 2 * blocks + 1). Target: at most half.
3. bytes read by `list` on a 50-record chain. Target: headers only (anchor entry plus each
   record's header and commit marker pages), not payloads.
4. bytes read by a save of one small file and by a confirm, after a boot's check, on chains
   of 1 and 20 snapshots of 1 MiB, against the payload bytes a write reading every snapshot would read. Target:
   headers only, at most a tenth of those.
5. erases per counted boot of a trial (`snapshot mount`'s count), over 200 boots, on NOR and
   NAND. Target: well under one (the count is an anchor append, FORMAT.md §3).

Run: .venv/bin/python bench/bench_chain.py
"""
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtd import FlashType, Geometry, SimFlash  # noqa: E402
from snapshot import operations, overview  # noqa: E402
from snapshot.store.chain import Chain  # noqa: E402

MIB = 1 << 20
NAND = Geometry(FlashType.NAND, 64 * MIB, 128 * 1024, 2048, 64)


def mixed_tree(root: Path, total: int = 20 * MIB) -> Path:
    """Config-like text, binaries (incompressible), and many small files, like an overlay
    after a few package installs."""
    rng = random.Random(42)
    words = [rng.randbytes(6).hex() for _ in range(500)]
    size = 0
    n = 0
    while size < total:
        kind = n % 3
        d = root / f"usr/lib/pkg{n % 40}"
        d.mkdir(parents=True, exist_ok=True)
        if kind == 0:
            data = rng.randbytes(rng.randint(20_000, 400_000))
            (d / f"lib{n}.so").write_bytes(data)
        elif kind == 1:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(200, 20_000)))
            data = text.encode()
            (d / f"script{n}.lua").write_bytes(data)
        else:
            data = f"config option{n} '{rng.choice(words)}'\n".encode() * rng.randint(1, 30)
            (root / "etc/config").mkdir(parents=True, exist_ok=True)
            (root / f"etc/config/conf{n}").write_bytes(data)
        size += len(data)
        n += 1
    return root


def fresh_image(path: Path) -> Path:
    if path.exists():
        path.unlink()
    SimFlash.create(path, NAND)
    with SimFlash(path, writable=True) as flash:
        operations.format_device(flash)
    return path


def best_of(n, fn):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_push(work: Path, tree: Path) -> None:
    image = work / "push.img"
    tgz = work / "tree.tgz"

    def push():
        fresh_image(image)
        with SimFlash(image, writable=True) as flash:
            operations.push(Chain(flash), tree, "bench")

    def tar_and_copy():
        fresh_image(image)
        subprocess.run(["tar", "czf", str(tgz), "-C", str(tree), "."], check=True)
        data = tgz.read_bytes()
        with SimFlash(image, writable=True) as flash:
            es = flash.geometry.erasesize
            padded = data + b"\xff" * (-len(data) % es)
            for block, start in enumerate(range(0, len(padded), es), start=4):
                flash.erase(block * es, es)
                flash.write(block * es, padded[start:start + es])

    ours = best_of(3, push)
    theirs = best_of(3, tar_and_copy)
    ratio = ours / theirs
    print(f"push 20 MiB tree:        snapshot {ours:.2f}s  tar czf + raw copy {theirs:.2f}s  "
          f"ratio {ratio:.2f} (target <= 1.3) {'OK' if ratio <= 1.3 else 'MISSED'}")


def bench_save_erases(work: Path) -> None:
    image = fresh_image(work / "save.img")
    src = work / "volatile"
    (src / "etc/config").mkdir(parents=True)
    rng = random.Random(7)
    ours = theirs = 0
    within_bound = True
    for i in range(100):
        (src / "etc/config/state").write_bytes(rng.randbytes(rng.randint(1000, 300_000)))
        with SimFlash(image, writable=True) as flash:
            before = flash.stats().erases
            chain = Chain(flash)
            operations.save(chain, src)
            erases = flash.stats().erases - before
            blocks = len(chain.volatile.blocks)
        ours += erases
        theirs += 2 * blocks + 1
        within_bound &= erases <= blocks + 1
    ratio = ours / theirs
    print(f"erases per save (100 saves, 1 KB..300 KB): {ours} against the old tool's {theirs} "
          f"(2*blocks+1 each): ratio {ratio:.2f} (target <= 0.5) "
          f"{'OK' if ratio <= 0.5 else 'MISSED'}; every save <= blocks+1: "
          f"{'OK' if within_bound else 'MISSED'}")


def bench_list_reads(work: Path) -> None:
    image = fresh_image(work / "list.img")
    src = work / "small"
    src.mkdir()
    rng = random.Random(3)
    for i in range(50):
        (src / "file").write_bytes(rng.randbytes(50_000))
        with SimFlash(image, writable=True) as flash:
            operations.push(Chain(flash), src, f"snapshot {i}")
    with SimFlash(image) as flash:
        before = flash.stats().bytes_read
        info = overview.listing(Chain(flash))
        read = flash.stats().bytes_read - before
        payload = sum(s["size"] for s in info["snapshots"])
    print(f"list of 50 records:      read {read} bytes ({read / 50:.0f} per record) of "
          f"{payload} payload bytes; headers only: {'OK' if read < payload / 10 else 'MISSED'}")


def bench_write_reads(work: Path) -> None:
    src, small = work / "mib", work / "one-file"
    src.mkdir()
    (small / "etc").mkdir(parents=True)
    (small / "etc/state").write_text("one small file\n")
    rng = random.Random(5)
    for count in (1, 20):
        image = fresh_image(work / f"reads{count}.img")
        for i in range(count):
            (src / "blob").write_bytes(rng.randbytes(MIB))
            with SimFlash(image, writable=True) as flash:
                operations.push(Chain(flash), src, f"snapshot {i}",
                                trial=3 if i == count - 1 else None)
        with SimFlash(image, writable=True) as flash:
            # What a boot does first: its repair reads every payload, and notes what it
            # verified for the writes that follow (DESIGN.md §4).
            operations.check(Chain(flash))
            chain = Chain(flash)
            payload = sum(r.entry.payload_length for r in chain.snapshots)
            before = flash.stats().bytes_read
            operations.save(chain, small)
            saved = flash.stats().bytes_read - before
            before = flash.stats().bytes_read
            operations.confirm(Chain(flash))
            confirmed = flash.stats().bytes_read - before
        ok = saved < payload / 10 and confirmed < payload / 10
        print(f"bytes read, chain of {count:>2} x 1 MiB: save {saved} ({saved / payload:.4f} "
              f"of the {payload} payload bytes), confirm {confirmed} "
              f"({confirmed / payload:.4f}); headers only: {'OK' if ok else 'MISSED'}")


def bench_boot_count_erases() -> None:
    from snapshot import boot
    geometries = {"nor": Geometry(FlashType.NOR, 4 * MIB, 64 * 1024, 1, 0), "nand": NAND}
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as tmp:
        for name, geometry in geometries.items():
            image = Path(tmp) / f"{name}.img"
            SimFlash.create(image, geometry)
            source = Path(tmp) / "s"
            source.mkdir(exist_ok=True)
            (source / "f").write_text("x")
            with SimFlash(image, writable=True) as flash:
                operations.format_device(flash)
                operations.push(Chain(flash), source, "base")
            boots = erases = 0
            while boots < 200:
                with SimFlash(image, writable=True) as flash:
                    operations.push(Chain(flash), source, "on trial", trial=15)
                for _ in range(15):
                    with SimFlash(image, writable=True) as flash:
                        before = flash.stats().erases
                        boot.prepare(flash, lambda line, loud=False: None,
                                     boot.BootReport())
                        erases += flash.stats().erases - before
                        boots += 1
                with SimFlash(image, writable=True) as flash:
                    operations.rollback(Chain(flash), None)
            per_boot = erases / boots
            print(f"erases per counted boot ({name}, {boots} boots): {per_boot:.3f} "
                  f"({boots / max(erases, 1):.0f} boots per erase); target well under 1: "
                  f"{'OK' if per_boot < 0.1 else 'MISSED'}")


def main():
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as tmp:
        work = Path(tmp)
        tree = mixed_tree(work / "tree")
        bench_push(work, tree)
        bench_save_erases(work)
        bench_list_reads(work)
        bench_write_reads(work)
    bench_boot_count_erases()


if __name__ == "__main__":
    main()
