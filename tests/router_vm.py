"""The real-router tier: boot the OpenWrt root scripts/build-router.sh builds under qemu
and drive it through its serial console, as a person with a serial cable would.

The guest is the router, on one of two CPUs (CPUS): x86_64 with the Debian kernel of the
kernel tier, or mipsel on qemu's malta board with Debian's malta kernel. An initramfs does
only what a router's built-in drivers do (it names the flash rootfs_data, mounts the
squashfs root), then procd as PID 1, OpenWrt's /etc/preinit with the project's hook,
mount_root, rc.d. Nothing of the host is shared with it.

The flash is block2mtd over a virtio disk backed by a host file, so it persists across boots
(qemu runs with -no-reboot: a reboot in the guest ends qemu, and the next boot is a new
qemu on the same file), and killing qemu is a power cut. It is a NOR router's, rootfs_data
an MTD partition, or a NAND router's (flash="ubi"): UBI attached at boot to an MTD
partition `ubi`, rootfs_data a volume in it (ubi_flash() makes one as an installer leaves
it).

Stdlib only and no project imports, like tests/kernel_vm.py, whose qemu helpers it uses.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from kernel_vm import FLASH_ERASE_SIZE, _qemu_escape, create_flash_image

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-router.sh"

#: The router's flash: 8 MiB of 64 KiB erase blocks (block2mtd's erase size in the
#: initramfs).
FLASH_SIZE = 8 << 20
assert FLASH_SIZE % FLASH_ERASE_SIZE == 0

#: The host as the guest's user-mode network shows it: a connection to it reaches the host's
#: loopback (the router is 192.168.1.1 on the same network, its stock LAN address).
HOST_ADDRESS = "192.168.1.2"

#: The router's mesh card's MAC, by which the router finds it (its name depends on probe order).
MESH_MAC = "52:54:00:5e:00:01"

#: The CPUs a root is built for (build-router.sh's ARCH), and the qemu machine of each:
#: malta has PCI, so the disks and the NIC are virtio-pci devices as on x86_64; without
#: highmem it addresses at most 256 MiB.
CPUS = ("x86_64", "mipsel")
MACHINES = {
    "x86_64": ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512"],
    "mipsel": ["qemu-system-mipsel", "-accel", "tcg", "-M", "malta", "-m", "256"],
}
#: How much longer than on x86_64 a guest takes for the same work: every timeout a test
#: gives is multiplied by it (the emulated 24Kf runs CPython about this much slower).
SLOWNESS = {"x86_64": 1.0, "mipsel": 3.0}

#: The kernel prints to the console from here on only what is an error: preinit's and
#: procd's own messages (through /dev/kmsg) are notices, and the serial port is slow.
KERNEL_CMDLINE = "console=ttyS0 panic=-1 loglevel=4"

#: OpenWrt's inittab runs askfirst on the serial console: a shell after Enter.
CONSOLE_PROMPT = "Please press Enter to activate this console."

#: OpenWrt's /etc/profile: root@HOSTNAME:DIR# (the hostname is "(none)" before the
#: system service has set it).
SHELL_PROMPT = re.compile(r"root@[^\n]*# ")

#: Split by an empty pair of quotes where typed, so the echo of a command never matches.
BEGIN, END = "@@begin@@", "@@end:"
_END_RE = re.compile(re.escape(END) + r"(\d+)@@")


class RouterUnavailable(Exception):
    """The tier cannot run here (not root, or the root could not be built)."""


class RouterError(Exception):
    """The router did not do what a test waited for; the message ends with the console
    tail."""


def build_root(cpu: str = "x86_64") -> Path:
    """The cached root directory of scripts/build-router.sh for cpu (one of CPUS), built if
    its inputs changed (minutes cold, seconds warm)."""
    if os.geteuid() != 0:
        raise RouterUnavailable("scripts/build-router.sh needs root")
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                          env={**os.environ, "ARCH": cpu})
    if done.returncode != 0:
        raise RouterUnavailable(f"ARCH={cpu} scripts/build-router.sh failed "
                                f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def mesh_link_args(local: int, remote: int, mac: str) -> list[str]:
    """qemu's arguments for a network card whose frames go as UDP datagrams on the host's
    loopback from port local to port remote, and come in at local. Stateless, so either
    end's qemu can stop and a new one start on the same ports (the router's reboots)."""
    return ["-netdev", f"socket,id=mesh,udp=127.0.0.1:{remote},localaddr=127.0.0.1:{local}",
            "-device", f"virtio-net-pci,netdev=mesh,mac={mac}"]


def erased_flash(path: Path) -> Path:
    create_flash_image(path, FLASH_SIZE)
    return path


#: UBI on block2mtd: 64 KiB physical erase blocks written a byte at a time, so a logical
#: block is what the erase counter and volume headers (64 bytes each) leave of one.
UBI_PEB_SIZE = FLASH_ERASE_SIZE
UBI_LEB_SIZE = UBI_PEB_SIZE - 128


def ubi_flash(path: Path, overlay: Path | None = None) -> Path:
    """A NAND router's flash for flash="ubi": UBI with one volume, rootfs_data, which
    grows to fill the flash when UBI first attaches it (ubinize's autoresize, as an
    installer's image has it). Empty, as OpenWrt's nand.sh makes it; or, with overlay (a
    directory holding upper/ and work/), a stock ubifs overlay of that content, as a router
    that ran OpenWrt before this package leaves it."""
    with tempfile.TemporaryDirectory(prefix="ubi-flash-") as tmp:
        volume = [
            "[rootfs_data]", "mode=ubi", "vol_id=0", "vol_type=dynamic",
            "vol_name=rootfs_data", "vol_flags=autoresize",
        ]
        if overlay is None:
            volume.append(f"vol_size={UBI_LEB_SIZE}")
        else:
            ubifs = Path(tmp) / "ubifs.img"
            subprocess.run(["mkfs.ubifs", "-r", str(overlay), "-m", "1",
                            "-e", str(UBI_LEB_SIZE), "-c", str(FLASH_SIZE // UBI_PEB_SIZE),
                            "-o", str(ubifs)], check=True, capture_output=True)
            volume.append(f"image={ubifs}")
        config = Path(tmp) / "ubinize.cfg"
        config.write_text("\n".join(volume) + "\n")
        image = Path(tmp) / "ubi.img"
        subprocess.run(["ubinize", "-o", str(image), "-p", str(UBI_PEB_SIZE), "-m", "1",
                        str(config)], check=True, capture_output=True)
        data = image.read_bytes()
    # The blocks after the image are erased, as on a flash the installer wrote.
    path.write_bytes(data + b"\xff" * (FLASH_SIZE - len(data)))
    return path


class Router:
    """One boot of the router: a qemu process whose serial console this object reads and
    writes. Use as a context manager so that qemu never outlives the test."""

    def __init__(self, root: Path, flash: Path, console_log: Path,
                 http_port: int | None = None, mesh_link: tuple[int, int] | None = None,
                 flash_kind: str = "nor"):
        """http_port: a host port (on 127.0.0.1) forwarded to the router's web server, the
        LAN address's port 80. mesh_link: a second network card, MAC MESH_MAC, whose frames
        qemu sends as UDP datagrams from the first host port (on 127.0.0.1) to the second, and
        takes from the first: a link to another guest's card (mesh_link_args). flash_kind:
        "nor" (rootfs_data an MTD partition) or "ubi" (rootfs_data a UBI volume; see
        ubi_flash)."""
        if flash_kind not in ("nor", "ubi"):
            raise ValueError(f"flash_kind {flash_kind!r} is neither 'nor' nor 'ubi'")
        self.console_log = console_log
        self.cpu = (root / "ARCH").read_text().strip()
        self.slowness = SLOWNESS[self.cpu]
        self._text = ""
        self._seen = 0
        self._lock = threading.Condition()
        kernel = Path((root / "KERNEL").read_text().strip())
        cmd = [
            *MACHINES[self.cpu], "-smp", "1", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot",
            "-serial", "stdio",
            "-kernel", str(kernel), "-initrd", str(root / "initramfs.cpio"),
            "-append", KERNEL_CMDLINE + (" flash=ubi" if flash_kind == "ubi" else ""),
            "-drive", f"file={_qemu_escape(str(root / 'root.squashfs'))},format=raw,"
                      "if=virtio,readonly=on",
            "-drive", f"file={_qemu_escape(str(flash))},format=raw,if=virtio,cache=writeback",
            "-nic", f"user,model=virtio-net-pci,net=192.168.1.0/24,host={HOST_ADDRESS}"
                    + (f",hostfwd=tcp:127.0.0.1:{http_port}-192.168.1.1:80" if http_port else ""),
        ]
        if mesh_link:
            cmd += mesh_link_args(*mesh_link, MESH_MAC)
        self.started = time.monotonic()
        self._log = open(console_log, "ab")
        # Own session: a Ctrl-C aimed at pytest must not kill qemu behind the harness's back.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := os.read(self._proc.stdout.fileno(), 4096):
            self._log.write(chunk)
            self._log.flush()
            with self._lock:
                self._text += chunk.decode("utf-8", errors="replace").replace("\r", "")
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def expect(self, pattern: str | re.Pattern, timeout: float) -> re.Match:
        """Wait for pattern in the console output after what earlier calls consumed; consume
        up to the end of the match."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout * self.slowness
        with self._lock:
            while True:
                match = regex.search(self._text, self._seen)
                if match:
                    self._seen = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or (self._proc.poll() is not None and not self._reader.is_alive()):
                    why = "timed out" if left <= 0 else "qemu exited"
                    raise RouterError(f"{why} waiting for {regex.pattern!r} after "
                                      f"{time.monotonic() - self.started:.0f} s\n"
                                      + self.console_tail())
                self._lock.wait(min(left, 1.0))

    def send(self, text: str) -> None:
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def login(self, timeout: float = 300) -> float:
        """Wait for the console, activate it and quiet the kernel's messages on it; returns
        the seconds from qemu's start to the console."""
        self.expect(CONSOLE_PROMPT, timeout)
        seconds = time.monotonic() - self.started
        self.send("\n")
        # Typed before the shell's prompt, a command would be lost.
        self.expect(SHELL_PROMPT, timeout)
        self.sh("dmesg -n 1")
        return seconds

    def sh(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run command in the console's shell; its exit status and output (stdout and
        stderr)."""
        begin = BEGIN.replace("@@b", "@@''b")
        end = END.replace("@@e", "@@''e")
        # In a subshell: an `exit` in command must not end the console's shell.
        self.send(f"echo {begin}; ( {command} ) 2>&1; echo {end}$?@@\n")
        self.expect(BEGIN + "\n", timeout)
        match = self.expect(_END_RE, timeout)
        with self._lock:
            output = self._text[:match.start()]
        output = output[output.rfind(BEGIN + "\n") + len(BEGIN) + 1:]
        return int(match.group(1)), output

    def check(self, command: str, timeout: float = 120) -> str:
        """Run command; its output, or RouterError if it failed."""
        rc, output = self.sh(command, timeout)
        if rc != 0:
            raise RouterError(f"{command!r} exited {rc}:\n{output}")
        return output

    def write_file(self, data: bytes, target: str) -> None:
        """data into the file target in the guest, through the console: base64 (the line
        discipline would take control bytes), in short lines (the console loses input bytes
        of a long one)."""
        encoded = base64.b64encode(data).decode()
        self.check(f"mkdir -p $(dirname {target}) && : > {target}.b64")
        for at in range(0, len(encoded), 200):
            self.check(f"printf %s '{encoded[at:at + 200]}' >> {target}.b64")
        self.check(f"python3 -c 'import base64; open(\"{target}\", \"wb\").write(base64."
                   f"b64decode(open(\"{target}.b64\").read()))' && rm {target}.b64")

    def wait_until(self, condition: str, timeout: float) -> None:
        """Poll a shell condition in the guest each second until it holds."""
        self.check(f"n=0; until {condition}; do [ $n -ge {int(timeout * self.slowness)} ] "
                   "&& exit 1; n=$((n + 1)); sleep 1; done", timeout + 60)

    def wait_exit(self, timeout: float) -> int:
        """Wait for qemu to end (a reboot or power-off in the guest)."""
        try:
            return self._proc.wait(timeout * self.slowness)
        except subprocess.TimeoutExpired:
            raise RouterError(f"qemu still running after {timeout * self.slowness:g} s\n"
                              + self.console_tail()) from None

    def kill(self) -> None:
        """Cut the power."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()

    def console_tail(self, lines: int = 60) -> str:
        with self._lock:
            return "--- console tail ---\n" + "\n".join(self._text.splitlines()[-lines:])

    def console(self) -> str:
        with self._lock:
            return self._text

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self._reader.join(5)
        self._log.close()
