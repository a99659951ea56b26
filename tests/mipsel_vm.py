"""A mipsel guest: Debian's malta kernel under qemu-system-mipsel, with Debian's mipsel Python
and the project's cffi bindings cross-built for it.

MIPS is 32-bit here and encodes ioctl numbers differently from x86 (direction bits at the top,
a 13-bit size field), and malta is the CPU family of MT7621 and many other routers. The
assets come from scripts/setup-mipsel.sh. The guest is tests/kernel_vm.py's, with another
machine: the same initramfs init loads the drivers, names the MTD devices in MTD_NANDSIM,
MTD_MTDRAM and MTD_BLOCK2MTD, and chroots into a root shared over 9p, here the mipsel root of
the cache instead of the host's. What a run needs beside that root (the project with its
mipsel bindings, and the pure-Python packages it and its tests import) is staged into the
results directory, which the guest sees at the same path (stage()).

A mipsel OpenWrt root takes its parts from here: the kernel and its modules
(cache_entry()/kernel), Python with glibc and _cffi_backend (cache_entry()/root), and the
bindings (cross_build_abi()). Run as a script, this module cross-builds the bindings of the
checkout it is given and prints their directory: `python tests/mipsel_vm.py CHECKOUT`.
"""

from __future__ import annotations

import ast
import compileall
import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kernel_vm import MODULES, KernelTierUnavailable, KernelVM

CACHE_ENV = "SNAPSHOT_MIPSEL_CACHE"
DEFAULT_CACHE = "/var/cache/snapshot-mipsel"
SETUP_HINT = "run scripts/setup-mipsel.sh as root"
QEMU = "qemu-system-mipsel"
CROSS_CC = "mipsel-linux-gnu-gcc"
#: The guest's interpreter, in its root.
PYTHON = "/usr/bin/python3.11"
#: Where the guest's site module looks for packages (Debian's python3 reads only this one).
DIST_PACKAGES = "usr/lib/python3/dist-packages"

#: The drivers the Flash contract needs, with the kernel tier's parameters, so the devices
#: have the geometry tests/test_flash_contract.py asserts. MTD and mtdblock are built into
#: the malta kernel.
MIPSEL_MODULES = tuple(
    (name, dict(MODULES).get(name, ""))
    for name in ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay",
                 "nandsim", "mtdram", "block2mtd", "ubi")
)

#: The pure-Python packages the project and its tests import, taken from the interpreter
#: running this module (the project's venv), so the guest runs the versions the host tests.
PURE_PACKAGES = ("click", "pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py",
                 "pygments")
#: The project's packages (setup.py's top-level ones).
PACKAGES = ("snapshot", "mtd")
#: What of the checkout a run needs: the packages, the tests and benches with pytest's
#: configuration, and the feed package (its /sbin/snapshot launcher, which the benches run).
PROJECT_PARTS = (*PACKAGES, "tests", "bench", "openwrt-package", "pyproject.toml")


