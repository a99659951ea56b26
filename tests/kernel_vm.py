"""Run a host command inside a qemu guest that has real kernel MTD devices.

The host kernel has no MTD support, so tests that need real nandsim / mtdram / block2mtd devices boot
a small Linux guest (the Debian kernel unpacked by scripts/setup-kernel-tier.sh) under qemu TCG. The
guest mounts the host's root filesystem read-only over 9p, puts a tmpfs overlay on it and chroots
into it, so the command runs with the host's own Python, venv and project checkout at the same paths.
Another machine (tests/mipsel_vm.py) boots its own kernel and chroots into its own root instead.

Only the results directory is shared writable: the guest leaves the command's combined output and
exit code there, and the host's view of that directory is the same absolute path inside the guest.

Guarantees, including after a crash of either side:
- The host filesystem is never written by the guest, except results_dir and the flash image.
- block2mtd runs over a virtio disk backed by a host file, so what reached it survives the guest:
  killing qemu (GuestHandle.kill) is a power cut, and the next boot on the same image sees the rest.
  Writes still in the guest's page cache are lost at a kill, as on real hardware without a sync.
- A guest that cannot set up every device, or never reports an exit code, raises KernelVMError with
  the console tail; nothing is skipped silently.

Stdlib only and no project imports: it is test infrastructure, importable before the project builds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SNAPSHOT_VM_CACHE"
DEFAULT_CACHE = "/var/cache/snapshot-kernel-vm"
SETUP_HINT = "run scripts/setup-kernel-tier.sh as root"

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"

#: Environment variables the guest sets for the command; callers may not pass them in env.
GUEST_VARS = ("SNAPSHOT_KERNEL_GUEST", "MTD_NANDSIM", "MTD_MTDRAM", "MTD_BLOCK2MTD")

#: block2mtd erase size; a flash image must be a non-empty multiple of it.
FLASH_ERASE_SIZE = 64 * 1024
DEFAULT_FLASH_SIZE = 4 * 1024 * 1024

#: Modules loaded by the guest before it chroots, in this order (each after its dependencies).
#: Everything a test may need is loaded up front: a kernel-initiated load (request_module) would run
#: the modprobe helper in the initramfs, which only has these modules.
#: Order matters where a module uses a device made by an earlier one: block2mtd opens /dev/vda.
MODULES: tuple[tuple[str, str], ...] = (
    ("virtio_pci", ""),
    ("virtio_blk", ""),
    ("9pnet_virtio", ""),
    ("9p", ""),
    ("overlay", ""),
    ("loop", ""),
    ("squashfs", ""),
    # ubifs allocates a zstd compressor at load time; crypto zstd is a module in Debian's kernel.
    ("zstd", ""),
    # NAND, 2 KiB pages, 128 KiB blocks, 64 B OOB, 64 MiB; erase block 5 is factory-bad.
    ("nandsim", "id_bytes=0x20,0xa2,0x00,0x15 badblocks=5"),
    # RAM-backed, 4 MiB, 64 KiB blocks.
    ("mtdram", "total_size=4096 erase_size=64"),
    # Over the virtio disk backed by the host's flash image.
    ("block2mtd", f"block2mtd=/dev/vda,{FLASH_ERASE_SIZE}"),
    ("mtdblock", ""),
    ("ubi", ""),
    ("ubifs", ""),
    ("jffs2", ""),
    # The mesh health check: batman-adv between two network namespaces joined by a veth pair.
    # libcrc32c, which batman-adv needs, asks the kernel for a crc32c implementation.
    ("crc32c_generic", ""),
    ("veth", ""),
    ("batman_adv", ""),
    # A network card, for a guest started with one (the real router's mesh neighbour).
    ("virtio_net", ""),
)

# The guest's PID 1. Static (no per-run data) so the initramfs can be cached; per-run settings come
# from $STATE/config, written by the host into the results share.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
STATE=/results/.kernel-vm

say() { echo "kernel-vm: $*"; }
die() {
    say "FATAL: $*"
    # The reason also goes to the results share (when mounted) for the host's error message.
    if grep -q " /results 9p " /proc/mounts; then echo "$*" > "$STATE/setup-error"; fi
    dmesg | tail -n 40
    sync
    poweroff -f
}

mount -t proc proc /proc || die "mount proc"
mount -t sysfs sysfs /sys || die "mount sysfs"
mount -t devtmpfs devtmpfs /dev || die "mount devtmpfs"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts || die "mount devpts"
mount -t tmpfs tmpfs /dev/shm || die "mount /dev/shm"

# request_module() runs its helper in this (initramfs) root, not in the chroot: log failed requests,
# since a module missing from MODULES would otherwise fail obscurely.
echo /sbin/modprobe-logged > /proc/sys/kernel/modprobe

while read -r ko params; do
    # $params unquoted on purpose: one word per module parameter.
    insmod "/lib/modules/$(uname -r)/$ko" $params || die "insmod $ko $params"
done < /etc/modules.load

# The 9p protocol version is the machine's (KernelVM.ninep_version).
NINEP="trans=virtio,version=$(cat /etc/9p-version),msize=512000"
mount -t 9p -o "$NINEP" results /results \
    || die "mount results share"
. "$STATE/config" || die "no $STATE/config"

# The name in /proc/mtd identifies each simulator; numbering depends on load order, so never assume.
mtd_named() {
    grep -F "\"$1\"" /proc/mtd | head -n 1 | cut -d: -f1
}
NANDSIM=$(mtd_named 'NAND simulator partition 0')
MTDRAM=$(mtd_named 'mtdram test device')
BLOCK2MTD=$(mtd_named 'block2mtd: /dev/vda')
for dev in "nandsim:$NANDSIM" "mtdram:$MTDRAM" "block2mtd:$BLOCK2MTD"; do
    name=${dev%%:*}; mtd=${dev#*:}
    [ -n "$mtd" ] || die "no $name device in /proc/mtd: $(cat /proc/mtd)"
    [ -c "/dev/$mtd" ] || die "no /dev/$mtd for $name"
done
say "nandsim=/dev/$NANDSIM mtdram=/dev/$MTDRAM block2mtd=/dev/$BLOCK2MTD"

# cache=loose: the host tree is read-only to the guest and is not expected to change during a run,
# and caching saves 9p round trips (a Python start here: ~1.5 s instead of ~1.8 s).
mount -t 9p -o "$NINEP,ro,cache=loose" hostroot /lower \
    || die "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "mount overlay tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || die "mount overlay"
mount -t proc proc /newroot/proc || die "mount /newroot/proc"
mount -t sysfs sysfs /newroot/sys || die "mount /newroot/sys"
mount -o rbind /dev /newroot/dev || die "bind /newroot/dev"
if [ "$HIDE_TMP" = 1 ]; then
    mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || die "mount /newroot/tmp"
fi
# After /tmp: results_dir may live under /tmp and must stay visible.
mkdir -p "/newroot$RESULTS_PATH" || die "mkdir $RESULTS_PATH"
mount -o bind /results "/newroot$RESULTS_PATH" || die "bind results to $RESULTS_PATH"

say "running job"
env -i SNAPSHOT_KERNEL_GUEST=1 MTD_NANDSIM="/dev/$NANDSIM" MTD_MTDRAM="/dev/$MTDRAM" \
    MTD_BLOCK2MTD="/dev/$BLOCK2MTD" \
    chroot /newroot /bin/sh "$RESULTS_PATH/.kernel-vm/job.sh" > "$STATE/output" 2>&1 < /dev/null
rc=$?
# rc is written last and renamed into place: its presence means the output file is complete.
echo "$rc" > "$STATE/rc.tmp" && mv "$STATE/rc.tmp" "$STATE/rc"
say "job exited with $rc"
# poweroff -f does not go through an init: sync first so the flash image gets block2mtd's writes.
sync
poweroff -f
"""

