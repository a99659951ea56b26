#!/usr/bin/env bash
# Prepare the mipsel guest of the router tier: the assets tests/mipsel_vm.py needs to boot
# Debian's malta kernel under qemu-system-mipsel (the CPU family of MT7621 and many other
# routers: 32-bit, little-endian, and MIPS encodes ioctl numbers differently from x86), with
# Debian's mipsel Python and the project's cffi bindings cross-built for it.
#
# Run as root. No mipsel package is installed: they are fetched with apt-get download and
# unpacked with dpkg-deb -x. Host packages: qemu-system-mips and the cross compiler.
#
# Result, in $SNAPSHOT_MIPSEL_CACHE (default /var/cache/snapshot-mipsel), keyed by this script
# and the versions apt resolves for the packages below, so a warm run takes seconds:
#   KEY/kernel/          the kernel package (vmlinuz is an ELF qemu's -kernel takes; modules
#                        with modules.dep)
#   KEY/root/            the guest's root: busybox, python3.11 and its standard library
#                        (byte-compiled), glibc and the libraries the modules link, cffi's
#                        _cffi_backend; dev, proc, sys and tmp to mount on
#   KEY/dev/             libpython3.11-dev: the headers the bindings are cross-built against
#   KEY/KERNEL_VERSION   the module directory name; written last = "setup complete"
#   current -> KEY       switched when KEY is complete; older entries are removed
# Then it cross-builds the bindings of this checkout (tests/mipsel_vm.py, cached beside KEY).
#
# Env: SNAPSHOT_MIPSEL_CACHE (cache dir), SNAPSHOT_BUILD_PYTHON (the interpreter with cffi
# that emits the bindings' C source; default the checkout's .venv).
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SNAPSHOT_MIPSEL_CACHE:-/var/cache/snapshot-mipsel}"
PY="${SNAPSHOT_BUILD_PYTHON:-$HERE/.venv/bin/python}"
# qemu-system-mips has qemu-system-mipsel; libc6-dev-mipsel-cross brings the kernel's UAPI
# headers (<mtd/mtd-user.h>) for mipsel, which gcc-mipsel-linux-gnu only recommends.
HOST_PACKAGES=(qemu-system-mips gcc-mipsel-linux-gnu libc6-dev-mipsel-cross kmod)
KERNEL_META=linux-image-4kc-malta:mipsel
# Debian's python3.11 and what it and the standard library's extension modules link, as in the
# x86_64 router root; busybox-static for the initramfs and the guest's shell; mtd-utils and its
# libraries for UBI on nandsim (ubiattach, ubimkvol); GNU time for the start-up bench's RSS.
ROOT_DEBS=(busybox-static python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6
           zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 python3-cffi-backend
           mtd-utils libiniparser1 liblzo2-2 libselinux1 libpcre2-8-0 libssl3 libuuid1
           libzstd1 time)
DEV_DEBS=(libpython3.11-dev)

