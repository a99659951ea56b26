#!/usr/bin/env bash
# Prepare the "kernel tier" of the test suite: the assets tests/kernel_vm.py needs to boot a Linux
# guest under qemu with real kernel MTD devices (nandsim, mtdram, block2mtd).
#
# Run as root. Idempotent: every step whose output already exists is skipped, so reruns are fast.
#
# Result, in $SNAPSHOT_VM_CACHE (default /var/cache/snapshot-kernel-vm):
#   root/            the Debian kernel package unpacked with dpkg-deb -x (modules + modules.dep)
#   vmlinux          the uncompressed kernel (boots about twice as fast as bzImage under TCG)
#   KERNEL_VERSION   the module directory name, e.g. 6.1.0-56-amd64; written last = "setup complete"
#
# Env: SNAPSHOT_VM_CACHE (cache dir), SNAPSHOT_VM_KERNEL_PKG (pin a kernel package instead of the one
# linux-image-amd64 depends on).
set -euo pipefail

CACHE="${SNAPSHOT_VM_CACHE:-/var/cache/snapshot-kernel-vm}"
# xz-utils: fallback decompressor for vmlinuz when python3 was built without lzma.
PACKAGES=(qemu-system-x86 busybox-static kmod cpio xz-utils)

log() { echo "setup-kernel-tier: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (apt-get install, cache in $CACHE)"
    exit 1
fi

# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"

# --- 1. host packages -------------------------------------------------------------------------
apt_install_missing "${PACKAGES[@]}"

mkdir -p "$CACHE"

# --- 2. kernel package --------------------------------------------------------------------------
if [[ ! -d "$CACHE/root/lib/modules" ]]; then
    kpkg="${SNAPSHOT_VM_KERNEL_PKG:-}"
    if [[ -z $kpkg ]]; then
        # The metapackage's dependency names the current ABI (linux-image-6.1.0-NN-amd64).
        resolve() { apt-cache depends linux-image-amd64 2>/dev/null \
                        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1; }
        kpkg=$(resolve || true)
        if [[ -z $kpkg ]]; then
            apt_update_once
            kpkg=$(resolve)
        fi
        [[ -n $kpkg ]] || { log "cannot resolve the package linux-image-amd64 depends on"; exit 1; }
    fi
    log "downloading $kpkg"
    dl=$(mktemp -d "$CACHE/download.XXXXXX")
    # apt-get download drops privileges to _apt, which must be able to write the target dir.
    chmod 0777 "$dl"
    (cd "$dl" && apt-get download -qq "$kpkg") || { apt_update_once; (cd "$dl" && apt-get download -qq "$kpkg"); }
    # Unpack beside the final dir and rename, so an interrupted run never leaves a half tree.
    rm -rf "$CACHE/root.tmp"
    dpkg-deb -x "$dl"/*.deb "$CACHE/root.tmp"
    mv "$CACHE/root.tmp" "$CACHE/root"
    rm -rf "$dl"
fi

kver=$(ls "$CACHE/root/lib/modules" | head -n1)
[[ -n $kver && -f "$CACHE/root/boot/vmlinuz-$kver" ]] || { log "no kernel in $CACHE/root"; exit 1; }

# --- 3. modules.dep (the Debian package ships without it) -------------------------------------------
if [[ ! -s "$CACHE/root/lib/modules/$kver/modules.dep" ]]; then
    log "depmod -b $CACHE/root $kver"
    depmod -b "$CACHE/root" "$kver"
fi

# --- 4. uncompressed vmlinux ---------------------------------------------------------------------
# A bzImage is a small decompressor followed by the compressed kernel ELF. Find each candidate
# compression magic, try to decompress from there, and keep the first result that is an ELF file.
if [[ ! -f "$CACHE/vmlinux" ]]; then
    log "extracting vmlinux from vmlinuz-$kver"
    python3 - "$CACHE/root/boot/vmlinuz-$kver" "$CACHE/vmlinux.tmp" <<'PY'
import shutil, subprocess, sys, zlib

try:
    import lzma
except ImportError:  # a python3 built without liblzma: use the xz CLI instead
    lzma = None

src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()


def gunzip(buf):
    # wbits=31: gzip header; a decompressobj stops at the end of the stream and ignores the trailer.
    return zlib.decompressobj(31).decompress(buf)


def cli(tool, fmt_args, buf):
    # The CLIs exit non-zero on the padding after the stream but have already written the decoded
    # stream, so keep stdout whatever the exit code.
    if not shutil.which(tool):
        raise RuntimeError(f"{tool} not installed")
    return subprocess.run([tool, "-dc", *fmt_args], input=buf, capture_output=True).stdout


def unxz(buf):
    if lzma is None:
        return cli("xz", ["--format=xz"], buf)
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(buf)


def unlzma(buf):
    if lzma is None:
        return cli("xz", ["--format=lzma"], buf)
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(buf)


def unzstd(buf):
    # zstd is not in the Python 3.11 stdlib.
    return cli("zstd", [], buf)


candidates = [
    (b"\x1f\x8b\x08", gunzip),
    (b"\xfd7zXZ\x00", unxz),
    (b"\x28\xb5\x2f\xfd", unzstd),
    (b"\x5d\x00\x00", unlzma),
]
for magic, decode in candidates:
    pos = data.find(magic)
    # Bound the search: the stream starts in the first few hundred KiB after the setup code.
    tries = 0
    while pos != -1 and tries < 64:
        tries += 1
        try:
            out = decode(data[pos:])
        except Exception:  # not a stream start after all (false magic match): try the next one
            out = b""
        if out[:4] == b"\x7fELF":
            open(dst, "wb").write(out)
            print(f"vmlinux: {len(out)} bytes from offset {pos} ({decode.__name__})")
            sys.exit(0)
        pos = data.find(magic, pos + 1)
sys.exit(f"no compressed ELF kernel found in {src}")
PY
    mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
fi

# Written last: kernel_vm.py treats its presence as "setup finished".
echo "$kver" > "$CACHE/KERNEL_VERSION"
log "ready: $CACHE (kernel $kver)"