MODPROBE_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox modprobe "$@" && exit 0
rc=$?
case "$*" in
    # Partition parsers MTD asks for at every registration; this kernel has none as modules.
    *" cmdlinepart" | *" fixed-partitions") ;;
    # <3>: error level, so the message reaches the console despite "quiet".
    *) echo "<3>kernel-vm: kernel requested module ($*), not in the initramfs" > /dev/kmsg ;;
esac
exit $rc
"""

# panic=-1 + qemu's -no-reboot turn a guest panic (e.g. init dying) into a qemu exit instead of a
# hang until the timeout. quiet: every console byte is an emulated serial write.
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"


class KernelTierUnavailable(Exception):
    """The kernel tier cannot run on this machine (a tool or an asset is missing)."""


class KernelVMError(Exception):
    """The guest did not produce a result; the message ends with the guest console tail."""


class GuestTimeout(KernelVMError):
    """The guest did not finish in time; qemu has been killed."""


@dataclass(frozen=True)
class GuestResult:
    returncode: int
    output: str  # stdout and stderr of the command, interleaved


def create_flash_image(path: Path, size: int = DEFAULT_FLASH_SIZE) -> None:
    """Write an erased (all 0xFF) flash image of size bytes, replacing any file at path."""
    if size <= 0 or size % FLASH_ERASE_SIZE:
        raise ValueError(f"flash image size {size} is not a positive multiple of {FLASH_ERASE_SIZE}")
    with open(path, "wb") as f:
        f.write(b"\xff" * size)


class KernelVM:
    """Boots guests from the assets in the cache dir; one instance can boot any number of guests.

    An x86_64 guest whose root is the host's own. Another machine (tests/mipsel_vm.py) overrides
    the class attributes and _machine_args, and sets its own assets in __init__.
    """

    #: The modules the guest loads, with their parameters (see MODULES).
    modules: tuple[tuple[str, str], ...] = MODULES
    #: The static busybox the initramfs runs.
    busybox: Path = Path(BUSYBOX)
    #: The directory the guest mounts read-only (under a tmpfs overlay) and chroots into.
    root: str = "/"
    #: The 9p protocol of the shares.
    ninep_version: str = "9p2000.L"

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, memory_mb: int = 1024):
        """Raises KernelTierUnavailable unless qemu, a static busybox and the kernel assets exist.

        memory_mb: guest RAM; nandsim's 64 MiB, the overlay's tmpfs and /tmp all live in it.
        """
        self.cache_dir = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
        self.memory_mb = memory_mb
        version_file = self.cache_dir / "KERNEL_VERSION"
        if not version_file.is_file():
            raise KernelTierUnavailable(f"no kernel assets in {self.cache_dir}: {SETUP_HINT}")
        self.kernel_version = version_file.read_text().strip()
        self.vmlinux = self.cache_dir / "vmlinux"
        self.modules_dir = self.cache_dir / "root" / "lib" / "modules" / self.kernel_version
        for needed in (self.vmlinux, self.modules_dir / "modules.dep"):
            if not needed.is_file():
                raise KernelTierUnavailable(f"{needed} is missing: {SETUP_HINT}")
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise KernelTierUnavailable(f"{QEMU} not found: {SETUP_HINT}")
        self.qemu = qemu
        if not _is_static_elf(self.busybox):
            raise KernelTierUnavailable(f"{self.busybox} is not a static busybox: {SETUP_HINT}")

    def _machine_args(self) -> list[str]:
        """qemu's arguments for the CPU, the machine, its memory and the kernel."""
        return ["-accel", "tcg", "-cpu", "max", "-m", str(self.memory_mb), "-smp", "1",
                "-kernel", str(self.vmlinux)]

    def run(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        timeout: float,
        results_dir: Path,
        flash_image: Path | None = None,
    ) -> GuestResult:
        """Boot, run argv in the guest, power off. timeout covers the boot too."""
        with self.start(argv, cwd=cwd, env=env, results_dir=results_dir, flash_image=flash_image) as vm:
            return vm.wait(timeout)

    def start(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        results_dir: Path,
        flash_image: Path | None = None,
        devices: tuple[str, ...] = (),
    ) -> GuestHandle:
        """Boot a guest that runs argv and return at once; see GuestHandle.

        flash_image: host file behind block2mtd, created erased (4 MiB) if missing; None means a
        fresh temporary image, deleted when the handle closes. results_dir receives console.log and
        the .kernel-vm/ state; one guest at a time per results_dir. devices: more qemu arguments
        (a network card and its backend: the guest has none otherwise).
        """
        if not argv:
            raise ValueError("argv is empty")
        clashing = sorted(set(env) & set(GUEST_VARS))
        if clashing:
            raise ValueError(f"env may not set {', '.join(clashing)}: the guest sets them")
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"env name {key!r} cannot be exported by a shell")
        results_dir = Path(results_dir).resolve()
        cwd = os.path.abspath(cwd)
        state = results_dir / ".kernel-vm"
        state.mkdir(parents=True, exist_ok=True)
        # Leftovers of a previous run would pass for this run's result.
        for stale in ("rc", "rc.tmp", "output", "setup-error"):
            (state / stale).unlink(missing_ok=True)

        temporary_image = flash_image is None
        if flash_image is None:
            fd, name = tempfile.mkstemp(prefix="kernel-vm-flash-", suffix=".img")
            os.close(fd)
            flash_image = Path(name)
            create_flash_image(flash_image)
        else:
            flash_image = Path(flash_image).resolve()
            if not flash_image.exists():
                create_flash_image(flash_image)
            size = flash_image.stat().st_size
            if size == 0 or size % FLASH_ERASE_SIZE:
                raise ValueError(f"{flash_image}: size {size} is not a multiple of {FLASH_ERASE_SIZE}")

        # A tmpfs on the guest's /tmp would hide a checkout or venv that lives under the host's /tmp
        # (CI clones can); the overlay keeps /tmp writes private anyway, so leave /tmp visible then.
        hide_tmp = not any(_under(p, "/tmp") for p in (cwd, argv[0]))
        (state / "config").write_text(
            f"RESULTS_PATH={shlex.quote(str(results_dir))}\nHIDE_TMP={int(hide_tmp)}\n"
        )
        (state / "job.sh").write_text(_job_script(argv, cwd, env))

        initramfs = self._initramfs()
        console_path = results_dir / "console.log"
        console = open(console_path, "wb")
        cmd = [
            self.qemu,
            *self._machine_args(),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio",
            "-initrd", str(initramfs),
            "-append", KERNEL_CMDLINE,
            "-virtfs", f"local,path={_qemu_escape(self.root)},mount_tag=hostroot,"
                       "security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={_qemu_escape(str(results_dir))},mount_tag=results,"
                       "security_model=none,multidevs=remap",
            "-drive", f"file={_qemu_escape(str(flash_image))},format=raw,if=virtio,cache=writeback",
            *devices,
        ]
        try:
            # Own session: a Ctrl-C aimed at the test runner must not kill qemu behind our back.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            console.close()
            if temporary_image:
                flash_image.unlink(missing_ok=True)
            raise
        return GuestHandle(proc, console, console_path, state, flash_image, temporary_image)

    def _initramfs(self) -> Path:
        """The cached initramfs for the current inputs, built if missing."""
        order = _load_order(self.modules_dir / "modules.dep", [name for name, _ in self.modules])
        params = dict(self.modules)
        module_files = [self.modules_dir / rel for rel in order]
        # Stale when any input changed: scripts, module list, and the identity of each file copied.
        key = hashlib.sha256()
        key.update(INIT_SCRIPT.encode() + MODPROBE_SCRIPT.encode() + repr(self.modules).encode()
                   + self.ninep_version.encode())
        for f in [self.busybox, *module_files]:
            st = f.stat()
            key.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        target = self.cache_dir / f"initramfs-{key.hexdigest()[:16]}.cpio"
        if target.exists():
            return target

        archive = _Cpio()
        for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "lower", "rw", "newroot",
                  "results", "lib", "lib/modules", f"lib/modules/{self.kernel_version}"):
            archive.add_dir(d)
        # The kernel opens /dev/console for PID 1 before init can mount devtmpfs.
        archive.add_char_device("dev/console", 5, 1)
        archive.add_file("init", INIT_SCRIPT.encode(), 0o755)
        archive.add_file("etc/9p-version", f"{self.ninep_version}\n".encode(), 0o644)
        archive.add_file("bin/busybox", self.busybox.read_bytes(), 0o755)
        archive.add_file("sbin/modprobe-logged", MODPROBE_SCRIPT.encode(), 0o755)
        base = f"lib/modules/{self.kernel_version}"
        made_dirs = set()
        for rel, path in zip(order, module_files):
            parts = Path(rel).parts[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made_dirs:
                    archive.add_dir(f"{base}/{d}")
                    made_dirs.add(d)
            archive.add_file(f"{base}/{rel}", path.read_bytes(), 0o644)
        load_lines = [f"{rel} {params.get(_module_name(rel), '')}".rstrip() for rel in order]
        archive.add_file("etc/modules.load", ("\n".join(load_lines) + "\n").encode(), 0o644)
        # Subsets of modules.dep/alias for busybox modprobe, used only by the logged helper.
        included = set(order)
        dep_lines = [
            line for line in (self.modules_dir / "modules.dep").read_text().splitlines()
            if line.split(":", 1)[0] in included
        ]
        archive.add_file(f"{base}/modules.dep", ("\n".join(dep_lines) + "\n").encode(), 0o644)
        names = {_module_name(rel) for rel in order}
        alias_lines = [
            line for line in (self.modules_dir / "modules.alias").read_text().splitlines()
            if line.startswith("alias ") and line.split()[-1] in names
        ]
        archive.add_file(f"{base}/modules.alias", ("\n".join(alias_lines) + "\n").encode(), 0o644)

        # Atomic: concurrent test sessions may build the same file.
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".initramfs-")
        with os.fdopen(fd, "wb") as f:
            f.write(archive.finish())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        # Drop initramfs files of earlier inputs. Only old ones: another session may be about to
        # hand a recent one to qemu (which reads it whole at start, so later deletion is harmless).
        for old in self.cache_dir.glob("initramfs-*.cpio"):
            if old != target and time.time() - old.stat().st_mtime > 3600:
                old.unlink(missing_ok=True)
        return target


