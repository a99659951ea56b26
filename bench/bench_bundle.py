"""Bundle benchmark, measured side by side in one run (ratios, not absolute times):

1. Bytes a unit fetches: a config-plus-fix bundle (ten UCI files and one fixed program, a
   copy of the host's `ip`) against a full sysupgrade image of the same firmware, which is
   what a unit fetches without bundles. The firmware stands in for an OpenWrt image: the
   kernel-tier guest kernel (or the host's) and an xz squashfs of the host's busybox, libc
   and the Python standard library snapshot runs on. Target: under 5% of the image.
2. The time of `snapshot bundle apply FILE --no-reboot` on a simulated NAND image (the
   signature check with usign, the base check, the flash writes, the commit; a subprocess,
   as a user runs it) against GNU `tar -xzf` of the same payload into tmpfs (no signature,
   no flash). The median of 5 runs of each, interleaved.

Needs usign (scripts/setup-openwrt-tools.sh) and mksquashfs.
Run: .venv/bin/python bench/bench_bundle.py
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from installed import compile_package  # noqa: E402

RUNS = 5
CLI = [sys.executable, "-m", "snapshot"]


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
                    "-all-root"], check=True)
    kernels = sorted(glob.glob("/var/cache/snapshot-kernel-vm/*vmlinuz*")) + \
        sorted(glob.glob("/boot/vmlinuz*"))
    kernel = os.path.getsize(kernels[0]) if kernels else 0
    return image.stat().st_size + kernel


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    from bundle_lab import BOARD, Lab
    from mtd import FlashType, Geometry, SimFlash
    compile_package()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        work = Path(tmp)
        lab = Lab.make(work / "lab")
        env = {**os.environ, **lab.env}
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
        bundle = work / "fix.snb"
        subprocess.run([*CLI, "--device", ref, "bundle", "create", "1", "-o", bundle, "--key",
                        lab.secret, "--board", BOARD], check=True, env=env)
        bundle_bytes = bundle.stat().st_size
        payload = work / "payload.tgz"
        subprocess.run([*CLI, "--device", ref, "export", "1", "-o", payload], check=True, env=env,
                       capture_output=True)

        apply_times, tar_times = [], []
        for run in range(RUNS):
            unit = work / f"unit{run}.img"
            SimFlash.create(unit, nand)
            subprocess.run([*CLI, "--device", unit, "format"], check=True, env=env,
                           capture_output=True)
            start = time.perf_counter()
            subprocess.run([*CLI, "--device", unit, "bundle", "apply", bundle, "--no-reboot"],
                           check=True, env=env, capture_output=True)
            apply_times.append(time.perf_counter() - start)
            dest = Path(tempfile.mkdtemp(dir="/dev/shm"))
            start = time.perf_counter()
            subprocess.run(["tar", "-xzf", payload, "-C", dest], check=True)
            tar_times.append(time.perf_counter() - start)
            shutil.rmtree(dest)

        print(f"bytes fetched per unit: bundle {bundle_bytes} B, sysupgrade image "
              f"{image_bytes} B: ratio {bundle_bytes / image_bytes:.4f} "
              f"({'meets' if bundle_bytes < 0.05 * image_bytes else 'misses'} the 5% target)")
        a, t = median(apply_times), median(tar_times)
        print(f"apply: snapshot bundle apply {a * 1000:.0f} ms, tar -xzf {t * 1000:.0f} ms "
              f"(median of {RUNS}): ratio {a / t:.1f}")


if __name__ == "__main__":
    main()