log() { echo "setup-mipsel: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "must run as root (apt-get, the cache in $CACHE)"; exit 1; }

# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"

# --- 1. host packages and the mipsel architecture ------------------------------------------------
apt_install_missing "${HOST_PACKAGES[@]}"
if ! dpkg --print-foreign-architectures | grep -qx mipsel; then
    log "dpkg --add-architecture mipsel"
    dpkg --add-architecture mipsel
    apt_update_once
fi

# --- 2. the key: this script and the versions apt resolves -------------------------------------------
# The kernel metapackage's dependency names the current ABI (linux-image-6.1.0-NN-4kc-malta).
kernel_pkg() { apt-cache depends "$KERNEL_META" 2>/dev/null \
                   | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1; }
kpkg=$(kernel_pkg || true)
if [[ -z $kpkg ]]; then
    apt_update_once
    kpkg=$(kernel_pkg)
fi
[[ -n $kpkg ]] || { log "cannot resolve the package $KERNEL_META depends on"; exit 1; }
kpkg="${kpkg%:mipsel}:mipsel"
debs=("$kpkg")
for pkg in "${ROOT_DEBS[@]}" "${DEV_DEBS[@]}"; do debs+=("$pkg:mipsel"); done
# pkg:mipsel=version, one a line, in one apt-cache call (each call takes a second or two).
candidates() { apt-cache policy "${debs[@]}" 2>/dev/null \
                   | awk '/^[^ ]/ { pkg = substr($1, 1, length($1) - 1) }
                          /^ *Candidate:/ && $2 != "(none)" { print pkg "=" $2 }'; }
versions=$(candidates)
if [[ $(wc -l <<<"$versions") -ne ${#debs[@]} ]]; then
    apt_update_once
    versions=$(candidates)
    [[ $(wc -l <<<"$versions") -eq ${#debs[@]} ]] \
        || { log "apt has no candidate for some of: ${debs[*]}"; exit 1; }
fi
key=$( (cat "$0"; echo "$versions") | sha256sum | cut -c1-16)
ENTRY="$CACHE/$key"

# --- 3. fetch and unpack --------------------------------------------------------------------------
if [[ ! -f $ENTRY/KERNEL_VERSION ]]; then
    mkdir -p "$CACHE"
    rm -rf "$ENTRY"
    work=$(mktemp -d "$CACHE/download.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # apt-get download drops privileges to _apt, which must be able to write the target dir.
    chmod 0777 "$work"
    log "downloading $(wc -l <<<"$versions") mipsel packages"
    mapfile -t pinned <<<"$versions"
    (cd "$work" && apt-get download -qq "${pinned[@]}")
    mkdir -p "$work/entry"
    dpkg-deb -x "$work"/linux-image-*.deb "$work/entry/kernel"
    for pkg in "${ROOT_DEBS[@]}"; do dpkg-deb -x "$work/${pkg}"_*.deb "$work/entry/root"; done
    for pkg in "${DEV_DEBS[@]}"; do dpkg-deb -x "$work/${pkg}"_*.deb "$work/entry/dev"; done

    kver=$(ls "$work/entry/kernel/lib/modules")
    [[ -f $work/entry/kernel/boot/vmlinuz-$kver ]] || { log "no vmlinuz-$kver in $kpkg"; exit 1; }
    # The package ships without modules.dep.
    depmod -b "$work/entry/kernel" "$kver"

    root="$work/entry/root"
    mkdir -p "$root"/{dev,proc,sys,tmp,root,sbin,usr/sbin}
    chmod 1777 "$root/tmp"
    ln -s python3.11 "$root/usr/bin/python3"
    # The shell the guest's job starts in; it links the other applets (tests/mipsel_vm.py).
    ln -s busybox "$root/bin/sh"
    # Debian's python3.11 finds its own standard library and the dist-packages of python3's
    # site module, where _cffi_backend is.
    # Byte-compile as Debian's postinst would: the guest's python never writes to this root, and
    # compiling the standard library under TCG on every boot would cost minutes. The host's
    # python3.11 writes the same bytecode format; -s/-p keep the guest's paths. -x: the test
    # data of lib2to3 and test/ hold files that are not Python 3 on purpose.
    python3.11 -m compileall -q -j 1 -x '/(test|tests)/' -s "$root" -p / \
        "$root/usr/lib/python3.11" "$root/usr/lib/python3/dist-packages" >/dev/null

    echo "$kver" > "$work/entry/KERNEL_VERSION"
    mv "$work/entry" "$ENTRY"
fi

# --- 4. switch current to this entry, drop older ones ------------------------------------------
ln -sfn "$key" "$CACHE/current.tmp"
mv -T "$CACHE/current.tmp" "$CACHE/current"
for old in "$CACHE"/*; do
    name=$(basename "$old")
    # Not current (a link: rm -rf through it would empty this entry) nor the bindings, which
    # tests/mipsel_vm.py keys and prunes itself.
    [[ $name == "$key" || $name == current || $name == abi-* ]] || rm -rf "$old"
done

# --- 5. the bindings of this checkout ----------------------------------------------------------------
if [[ -x $PY ]]; then
    abi=$(cd "$HERE/tests" && SNAPSHOT_MIPSEL_CACHE="$CACHE" "$PY" mipsel_vm.py "$HERE")
    log "bindings: $abi"
else
    log "no $PY: the tests cross-build the bindings when they first run"
fi
log "ready: $ENTRY (kernel $(cat "$ENTRY/KERNEL_VERSION"))"