class GuestHandle:
    """A running guest. Use as a context manager so qemu never outlives the test that started it."""

    def __init__(self, proc, console, console_path, state, flash_image, temporary_image):
        self._proc = proc
        self._console = console
        self.console_path: Path = console_path
        self.flash_image: Path = flash_image
        self._state = state
        self._temporary_image = temporary_image
        self._killed = False

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def kill(self) -> None:
        """Cut the power: SIGKILL qemu now. The flash image keeps what the guest had written to it."""
        if self._proc.poll() is None:
            self._killed = True
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()
        self._close()

    def wait(self, timeout: float) -> GuestResult:
        """Wait for the guest to power off and return the command's result.

        Raises GuestTimeout (after killing qemu) if it takes longer than timeout seconds, and
        KernelVMError if the guest stopped without a result (setup failure, panic, kill()).
        """
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise GuestTimeout(
                f"guest did not finish within {timeout:g} s; qemu killed\n" + self._diagnostics()
            ) from None
        self._close()
        rc_file = self._state / "rc"
        if self._killed or not rc_file.exists():
            setup_error = self._state / "setup-error"
            if self._killed:
                reason = "killed"
            elif setup_error.exists():
                reason = setup_error.read_text().strip()
            else:
                reason = "no exit code"
            raise KernelVMError(
                f"guest stopped without a result ({reason}); qemu exit status "
                f"{self._proc.returncode}\n" + self._diagnostics()
            )
        output = (self._state / "output").read_bytes().decode("utf-8", errors="replace")
        return GuestResult(int(rc_file.read_text()), output)

    def console_tail(self, lines: int = 60) -> str:
        text = self.console_path.read_bytes().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _diagnostics(self) -> str:
        parts = [f"--- console tail ({self.console_path}) ---", self.console_tail()]
        output = self._state / "output"
        if output.exists():
            text = output.read_bytes().decode("utf-8", errors="replace")
            parts += ["--- command output tail ---", "\n".join(text.splitlines()[-30:])]
        return "\n".join(parts)

    def _close(self) -> None:
        if not self._console.closed:
            self._console.close()
        if self._temporary_image:
            self.flash_image.unlink(missing_ok=True)

    def __enter__(self) -> GuestHandle:
        return self

    def __exit__(self, *exc) -> None:
        if self._proc.poll() is None:
            self.kill()
        self._close()


