"""Bundle benchmark, measured side by side in one run on one CPU (bench/measure.py):

1. Bytes a unit fetches: a config-plus-fix bundle (ten UCI files and one fixed program, a
   copy of the host's `ip`) against a full sysupgrade image of the same firmware, which is
   what a unit fetches without bundles. The firmware stands in for an OpenWrt image: the
   kernel-tier guest kernel (or the host's) and an xz squashfs of the host's busybox, libc
   and the Python standard library snapshot runs on. Target: under 5% of the image.
2. The CPU time (user + system, children included) of `snapshot bundle apply FILE
   --no-reboot` on a simulated NAND image (a subprocess, started as a router starts it:
   measure.router_python) against its floor: copying the payload, `sha256sum` of it and
   `usign -V` of the manifest, which any apply does. CPU time, as the other benches: wall
   time on a shared machine counts whoever else ran on the CPU (it is printed beside). The unit's firmware root (option
   rom) is a mounted xz squashfs of a /rom-like tree of 3,000 entries, as on a router.
   Interleaved rounds, medians. Target: at most 2.0. Shown beside it, not
   targets: the first apply of a boot (the squashfs id read, not yet kept in /tmp), a
   format 1 bundle (made before squashfs ids: its tree id walks the 3,000 entries), and the
   least any apply written in Python costs (the interpreter's start with hashlib, and usign's
   verification, the floor's largest part): how much of the 2.0 is left for the rest.

Needs root (a loop mount), usign (scripts/setup-openwrt-tools.sh) and mksquashfs.
Run: .venv/bin/python bench/bench_bundle.py
"""
import glob
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from installed import compile_package  # noqa: E402
from measure import LAUNCHER, interleaved, one_cpu, router_python, run, verdict  # noqa: E402

ROUNDS = 7
ROM_ENTRIES = 3000
#: The command as a router starts it (main(): measure.router_python and the launcher).
CLI: list[str] = []


def firmware(work: Path) -> int:
    """Bytes of the stand-in sysupgrade image: a kernel and an xz squashfs root."""
    root = work / "firmware"
    for src, dest in ((shutil.which("busybox") or "/bin/busybox", "bin/busybox"),):
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / dest)
    for lib in glob.glob("/lib/x86_64-linux-gnu/libc.so*") + glob.glob("/lib64/ld-linux*"):
        (root / "lib").mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, root / "lib")
    shutil.copytree(sysconfig.get_paths()["stdlib"], root / "usr/lib/python3",
                    ignore=shutil.ignore_patterns("test", "tests", "__pycache__", "idlelib",
                                                  "tkinter", "ensurepip", "site-packages"))
    image = work / "root.sqfs"
    subprocess.run(["mksquashfs", root, image, "-comp", "xz", "-noappend", "-quiet",
                    "-no-progress", "-all-root"], check=True)
    kernels = sorted(glob.glob("/var/cache/snapshot-kernel-vm/*vmlinuz*")) + \
        sorted(glob.glob("/boot/vmlinuz*"))
    kernel = os.path.getsize(kernels[0]) if kernels else 0
    return image.stat().st_size + kernel