def cache_entry(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The complete setup entry (resolved, so a concurrent setup cannot swap it under a guest)."""
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    entry = (cache / "current").resolve()
    if not (entry / "KERNEL_VERSION").is_file():
        raise KernelTierUnavailable(f"no mipsel assets in {cache}: {SETUP_HINT}")
    return entry


class MipselVM(KernelVM):
    """Boots mipsel malta guests from the cache entry; otherwise a KernelVM."""

    modules = MIPSEL_MODULES
    # 9P2000.L sends the host's errno numbers, which the guest reads as its own, and MIPS
    # numbers most of them above 34 differently: the host's EOPNOTSUPP (95) for an xattr
    # arrived as ENOTSOCK and no program on the share could be executed. 9P2000.u sends an
    # error's name, which the guest maps to its own number.
    ninep_version = "9p2000.u"

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, memory_mb: int = 256):
        """Raises KernelTierUnavailable unless qemu-system-mipsel and the assets exist.

        memory_mb: malta without highmem addresses at most 256 MiB; nandsim's 64 MiB, the
        overlay's tmpfs and /tmp live in it.
        """
        entry = cache_entry(cache_dir)
        self.cache_dir = entry
        self.memory_mb = memory_mb
        self.kernel_version = (entry / "KERNEL_VERSION").read_text().strip()
        # The malta vmlinuz is an ELF, not compressed: qemu loads it as it is.
        self.vmlinux = entry / "kernel" / "boot" / f"vmlinuz-{self.kernel_version}"
        self.modules_dir = entry / "kernel" / "lib" / "modules" / self.kernel_version
        self.root = str(entry / "root")
        self.busybox = entry / "root" / "bin" / "busybox"
        for needed in (self.vmlinux, self.modules_dir / "modules.dep", Path(self.root, PYTHON[1:])):
            if not needed.is_file():
                raise KernelTierUnavailable(f"{needed} is missing: {SETUP_HINT}")
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise KernelTierUnavailable(f"{QEMU} not found: {SETUP_HINT}")
        self.qemu = qemu

    def _machine_args(self) -> list[str]:
        # No -cpu: malta's default, a MIPS32 24Kf, runs the 4kc kernel and Debian's userland.
        return ["-accel", "tcg", "-M", "malta", "-m", str(self.memory_mb),
                "-kernel", str(self.vmlinux)]


def ext_suffix(entry: Path) -> str:
    """The guest interpreter's EXT_SUFFIX (.cpython-311-mipsel-linux-gnu.so), read from its
    sysconfig data: it outranks .abi3.so when both sit in one package directory."""
    found = sorted((entry / "root" / "usr" / "lib").glob("python3.*/_sysconfigdata__*mipsel*.py"))
    if not found:
        raise KernelTierUnavailable(f"no mipsel sysconfig data in {entry}: {SETUP_HINT}")
    for node in ast.parse(found[0].read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "build_time_vars":
            return ast.literal_eval(node.value)["EXT_SUFFIX"]
    raise KernelTierUnavailable(f"{found[0]} has no build_time_vars")


def cross_build_abi(project: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The project's cffi extension modules (setup.py's cffi_modules, from mtd/build_abi.py)
    built for mipsel: a directory of .so files named for the guest's interpreter.

    cffi emits each module's C source here; the cross compiler builds it against the guest's
    Python headers and the kernel's mipsel UAPI headers, so struct layouts and ioctl numbers
    are mipsel's. Cached beside the entry, keyed by the build script, its headers, cffi, the
    entry (the Python headers) and the compiler; a half-built directory is never left.
    """
    import cffi

    entry = cache_entry(cache_dir)
    cc = shutil.which(CROSS_CC)
    if cc is None:
        raise KernelTierUnavailable(f"{CROSS_CC} not found: {SETUP_HINT}")
    mtd = Path(project) / "mtd"
    key = hashlib.sha256()
    for source in sorted([mtd / "build_abi.py", *mtd.glob("*_abi.h")]):
        key.update(source.name.encode() + b"\0" + source.read_bytes())
    version = subprocess.run([cc, "-dumpfullversion"], capture_output=True, text=True,
                             check=True).stdout
    key.update(f"{cffi.__version__}\0{entry.name}\0{version}".encode())
    target = entry.parent / f"abi-{key.hexdigest()[:16]}"
    if target.is_dir():
        return target

    spec = importlib.util.spec_from_file_location("build_abi", mtd / "build_abi.py")
    build_abi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_abi)
    builders = [value for value in vars(build_abi).values() if isinstance(value, cffi.FFI)]
    headers = entry / "dev" / "usr" / "include"
    includes = [f"-I{headers}", *(f"-I{d}" for d in sorted(headers.glob("python3.*")))]
    suffix = ext_suffix(entry)
    work = Path(tempfile.mkdtemp(prefix=".abi-", dir=entry.parent))
    try:
        for ffi in builders:
            # Writes the C source only; the module name is the one set_source gave. cffi
            # names the file it writes on stdout, which is this script's answer.
            with contextlib.redirect_stdout(sys.stderr):
                extension = ffi.distutils_extension(str(work / "src"), verbose=False)
            name = extension.name.rsplit(".", 1)[-1]
            # The flags of the guest Python's own extension modules (its sysconfig's OPT and
            # CCSHARED, LDSHARED).
            subprocess.run([cc, "-shared", "-fPIC", "-O2", "-fwrapv", "-DNDEBUG", *includes,
                            *extension.sources, "-o", str(work / f"{name}{suffix}")],
                           check=True, capture_output=True, text=True)
        shutil.rmtree(work / "src")
        os.chmod(work, 0o755)
        os.rename(work, target)
    except subprocess.CalledProcessError as e:
        raise KernelTierUnavailable(f"cross-building the bindings failed: {e.stderr}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in entry.parent.glob("abi-*"):
        if old != target and old.stat().st_mtime < target.stat().st_mtime - 3600:
            shutil.rmtree(old, ignore_errors=True)
    return target


def stage(project: Path, results_dir: Path, cache_dir=None) -> Path:
    """Copy what a guest run needs into results_dir/stage and return that directory (the
    guest's cwd): the checkout's package and tests with the mipsel bindings in mtd/ (never the
    host's), and site/, the pure-Python packages, which the job copies into the guest's
    dist-packages (job). Byte-compiled here: the guest's CPython (the same 3.11) would
    otherwise compile every module on its first import under TCG."""
    project = Path(project)
    stage_dir = Path(results_dir) / "stage"
    ignore = shutil.ignore_patterns("__pycache__", "*.so", ".pytest_cache")
    for part in PROJECT_PARTS:
        source = project / part
        if source.is_dir():
            shutil.copytree(source, stage_dir / part, ignore=ignore)
        else:
            shutil.copy2(source, stage_dir / part)
    for built in cross_build_abi(project, cache_dir).iterdir():
        shutil.copy2(built, stage_dir / "mtd" / built.name)
    site = stage_dir / "site"
    site.mkdir()
    for name in PURE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise KernelTierUnavailable(f"{name} is not installed in {sys.executable}")
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, site / name, ignore=ignore)
        else:
            shutil.copy2(origin, site / origin.name)
    compileall.compile_dir(stage_dir, quiet=2)
    return stage_dir


def job(stage_dir: Path, commands: str) -> list[str]:
    """The guest's argv for a shell script of commands, run in stage_dir. It first gives the
    guest's root what Debian's packages and an install leave to their scripts: busybox's
    applets (never over a real tool), and the staged packages and the project's in
    dist-packages, where a router's site-packages has them. Copied, with their bytecode's
    timestamps: the root is a tmpfs overlay, and reading them there costs less system time
    than from the results share, which 9p does not cache, as reading flash costs a router
    little beside running CPython."""
    installed = " ".join(f"{stage_dir}/{package}" for package in PACKAGES)
    return ["/bin/sh", "-c", "\n".join([
        "/bin/busybox --install -s",
        f"cp -a {stage_dir}/site/* {installed} /{DIST_PACKAGES}/",
        commands,
    ])]


if __name__ == "__main__":
    print(cross_build_abi(Path(sys.argv[1])))