def _job_script(argv: list[str], cwd: str, env: dict[str, str]) -> str:
    """The shell script the guest runs in the chroot: caller's env over a minimal base, cd, exec."""
    base = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
    }
    lines = ["# generated by tests/kernel_vm.py"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in {**base, **env}.items()]
    lines.append(f"cd {shlex.quote(cwd)} || exit 125")
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def _load_order(modules_dep: Path, names: list[str]) -> list[str]:
    """Paths (relative to the modules dir) of names and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.read_text().splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    order: list[str] = []

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in chain:
            raise KernelTierUnavailable(f"dependency cycle in {modules_dep}: {chain + (path,)}")
        for dep in deps.get(path, []):
            visit(dep, chain + (path,))
        order.append(path)

    for name in names:
        if name not in by_name:
            raise KernelTierUnavailable(f"module {name} not in {modules_dep}: {SETUP_HINT}")
        visit(by_name[name], ())
    return order


def _module_name(path: str) -> str:
    # modules.dep names files with '-' where module names use '_' (crc32c-intel -> crc32c_intel).
    name = Path(path).name
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def _is_static_elf(path: Path) -> bool:
    """True for a little-endian ELF executable, 32- or 64-bit, without a PT_INTERP header (no
    dynamic loader needed)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] != 1:
                return False
            if head[4] == 2:
                phoff, = struct.unpack_from("<Q", head, 0x20)
                phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            else:
                phoff, = struct.unpack_from("<I", head, 0x1c)
                phentsize, phnum = struct.unpack_from("<HH", head, 0x2a)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    PT_INTERP = 3
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum)
    )


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _qemu_escape(value: str) -> str:
    # qemu option values separate fields with ',' and read ',,' as a literal comma.
    return value.replace(",", ",,")


class _Cpio:
    """A "newc" cpio archive, the format the kernel unpacks as an initramfs. Built in memory (a few
    MiB) so no root-only mknod is needed for /dev/console."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08x" % v for v in fields) + name.encode() + b"\0"
        self._chunks.append(header + b"\0" * (-len(header) % 4))
        self._chunks.append(data + b"\0" * (-len(data) % 4))

    def add_dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def add_file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, 0o100000 | perm, data)

    def add_char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)