def rom_tree(root: Path, entries: int) -> None:
    """A /rom-like tree: `entries` directories, files (configs, scripts, libraries) and
    busybox-style symlinks, about 8 MiB of half-compressible data."""
    rng = random.Random(25)
    dirs = [root]
    made = 1
    while made < entries:
        roll = rng.random()
        parent = rng.choice(dirs)
        if roll < 0.1:
            dirs.append(parent / f"d{made}")
            dirs[-1].mkdir()
        elif roll < 0.25:
            (parent / f"l{made}").symlink_to("/bin/busybox")
        else:
            size = rng.choice((200, 800, 3000, 12000)) if rng.random() < 0.97 else 400000
            (parent / f"f{made}").write_bytes(rng.randbytes(size // 2) + bytes(size - size // 2))
        made += 1


def main() -> None:
    one_cpu()
    if os.geteuid() != 0:
        raise SystemExit("bench_bundle needs root: the unit's /rom is a mounted squashfs")
    from bundle_lab import BOARD, Lab
    from mtd import FlashType, Geometry, SimFlash
    from openwrt_tools import tool
    compile_package()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        work = Path(tmp)
        python, router = router_python(work)
        CLI[:] = [*python, str(LAUNCHER)]
        lab = Lab.make(work / "lab")
        env = {**router, **lab.env}
        image_bytes = firmware(work)
        nand = Geometry(FlashType.NAND, 8 << 20, 128 << 10, 2048, 64)
        ref = work / "ref.img"
        SimFlash.create(ref, nand)
        subprocess.run([*CLI, "--device", ref, "format"], check=True, env=env,
                       capture_output=True)
        fix = work / "fix"
        (fix / "etc/config").mkdir(parents=True)
        for i in range(10):
            (fix / f"etc/config/app{i}").write_text(
                "".join(f"config rule 'r{j}'\n\toption name 'rule {j}'\n\toption target "
                        f"'ACCEPT'\n\n" for j in range(20)))
        (fix / "usr/sbin").mkdir(parents=True)
        shutil.copy(shutil.which("ip") or "/usr/sbin/ip", fix / "usr/sbin/ip")
        subprocess.run([*CLI, "--device", ref, "push", "--from", fix, "-m", "config and fix"],
                       check=True, env=env, capture_output=True)

        tree, rom, sqfs = work / "rom-tree", work / "rom", work / "rom.sqfs"
        tree.mkdir()
        rom.mkdir()
        rom_tree(tree, ROM_ENTRIES)
        subprocess.run(["mksquashfs", tree, sqfs, "-comp", "xz", "-noappend", "-quiet",
                        "-no-progress", "-all-root"], check=True)
        subprocess.run(["mount", "-o", "loop,ro", sqfs, rom], check=True)
        try:
            lab.config.write_text(lab.config.read_text().replace(f"'{lab.rom}'", f"'{rom}'"))
            bundle, old = work / "fix.snb", work / "fix-format1.snb"
            for out, where in ((bundle, rom), (old, tree)):
                subprocess.run([*CLI, "--device", ref, "bundle", "create", "1", "-o", out,
                                "--key", lab.secret, "--board", BOARD, "--rom", where],
                               check=True, env=env)
            bundle_bytes = bundle.stat().st_size
            print(f"bytes fetched per unit: bundle {bundle_bytes} B, sysupgrade image "
                  f"{image_bytes} B: ratio {bundle_bytes / image_bytes:.4f} "
                  f"({'meets' if bundle_bytes < 0.05 * image_bytes else 'misses'} the 5% "
                  f"target)")
            measured = side_by_side(work, lab, env, nand, bundle, old, tool("usign"))
        finally:
            subprocess.run(["umount", rom], check=True)
    apply, floor = measured["apply"], measured["floor"]
    ratio = apply.cpu / floor.cpu
    print(f"apply: snapshot bundle apply {apply.cpu * 1000:.0f} ms CPU ({apply.wall * 1000:.0f} "
          f"ms wall), floor (copy + sha256sum + usign -V) {floor.cpu * 1000:.0f} ms CPU "
          f"({floor.wall * 1000:.0f} ms wall), /rom of {ROM_ENTRIES} entries (median of "
          f"{ROUNDS}): ratio {ratio:.2f} {verdict(ratio, 2.0)}; wall ratio "
          f"{apply.wall / floor.wall:.2f}")
    least = measured["least"].cpu
    print(f"  not a target: the least any apply in Python costs here (python3 -c 'import "
          f"hashlib', then usign -V) {least * 1000:.0f} ms CPU: ratio {least / floor.cpu:.2f}, "
          f"which leaves {max(0.0, 2.0 * floor.cpu - least) * 1000:.0f} ms for the rest of an "
          f"apply within 2.0")
    for name, what in (("first", "the first apply of a boot (squashfs id read)"),
                       ("format1", "a format 1 bundle (tree id: /rom walked)")):
        print(f"  not a target: {what} {measured[name].cpu * 1000:.0f} ms CPU: ratio "
              f"{measured[name].cpu / floor.cpu:.2f}")


def side_by_side(work: Path, lab, env: dict, geometry, bundle: Path, old: Path,
                 usign: Path) -> dict:
    from mtd import SimFlash
    from snapshot import operations
    from snapshot.fleet import bundle as bundles, firmware
    blank = work / "blank.img"
    SimFlash.create(blank, geometry)
    with SimFlash(blank, writable=True) as flash:
        operations.format_device(flash)
    with open(bundle, "rb") as f:
        head = bundles.read_head(f, str(bundle))
    manifest, payload = work / "manifest", work / "payload"
    manifest.write_bytes(head.manifest_bytes)
    (work / "manifest.sig").write_bytes(head.signature)
    payload.write_bytes(bundle.read_bytes()[head.payload_offset:])

    def applied(source: Path, first: bool = False):
        unit = work / "unit.img"
        for suffix in ("", ".sim.json"):
            shutil.copyfile(f"{blank}{suffix}", f"{unit}{suffix}")
        if first:
            Path(firmware.CACHE).unlink(missing_ok=True)
        return run([*CLI, "--device", unit, "bundle", "apply", source, "--no-reboot"],
                   env=env)

    def least():
        """What no apply in Python can do without: the interpreter's start, hashlib's import
        (the payload's sha256) and usign's verification, the one the floor runs."""
        started = run([*CLI[:-1], "-c", "import hashlib"], env=env)
        verified = run([usign, "-V", "-q", "-m", manifest, "-P", lab.keys_dir])
        return type(started)(started.cpu + verified.cpu, started.wall + verified.wall,
                             max(started.rss, verified.rss))

    def floor():
        copy = run(["cp", payload, work / "payload.copy"])
        digest = run(["sha256sum", payload])
        verified = run([usign, "-V", "-q", "-m", manifest, "-P", lab.keys_dir])
        return type(copy)(copy.cpu + digest.cpu + verified.cpu,
                          copy.wall + digest.wall + verified.wall,
                          max(copy.rss, digest.rss, verified.rss))

    return interleaved(ROUNDS, {"apply": lambda: applied(bundle), "floor": floor,
                                "first": lambda: applied(bundle, first=True),
                                "format1": lambda: applied(old), "least": least})

if __name__ == "__main__":
    main()
