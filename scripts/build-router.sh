#!/usr/bin/env bash
# Build the real-router tier's OpenWrt root from the pinned sources (../shared/openwrt-src,
# SOURCES.md; the recipe: ../shared/reference/real-router.md), for one of two CPUs:
#   ARCH=x86_64 (the default): the kernel tier's Debian kernel, everything built for the host;
#   ARCH=mipsel: Debian's malta kernel (scripts/setup-mipsel.sh, run from here) under
#     qemu-system-mipsel, the CPU family of MT7621 and many other routers; everything below
#     is cross-built with mipsel-linux-gnu-gcc, Python is Debian's mipsel build, and the
#     project's cffi bindings are cross-built for it (tests/mipsel_vm.py), and so is apk
#     (step 6c). LuCI is left out: the browser tier runs on x86_64.
#   - musl, then json-c, libubox, ubus, uci, ucode, udebug, procd, ubox, uhttpd, rpcd,
#     libnl-tiny, netifd, usign, jsonfilter and fstools against it;
#   - busybox with OpenWrt's default applets (Config-defaults.in) and its patches, which add
#     the `lock` applet /etc/preinit, rc.common and procd.sh call (Debian's busybox has
#     neither `lock` nor `flock`);
#   - OpenWrt's base-files and the packages' files/, installed as their Makefiles do;
#   - Debian's python3.11, reduced to what OpenWrt's python3-light and the feed package's
#     DEPENDS ship (tests/openwrt_python.py says which module is in which package);
#   - the project, installed by the feed Makefile's own recipes (tests/openwrt_package/
#     harness.mk), so a file the Makefile stops installing is missing here too;
#   - LuCI (for the browser tier, x86_64): rpcd-mod-luci, lucihttp, luci-base,
#     ucode-mod-html and the bootstrap theme, with luci-app-snapshot laid out as luci.mk lays out an app;
#   - a small initramfs that does the kernel's part: it loads the drivers a router has
#     built in (virtio, squashfs, MTD with block2mtd naming the flash rootfs_data, jffs2,
#     overlay), mounts the squashfs root and hands over to procd.
#
# Run as root (apt-get, the caches). Needs scripts/install.sh's .venv (it builds the
# package's Python modules) and the CPU's kernel (scripts/setup-kernel-tier.sh or
# scripts/setup-mipsel.sh, run from here).
#
# Cached per CPU in $CACHE/$ARCH, in steps, each keyed by a hash of its inputs, so a warm
# run takes seconds:
#   $CACHE/tools-KEY/  the musl userland and busybox (KEY: the tarballs and this script's
#                      build functions); about 10 minutes cold on two cores
#   $CACHE/luci-KEY/   LuCI's packages built against the tools (KEY: the tools' key, the
#                      LuCI tarballs and its build functions); about a minute cold
#   $CACHE/apk-KEY/    apk cross-built, on a CPU other than the host's (KEY: the apk-tools
#                      tarball, its build functions and the Debian packages it builds
#                      against); about half a minute cold
#   $CACHE/root-KEY/   root.squashfs, initramfs.cpio, KERNEL (the kernel image's path), ARCH
#                      and READY, written last (KEY: the tools' and LuCI's keys, this
#                      script, apk's binaries, the project files installed, the Debian
#                      packages and the kernel)
# The last line on stdout is the root directory. Older entries are removed.
#
# Env: ARCH (x86_64 or mipsel), SNAPSHOT_ROUTER_CACHE (default /var/cache/snapshot-router),
# SNAPSHOT_OPENWRT_SRC (default ../shared/openwrt-src beside the checkout), SNAPSHOT_VM_CACHE
# (the kernel tier's), SNAPSHOT_MIPSEL_CACHE (scripts/setup-mipsel.sh's),
# SNAPSHOT_OPENWRT_TOOLS (scripts/setup-openwrt-tools.sh's: the host's apk, and the root's
# on x86_64).
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPT="$HERE/scripts/build-router.sh"
ARCH="${ARCH:-x86_64}"
CACHE="${SNAPSHOT_ROUTER_CACHE:-/var/cache/snapshot-router}/$ARCH"
SRC="${SNAPSHOT_OPENWRT_SRC:-$HERE/../shared/openwrt-src}"
VM_CACHE="${SNAPSHOT_VM_CACHE:-/var/cache/snapshot-kernel-vm}"
MIPSEL_CACHE="${SNAPSHOT_MIPSEL_CACHE:-/var/cache/snapshot-mipsel}"
# The interpreter that builds the package's Python modules (harness.mk's HOST_PYTHON3_BIN).
PY="${SNAPSHOT_BUILD_PYTHON:-$HERE/.venv/bin/python}"
# The machines here have two cores, shared.
JOBS=2
PACKAGES=(gcc make cmake patch pkg-config linux-libc-dev squashfs-tools cpio kmod)
# Debian's Python and the libraries it and the kept extension modules link.
# Debian's interpreter has pyexpat built in, hence libexpat.
PYTHON_DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g
             libexpat1 liblzma5 libbz2-1.0 libffi8)
# apk's (the root's step 6c).
PYTHON_DEBS+=(libssl3 libzstd1)
# What apk is cross-built against on a CPU other than the host's (set below): the headers and
# pkg-config files of PYTHON_DEBS' libssl3, libzstd1 and zlib1g.
APK_DEBS=()
# The tarballs, in build order (each links the ones before it).
COMPONENTS=(musl json-c libubox ubus uci ucode udebug procd ubox uhttpd rpcd libnl-tiny
            netifd usign jsonpath fstools busybox openwrt-busybox openwrt-files)

log() { echo "build-router: $*" >&2; }

# shellcheck source=scripts/apk-tools.sh
source "$HERE/scripts/apk-tools.sh"

# What differs between the CPUs: Debian's architecture and triplet, the compiler musl wraps
# and the binutils prefix, where the kernel's UAPI headers are (asm is per architecture),
# and the names base-files' version placeholders take (OpenWrt's target, package
# architecture and board).
case "$ARCH" in
x86_64)
    DEB_ARCH=amd64 TRIPLET=x86_64-linux-gnu CROSS=""
    UAPI=/usr/include UAPI_ASM=/usr/include/x86_64-linux-gnu/asm
    OPENWRT_TARGET=x86/64 OPENWRT_ARCH=x86_64 BOARD=x86 ;;
mipsel)
    DEB_ARCH=mipsel TRIPLET=mipsel-linux-gnu CROSS=mipsel-linux-gnu-
    UAPI=/usr/mipsel-linux-gnu/include UAPI_ASM=/usr/mipsel-linux-gnu/include/asm
    OPENWRT_TARGET=malta/le OPENWRT_ARCH=mipsel_24kc BOARD=malta
    # meson's names of the CPU, for apk's cross file.
    MESON_CPU=mips MESON_ENDIAN=little
    # The cross compiler and the mipsel UAPI headers (<mtd/mtd-user.h>); meson for apk.
    PACKAGES+=(gcc-mipsel-linux-gnu libc6-dev-mipsel-cross meson ninja-build)
    APK_DEBS=(libssl-dev libzstd-dev zlib1g-dev)
    # OpenSSL's libcrypto links libatomic on 32-bit MIPS (for its 64-bit atomics).
    PYTHON_DEBS+=(libatomic1) ;;
*)
    log "ARCH must be x86_64 or mipsel, not $ARCH"; exit 1 ;;
esac

[[ $(id -u) -eq 0 ]] || { log "must run as root (apt-get, the cache in $CACHE)"; exit 1; }
[[ -x $PY ]] || { log "no $PY: run scripts/install.sh first"; exit 1; }
SRC="$(cd "$SRC" 2>/dev/null && pwd)" || { log "no pinned sources in $SRC"; exit 1; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
        || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The kernel: KVER its module directory's name, KROOT the tree holding lib/modules/KVER,
# KERNEL_IMAGE what qemu's -kernel takes.
# The host's apk, which makes the root's apk database (step 6c) on either CPU.
OPENWRT_TOOLS="${SNAPSHOT_OPENWRT_TOOLS:-/var/cache/snapshot-openwrt-tools}"
SNAPSHOT_OPENWRT_TOOLS="$OPENWRT_TOOLS" bash "$HERE/scripts/setup-openwrt-tools.sh" >&2
if [[ $ARCH == x86_64 ]]; then
    bash "$HERE/scripts/setup-kernel-tier.sh" >&2
    KVER="$(cat "$VM_CACHE/KERNEL_VERSION")"
    KROOT="$VM_CACHE/root"
    KERNEL_IMAGE="$VM_CACHE/vmlinux"
else
    # Also Debian's mipsel busybox-static (the initramfs's) and _cffi_backend, and the
    # project's bindings cross-built (ABI, a directory of .so files).
    SNAPSHOT_MIPSEL_CACHE="$MIPSEL_CACHE" bash "$HERE/scripts/setup-mipsel.sh" >&2
    MIPSEL_ENTRY="$(readlink -f "$MIPSEL_CACHE/current")"
    KVER="$(cat "$MIPSEL_ENTRY/KERNEL_VERSION")"
    KROOT="$MIPSEL_ENTRY/kernel"
    KERNEL_IMAGE="$KROOT/boot/vmlinuz-$KVER"
    ABI="$(cd "$HERE/tests" && SNAPSHOT_MIPSEL_CACHE="$MIPSEL_CACHE" "$PY" mipsel_vm.py "$HERE")"
fi

tarball() {
    local found
    found=$(ls "$SRC/$1"-[0-9a-f]*.tar.gz 2>/dev/null | head -n1)
    [[ -n $found ]] || { log "no $1 tarball in $SRC"; exit 1; }
    echo "$found"
}

# run LOG CMD...: quiet unless it fails, then the log's tail.
run() {
    local logfile="$1"; shift
    "$@" >>"$logfile" 2>&1 || { log "failed: $*"; tail -n 40 "$logfile" >&2; return 1; }
}

# --- the tools: musl and everything built against it -------------------------------------

# Every build below runs in $B (sources), installs into $STAGE (the root's /usr and /lib
# as OpenWrt lays them out) and compiles with $CC, musl-gcc plus the kernel's UAPI headers.
musl_toolchain() {
    local loader
    tar -xzf "$(tarball musl)" -C "$B"
    (cd "$B/musl" && run "$B/musl.log" ./configure --prefix="$M" --syslibdir="$M/lib" \
        CC="${CROSS}gcc" CROSS_COMPILE="$CROSS" &&
        run "$B/musl.log" make -j"$JOBS" && run "$B/musl.log" make install)
    # Programs name the router's loader, not the private prefix's.
    sed -i "s,-dynamic-linker $M/lib/,-dynamic-linker /lib/," "$M/lib/musl-gcc.specs"
    # musl-gcc passes -nostdinc: the kernel headers fstools, procd and netifd include are
    # reached through their own directory. A wrapper, not CFLAGS: netifd's generator runs
    # $CC -E without flags.
    mkdir -p "$M/uapi"
    for d in linux asm-generic mtd; do ln -sfn "$UAPI/$d" "$M/uapi/$d"; done
    ln -sfn "$UAPI_ASM" "$M/uapi/asm"
    printf '#!/bin/sh\nexec %s -isystem %s "$@"\n' "$M/bin/musl-gcc" "$M/uapi" >"$CC"
    chmod +x "$CC"
    # No library or header of the host's may reach a musl build.
    cat >"$B/toolchain.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR $ARCH)
set(CMAKE_C_COMPILER $CC)
set(CMAKE_AR $(command -v "${CROSS}ar"))
set(CMAKE_RANLIB $(command -v "${CROSS}ranlib"))
set(CMAKE_FIND_ROOT_PATH $STAGE)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(CMAKE_C_FLAGS_INIT "-I$STAGE/usr/include")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-L$STAGE/usr/lib -Wl,-rpath-link,$STAGE/usr/lib")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "-L$STAGE/usr/lib -Wl,-rpath-link,$STAGE/usr/lib")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-L$STAGE/usr/lib -Wl,-rpath-link,$STAGE/usr/lib")
EOF
    mkdir -p "$STAGE/lib" "$STAGE/usr/lib"
    cp "$M/lib/libc.so" "$STAGE/lib/libc.so"
    # The loader's name is the architecture's (ld-musl-x86_64.so.1, ld-musl-mipsel.so.1).
    loader="$(grep -o 'ld-musl-[^ ]*\.so\.1' "$M/lib/musl-gcc.specs" | head -n1)"
    ln -sf libc.so "$STAGE/lib/$loader"
}

# cmake_component NAME [CFLAGS] [cmake options...]: configure, build and install into
# $STAGE. Extra flags go through CFLAGS, which CMake adds to the toolchain file's.
cmake_component() {
    local name="$1" cflags="$2"; shift 2
    local dir="$B/$name"
    tar -xzf "$(tarball "$name")" -C "$B"
    CFLAGS="$cflags" run "$B/$name.log" cmake -S "$dir" -B "$dir/_build" \
        -DCMAKE_TOOLCHAIN_FILE="$B/toolchain.cmake" -DCMAKE_INSTALL_PREFIX=/usr "$@"
    run "$B/$name.log" make -C "$dir/_build" -j"$JOBS"
    run "$B/$name.log" make -C "$dir/_build" install DESTDIR="$STAGE"
}

# An in-source build (generators that use source-relative paths), not installed.
cmake_in_source() {
    local name="$1" cflags="$2"; shift 2
    tar -xzf "$(tarball "$name")" -C "$B"
    (cd "$B/$name" && CFLAGS="$cflags" run "$B/$name.log" cmake . \
        -DCMAKE_TOOLCHAIN_FILE="$B/toolchain.cmake" -DCMAKE_INSTALL_PREFIX=/usr "$@")
}

openwrt_userland() {
    cmake_component json-c "" -DBUILD_SHARED_LIBS=ON -DBUILD_STATIC_LIBS=OFF \
        -DBUILD_TESTING=OFF -DBUILD_APPS=OFF -DDISABLE_WERROR=ON
    cmake_component libubox "" -DBUILD_LUA=OFF -DBUILD_EXAMPLES=OFF -DUNIT_TESTING=OFF
    cmake_component ubus "" -DBUILD_LUA=OFF -DBUILD_EXAMPLES=OFF -DUNIT_TESTING=OFF
    cmake_component uci "" -DBUILD_LUA=OFF
    cmake_component ucode "" -DUCI_SUPPORT=ON -DUBUS_SUPPORT=ON -DULOOP_SUPPORT=ON \
        -DNL80211_SUPPORT=OFF -DRTNL_SUPPORT=OFF -DDIGEST_SUPPORT=OFF -DZLIB_SUPPORT=OFF
    cmake_component udebug ""
    # GCC 12 warnings that procd's and uhttpd's -Werror would stop at.
    cmake_component procd -Wno-error=format-overflow -DSECCOMP_SUPPORT=OFF \
        -DJAIL_SUPPORT=OFF -DUTRACE_SUPPORT=OFF
    cmake_component ubox ""
    cmake_component uhttpd -Wno-error=stringop-overread -DLUA_SUPPORT=OFF -DTLS_SUPPORT=OFF \
        -DUBUS_SUPPORT=ON -DUCODE_SUPPORT=ON
    cmake_component rpcd "" -DFILE_SUPPORT=ON -DRPCSYS_SUPPORT=ON -DUCODE_SUPPORT=ON \
        -DIWINFO_SUPPORT=OFF
    cmake_component libnl-tiny ""
    cmake_in_source netifd "-I$STAGE/usr/include/libnl-tiny" \
        -DLIBNL_LIBS="$STAGE/usr/lib/libnl-tiny.so"
    run "$B/netifd.log" make -C "$B/netifd" -j"$JOBS"
    install -D -m 0755 "$B/netifd/netifd" "$STAGE/usr/sbin/netifd"
    cmake_component usign ""
    cmake_in_source jsonpath ""
    run "$B/jsonpath.log" make -C "$B/jsonpath" -j"$JOBS"
    install -D -m 0755 "$B/jsonpath/jsonpath" "$STAGE/usr/bin/jsonfilter"
    # Only what the router runs: `make install` would build `block`, which wants libblkid.
    tar -xzf "$(tarball fstools)" -C "$B"
    run "$B/fstools.log" cmake -S "$B/fstools" -B "$B/fstools/_build" \
        -DCMAKE_TOOLCHAIN_FILE="$B/toolchain.cmake" -DCMAKE_INSTALL_PREFIX=/usr
    run "$B/fstools.log" make -C "$B/fstools/_build" -j"$JOBS" mount_root factoryreset
    install -m 0755 "$B/fstools/_build/mount_root" "$B/fstools/_build/factoryreset" \
        "$STAGE/usr/sbin/"
    cp -a "$B"/fstools/_build/libfstools.so* "$STAGE/usr/lib/"
}

# OpenWrt's busybox: its default configuration, converted as its Makefile's Build/Configure
# does (CONFIG_BUSYBOX_DEFAULT_X -> CONFIG_X; this target has IPv6), and its patches that
# apply to 1.36.1. The first four fix code of 1.37.0 that 1.36.1 does not have.
openwrt_busybox() {
    local pkg="$B/openwrt-busybox/package/utils/busybox" bb="$B/busybox" p
    tar -xzf "$(tarball openwrt-busybox)" -C "$B"
    tar -xzf "$(tarball busybox)" -C "$B"
    for p in "$pkg"/patches/*.patch; do
        case "$(basename "$p")" in
        001-*|002-*|003-*|100-*) continue ;;
        esac
        run "$B/busybox.log" patch -d "$bb" -p1 -i "$p"
    done
    awk '
        /^config BUSYBOX_DEFAULT_/ { name = substr($2, 17); type = ""; done = 0; next }
        /^\t(bool|string|int|hex)$/ { type = $1; next }
        /^\tdefault / && name != "" && !done {
            value = $0; sub(/^\tdefault /, "", value)
            if (value ~ / if /) {
                if (value !~ / if IPV6$/) next
                sub(/ if IPV6$/, "", value)
            }
            done = 1
            if (type == "bool")
                print (value == "y" ? "CONFIG_" name "=y" : "# CONFIG_" name " is not set")
            else
                print "CONFIG_" name "=" value
        }' "$pkg/Config-defaults.in" >"$bb/.config"
    # Options 1.37.0 does not know are dropped, and new ones of 1.36.1 answered no, as the
    # Makefile's `yes n | make oldconfig` does.
    # CROSS_COMPILE: the target's binutils (ar, strip); its host tools stay the host's.
    run "$B/busybox.log" sh -c 'cd "$1" && yes n | make CC="$2" CROSS_COMPILE="$3" oldconfig' \
        - "$bb" "$CC" "$CROSS"
    run "$B/busybox.log" make -C "$bb" -j"$JOBS" CC="$CC" CROSS_COMPILE="$CROSS"
    run "$B/busybox.log" make -C "$bb" CC="$CC" CROSS_COMPILE="$CROSS" CONFIG_PREFIX="$STAGE" \
        install
}

build_tools() {
    M="$B/musl-prefix"
    CC="$B/cc"
    musl_toolchain
    export PKG_CONFIG_LIBDIR="$STAGE/usr/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$STAGE"
    openwrt_userland
    openwrt_busybox
}

tools_key() {
    local c
    {
        echo "$ARCH"
        for c in "${COMPONENTS[@]}"; do sha256sum "$(tarball "$c")" | cut -d' ' -f1; done
        declare -f musl_toolchain cmake_component cmake_in_source openwrt_userland \
            openwrt_busybox build_tools
    } | sha256sum | cut -c1-16
}

TOOLS_KEY="$(tools_key)"
TOOLS="$CACHE/tools-$TOOLS_KEY"
mkdir -p "$CACHE"
if [[ ! -f "$TOOLS/READY" ]]; then
    log "building the musl userland into $TOOLS (about 10 minutes)"
    started=$SECONDS
    rm -rf "$TOOLS" "$TOOLS.tmp"
    B="$TOOLS.tmp/build"
    STAGE="$TOOLS.tmp/stage"
    mkdir -p "$B" "$STAGE"
    build_tools
    rm -rf "$B"
    echo "built in $((SECONDS - started)) s" >"$TOOLS.tmp/READY"
    mv "$TOOLS.tmp" "$TOOLS"
    log "tools built in $((SECONDS - started)) s"
fi

# --- LuCI: the router's web interface (the browser tier) ---------------------------------

# LuCI as the luci feed's packages install it, built against the tools' stage: rpcd-mod-luci
# (rpcd's `luci` object), lucihttp's ucode module, luci-base (its htdocs, root and ucode
# trees, core.so, version.uc), ucode-mod-html and the bootstrap theme. rpcd's ucode plugin
# and uhttpd's /ubus and ucode handlers are the tools' own (built with UCODE_SUPPORT).
# Cached apart from the tools, in $CACHE/luci-KEY/stage (KEY: the tools' key, the tarballs
# and these functions), so that the tools are not rebuilt for it.
LUCI_COMPONENTS=(musl luci-subset lucihttp iwinfo rpcd)
LUCI_VERSION=bf48c560a783
LUCI_GITBRANCH=master

# luci_tree SRCDIR: a luci.mk package's trees where luci.mk puts them.
luci_tree() {
    [[ -d $1/htdocs ]] && cp -a "$1/htdocs/." "$LUCI_OUT/www/"
    [[ -d $1/root ]] && cp -a "$1/root/." "$LUCI_OUT/"
    [[ -d $1/ucode ]] && cp -a "$1/ucode/." "$LUCI_OUT/usr/share/ucode/luci/"
    return 0
}

build_luci() {
    local luci="$B/luci-subset" sub
    M="$B/musl-prefix"
    CC="$B/cc"
    # The compiler again (the tools' build directory is gone), against a copy of their
    # stage: headers and libraries are found there, LuCI is installed into $LUCI_OUT.
    cp -a "$TOOLS/stage" "$B/sysroot"
    STAGE="$B/sysroot"
    musl_toolchain
    mkdir -p "$LUCI_OUT/www" "$LUCI_OUT/usr/share/ucode/luci" "$LUCI_OUT/usr/lib/ucode" \
        "$LUCI_OUT/usr/lib/rpcd"
    tar -xzf "$(tarball luci-subset)" -C "$B"
    tar -xzf "$(tarball iwinfo)" -C "$B"
    tar -xzf "$(tarball rpcd)" -C "$B"
    sub="$luci/libs/rpcd-mod-luci/src"
    CFLAGS="-I$B/iwinfo/include -I$B/rpcd/include -I$STAGE/usr/include/libnl-tiny" \
        run "$B/luci.log" cmake -S "$sub" -B "$sub/_build" \
        -DCMAKE_TOOLCHAIN_FILE="$B/toolchain.cmake" -DCMAKE_INSTALL_PREFIX=/usr \
        -DLIBNL_LIBS=-lnl-tiny
    run "$B/luci.log" make -C "$sub/_build" -j"$JOBS"
    install -m 0755 "$sub/_build/luci.so" "$LUCI_OUT/usr/lib/rpcd/luci.so"
    tar -xzf "$(tarball lucihttp)" -C "$B"
    run "$B/luci.log" cmake -S "$B/lucihttp" -B "$B/lucihttp/_build" \
        -DCMAKE_TOOLCHAIN_FILE="$B/toolchain.cmake" -DCMAKE_INSTALL_PREFIX=/usr \
        -DBUILD_LUA=OFF -DBUILD_UCODE=ON -DBUILD_TESTS=OFF
    run "$B/luci.log" make -C "$B/lucihttp/_build" -j"$JOBS"
    run "$B/luci.log" make -C "$B/lucihttp/_build" install DESTDIR="$LUCI_OUT"
    rm -rf "$LUCI_OUT/usr/include"
    # core.so links -lcrypt, which musl's libc provides.
    run "$B/luci.log" make -C "$luci/modules/luci-base/src" compile install CC="$CC" \
        CFLAGS="-Os -I$STAGE/usr/include" FPIC=-fPIC LUCI_VERSION="$LUCI_VERSION" \
        LUCI_GITBRANCH="$LUCI_GITBRANCH" DESTDIR="$LUCI_OUT"
    run "$B/luci.log" "$CC" -Os -fPIC -shared -I"$STAGE/usr/include" \
        -o "$LUCI_OUT/usr/lib/ucode/html.so" "$luci/contrib/package/ucode-mod-html/src/html.c"
    luci_tree "$luci/modules/luci-base"
    luci_tree "$luci/themes/luci-theme-bootstrap"
}

luci_key() {
    local c
    {
        echo "$TOOLS_KEY $LUCI_VERSION $LUCI_GITBRANCH"
        for c in "${LUCI_COMPONENTS[@]}"; do sha256sum "$(tarball "$c")" | cut -d' ' -f1; done
        declare -f musl_toolchain luci_tree build_luci
    } | sha256sum | cut -c1-16
}

# The browser tier runs on x86_64 only: no LuCI for the other CPU (LUCI_KEY empty).
LUCI_KEY=""
if [[ $ARCH == x86_64 ]]; then
    LUCI_KEY="$(luci_key)"
    LUCI="$CACHE/luci-$LUCI_KEY"
fi
if [[ -n $LUCI_KEY && ! -f "$LUCI/READY" ]]; then
    log "building LuCI into $LUCI"
    started=$SECONDS
    rm -rf "$LUCI" "$LUCI.tmp"
    B="$LUCI.tmp/build"
    LUCI_OUT="$LUCI.tmp/stage"
    mkdir -p "$B" "$LUCI_OUT"
    build_luci
    rm -rf "$B"
    echo "built in $((SECONDS - started)) s" >"$LUCI.tmp/READY"
    mv "$LUCI.tmp" "$LUCI"
    log "LuCI built in $((SECONDS - started)) s"
fi

# --- the root -----------------------------------------------------------------------------

# The versions apt would download, in one call (apt-cache takes seconds to start).
declare -A DEB_VERSION
deb_versions() {
    local field value pkg=""
    while read -r field value; do
        case "$field" in
        Package:) pkg="$value" ;;
        Version:) DEB_VERSION[$pkg]="$value" ;;
        esac
    done < <(apt-cache show --no-all-versions "${DEBS_USED[@]/%/:$DEB_ARCH}" 2>/dev/null)
    for pkg in "${DEBS_USED[@]}"; do [[ -n ${DEB_VERSION[$pkg]:-} ]] || return 1; done
}
DEBS_USED=("${PYTHON_DEBS[@]}" "${APK_DEBS[@]}")
if ! deb_versions; then
    apt-get update -qq
    deb_versions || { log "apt knows not all of ${DEBS_USED[*]}"; exit 1; }
fi

# deb_file PKG: the path of PKG's package for the CPU, of the version above, downloaded once.
DEBS="$CACHE/debs"
mkdir -p "$DEBS"
# apt-get download drops privileges to _apt, which must be able to write there.
chmod 0777 "$DEBS"
deb_file() {
    local deb="$DEBS/${1}_${DEB_VERSION[$1]//:/%3a}_$DEB_ARCH.deb"
    [[ -f $deb ]] || (cd "$DEBS" && apt-get download -qq "$1:$DEB_ARCH=${DEB_VERSION[$1]}" >&2)
    echo "$deb"
}

# --- apk: the host's on x86_64, cross-built on another CPU --------------------------------

# The pinned apk-tools built as the host's (scripts/apk-tools.sh) by the cross compiler,
# against Debian's OpenSSL, zstd and zlib for the CPU: their packages, of the versions the
# root holds, unpacked into a sysroot of the build's own (no package of another CPU is
# installed on the host). The compiler's entry in the cross file carries that sysroot's
# paths: arch-specific headers (opensslconf.h), and libraries to link and to resolve
# libssl's own dependencies from.
build_apk() {
    local sysroot="$B/sysroot" lib="$B/sysroot/usr/lib/$TRIPLET" pkg
    for pkg in "${APK_DEBS[@]}" libssl3 libzstd1 zlib1g; do
        dpkg-deb -x "$(deb_file "$pkg")" "$sysroot"
    done
    cat >"$B/cross.ini" <<EOF
[binaries]
c = ['${CROSS}gcc', '-I$sysroot/usr/include/$TRIPLET', '-L$lib',
     '-Wl,-rpath-link,$lib:$sysroot/lib/$TRIPLET']
ar = '${CROSS}ar'
strip = '${CROSS}strip'
pkgconfig = 'pkg-config'

[properties]
sys_root = '$sysroot'
pkg_config_libdir = '$lib/pkgconfig:$sysroot/usr/share/pkgconfig'

[host_machine]
system = 'linux'
cpu_family = '$MESON_CPU'
cpu = '$MESON_CPU'
endian = '$MESON_ENDIAN'
EOF
    tar -xzf "$(tarball apk-tools)" -C "$B"
    apk_tools_build "$B/apk-tools" "$APK_OUT" --cross-file "$B/cross.ini"
}

apk_key() {
    local pkg
    {
        echo "$ARCH"
        sha256sum "$(tarball apk-tools)" | cut -d' ' -f1
        for pkg in "${APK_DEBS[@]}" libssl3 libzstd1 zlib1g; do
            echo "$pkg=${DEB_VERSION[$pkg]}"
        done
        declare -f apk_tools_build build_apk
    } | sha256sum | cut -c1-16
}

# APK: the prefix whose bin/apk and lib/libapk.so* the root takes (APK_KEY empty: no step).
APK_KEY=""
if [[ $ARCH == x86_64 ]]; then
    APK="$OPENWRT_TOOLS"
else
    APK_KEY="$(apk_key)"
    APK="$CACHE/apk-$APK_KEY"
    if [[ ! -f "$APK/READY" ]]; then
        log "cross-building apk into $APK"
        started=$SECONDS
        rm -rf "$APK" "$APK.tmp"
        B="$APK.tmp/build"
        APK_OUT="$APK.tmp"
        mkdir -p "$B"
        build_apk
        rm -rf "$B"
        echo "built in $((SECONDS - started)) s" >"$APK.tmp/READY"
        mv "$APK.tmp" "$APK"
        log "apk built in $((SECONDS - started)) s"
    fi
fi

# The project's files the feed Makefile installs (its SNAPSHOT_SOURCE_FILES and files/),
# the harness that runs its recipes, and the Python module table.
PROJECT_FILES=(setup.py pyproject.toml snapshot mtd initscripts openwrt-package
               tests/openwrt_package tests/openwrt_python.py)

root_key() {
    {
        echo "$ARCH $TOOLS_KEY $LUCI_KEY $KVER"
        sha256sum "$SCRIPT" "$KERNEL_IMAGE" | cut -d' ' -f1
        sha256sum "$APK/bin/apk" "$APK"/lib/libapk.so.* | cut -d' ' -f1
        if [[ $ARCH != x86_64 ]]; then
            # The bindings' directory is named by their inputs' hash; setup-mipsel.sh's entry
            # by its packages' versions (the backend, busybox).
            echo "$ABI $MIPSEL_ENTRY"
        fi
        for pkg in "${PYTHON_DEBS[@]}"; do echo "$pkg=${DEB_VERSION[$pkg]}"; done
        (cd "$HERE" && find "${PROJECT_FILES[@]}" -type f ! -name '*.so' ! -name '*.pyc' \
            ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | sort -z \
            | xargs -0 sha256sum)
        "$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import package_stage
from importlib.metadata import version
for name in package_stage.STAND_INS: print(name, version(name.removeprefix("python3-")))' \
            "$HERE/tests"
    } | sha256sum | cut -c1-16
}

ROOT_KEY="$(root_key)"
ROOT="$CACHE/root-$ROOT_KEY"
if [[ -f "$ROOT/READY" ]]; then
    touch "$ROOT"
    echo "$ROOT"
    exit 0
fi

log "assembling the root into $ROOT"
started=$SECONDS
rm -rf "$ROOT.tmp"
W="$ROOT.tmp/work"
R="$W/tree"
mkdir -p "$W"

# 1. The musl userland, without what only a build reads, its programs where OpenWrt's
#    packages put them (its libraries stay in /usr/lib, on musl's default path).
cp -a "$TOOLS/stage" "$R"
rm -rf "$R/usr/include" "$R/usr/lib/pkgconfig" "$R/usr/lib/cmake" "$R/usr/share/cmake"*
find "$R" -name '*.a' -delete
for prog in "$R"/usr/sbin/*; do
    [[ -L $prog ]] || mv -f "$prog" "$R/sbin/"
done
mv -f "$R/usr/bin/uhttpd" "$R/usr/sbin/uhttpd"
mv -f "$R/usr/bin/ubus" "$R/bin/ubus"
mv -f "$R/usr/bin/uci" "$R/sbin/uci"
# procd preloads it, by this path, into services that log their output.
mv "$R/usr/lib/libsetlbf.so" "$R/lib/libsetlbf.so"
for tool in insmod rmmod lsmod modinfo modprobe; do ln -sfn kmodloader "$R/sbin/$tool"; done

# 2. base-files, as its Makefile installs it.
tar -xzf "$(tarball openwrt-files)" -C "$W"
FILES="$W/openwrt-files/package"
cp -a "$FILES/base-files/files/." "$R/"
sed -i 's,%PATH%,/usr/sbin:/usr/bin:/sbin:/bin,g' "$R/etc/preinit" "$R/etc/profile" \
    "$R/sbin/hotplug-call"
sed -i -e 's,%D,OpenWrt,g' -e 's,%N,OpenWrt,g' -e 's,%V,SNAPSHOT,g' -e 's,%v,SNAPSHOT,g' \
    -e 's,%C,snapshot-tier,g' -e 's,%R,r0-caef0a839a80,g' -e "s,%S,$OPENWRT_TARGET,g" \
    -e "s,%A,$OPENWRT_ARCH,g" -e 's,%t,,g' -e "s,%T,$BOARD,g" -e 's,%M,,g' -e 's,%P,,g' \
    -e 's,%h,,g' -e 's,%u,,g' -e 's,%s,,g' -e 's,%c,,g' \
    "$R/etc/openwrt_release" "$R/etc/openwrt_version" "$R/usr/lib/os-release" "$R/etc/banner"
# Failsafe is not offered: it would cost every boot a wait for a key press.
cat >"$R/lib/preinit/00_preinit.conf" <<'EOF'
pi_suppress_stderr="y"
fs_failsafe_wait_timeout=2
pi_init_path="/usr/sbin:/usr/bin:/sbin:/bin"
pi_init_env=""
pi_init_cmd="/sbin/init"
pi_init_suppress_stderr="y"
pi_ifname=""
pi_ip="192.168.1.1"
pi_netmask="255.255.255.0"
pi_broadcast="192.168.1.255"
pi_preinit_net_messages=""
pi_preinit_no_failsafe_netmsg=""
pi_preinit_no_failsafe="y"
EOF
for d in dev proc sys tmp overlay rom mnt www root etc/config etc/rc.d etc/modules.d \
         etc/modules-boot.d; do
    mkdir -p "$R/$d"
done
chmod 1777 "$R/tmp"
ln -sfn tmp "$R/var"
ln -sfn /proc/mounts "$R/etc/mtab"
ln -sfn /tmp/resolv.conf "$R/etc/resolv.conf"
ln -sfn /tmp/TZ "$R/etc/TZ"
ln -sfn /tmp/localtime "$R/etc/localtime"
# x86's inittab (target/linux/x86/base-files): the console is the serial port, ttyS0 on
# malta too.
cat >"$R/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS S boot
::shutdown:/etc/init.d/rcS K shutdown
ttyS0::askfirst:/usr/libexec/login.sh
EOF

# 3. The packages' files/, where their Makefiles install them.
P="$FILES/system"
install -D -m 0644 "$P/procd/files/procd.sh" "$R/lib/functions/procd.sh"
install -m 0644 "$P/procd/files/hotplug.json" "$P/procd/files/hotplug-preinit.json" "$R/etc/"
install -m 0755 "$P/procd/files/reload_config" "$P/procd/files/service" "$R/sbin/"
install -D -m 0755 "$P/ubox/files/log.init" "$R/etc/init.d/log"
install -m 0644 "$P/ubox/files/modules.conf" "$R/etc/modules.conf"
install -m 0755 "$P/rpcd/files/rpcd.init" "$R/etc/init.d/rpcd"
install -m 0644 "$P/rpcd/files/rpcd.config" "$R/etc/config/rpcd"
install -D -m 0644 "$P/rpcd/files/50-migrate-rpcd-ubus-sock.sh" \
    "$R/etc/uci-defaults/50-migrate-rpcd-ubus-sock.sh"
install -D -m 0644 "$P/uci/files/lib/config/uci.sh" "$R/lib/config/uci.sh"
U="$FILES/network/services/uhttpd/files"
install -m 0755 "$U/uhttpd.init" "$R/etc/init.d/uhttpd"
# uhttpd is built without TLS: its stock config's HTTPS listeners would keep the init
# script from starting it.
grep -v 'listen_https' "$U/uhttpd.config" >"$R/etc/config/uhttpd"
install -m 0644 "$U/ubus.default" "$R/etc/uci-defaults/00_uhttpd_ubus"
cp -a "$FILES/network/config/netifd/files/." "$R/"

# 4. Kernel modules the root loads itself (the rest are the initramfs's, built in on a
#    router), flat in /lib/modules/KVER: kmodloader does not recurse.
KMODS="$R/lib/modules/$KVER"
mkdir -p "$KMODS"
for mod in virtio_net bridge; do
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$mod" | while read -r verb path _; do
        [[ $verb == insmod ]] && cp "$path" "$KMODS/"
    done
done
printf 'failover\nnet_failover\nvirtio_net\n' >"$R/etc/modules.d/30-virtio-net"

# 5. Debian's Python and the libraries it needs; glibc beside musl.
for pkg in "${PYTHON_DEBS[@]}"; do
    dpkg-deb -x "$(deb_file "$pkg")" "$R"
done
rm -rf "$R/usr/share/doc" "$R/usr/share/lintian" "$R/usr/share/man" "$R/usr/share/binfmts" \
    "$R/usr/lib/$TRIPLET/gconv" "$R/usr/share/pixmaps" "$R/usr/share/applications"
ln -sfn python3.11 "$R/usr/bin/python3"

# 6. The project, by the feed Makefile's own recipes.
for target in prepare compile install info; do
    run "$W/package.log" make -s -C "$HERE/openwrt-package/snapshot" \
        -f "$HERE/tests/openwrt_package/harness.mk" WORK="$W/package" HOST_PYTHON3_BIN="$PY" \
        "$target"
done
cp -a "$W/package/root/." "$R/"
# Debian's site module reads dist-packages where OpenWrt's reads site-packages.
ln -sfn site-packages "$R/usr/lib/python3.11/dist-packages"
# Python: only what the packages in DEPENDS, and theirs, ship. The feed's click and cffi (and
# pycparser, which python3-cffi depends on) are this venv's.
"$PY" - "$HERE/tests" "$R" "$W/package/info/snapshot.DEPENDS" <<'PY'
import shutil, sys
from importlib.util import find_spec
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import openwrt_python, package_stage

root = Path(sys.argv[2])
packages = openwrt_python.closure({d.lstrip("+") for d in Path(sys.argv[3]).read_text().split()})
stdlib = root / "usr/lib/python3.11"
for path in openwrt_python.beyond(stdlib, packages):
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
for modules in package_stage.STAND_INS.values():
    for module in modules:
        origin = Path(find_spec(module).origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        target = stdlib / "site-packages" / source.name
        shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
PY
# The compiled modules above are the host's: on another CPU, the bindings cross-built for it
# and Debian's _cffi_backend for it take their place, and no other CPU's code is left.
SITE="$R/usr/lib/python3.11/site-packages"
if [[ $ARCH != x86_64 ]]; then
    rm -f "$SITE"/_cffi_backend.*.so "$SITE"/mtd/*.so
    cp "$MIPSEL_ENTRY"/root/usr/lib/python3/dist-packages/_cffi_backend.*.so "$SITE/"
    cp "$ABI"/*.so "$SITE/mtd/"
fi
machine="$(readelf -h "$R/usr/bin/python3.11" | sed -n 's/^ *Machine: *//p')"
while read -r so; do
    [[ "$(readelf -h "$so" | sed -n 's/^ *Machine: *//p')" == "$machine" ]] \
        || { log "$so is not built for $machine"; exit 1; }
done < <(find "$SITE" -name '*.so')

# 6b. sysupgrade on this board. musl's ldd, as OpenWrt's libc package installs it: sysupgrade
#     and its stage2 find the libraries of what they copy into RAM with it. The board's
#     platform.sh (OpenWrt's is per target; x86's writes a disk image): the kernel and the
#     squashfs are read-only virtio disks here, so the image step writes neither, and on
#     rootfs_data it writes what `mtd -j` writes after a NOR board's image (DESIGN.md §11):
#     the image's last word, 0xdeadc0de, at the start of an erased block, or, keeping
#     settings, a jffs2 holding the backup and, at the start of the block after it, the
#     end-of-filesystem mark 0xdeadc0de (mtd's jffs2.c writes it there; OpenWrt's kernel
#     erases that block and every one after it when jffs2 mounts the partition: step 8's
#     initramfs does that part here). OpenWrt's mtd tool is not built: the jffs2 is made by
#     the kernel's own on an mtdram of the same erase size, before stage2 leaves the root,
#     and its blocks that hold nodes and the mark are copied to the start of rootfs_data.
ln -sfn ../../lib/libc.so "$R/usr/bin/ldd"
modprobe -d "$KROOT" -S "$KVER" --show-depends mtdram | while read -r verb path _; do
    [[ $verb == insmod ]] && cp "$path" "$KMODS/"
done
cat >"$R/lib/upgrade/platform.sh" <<'EOF'
SETTINGS_JFFS2=/tmp/settings.jffs2

platform_check_image() {
	return 0
}

# A jffs2 needs 5 erase blocks or more; only those that hold more than a clean marker (12
# bytes at the start) are written to rootfs_data, one after the other (jffs2 finds its nodes
# wherever they are). The kernel's jffs2 leaves blocks empty, at times the first one, not
# even a clean marker in it: rootfs_data must start with a jffs2 node for fstools and step
# 8's initramfs to take it for one.
platform_pre_upgrade() {
	local index blocks=8 block=0 used=0
	[ -n "$UPGRADE_BACKUP" ] || return 0
	insmod mtdram total_size=$((blocks * 64)) erase_size=64 || return 1
	index="$(find_mtd_index 'mtdram test device')"
	# Nothing makes device nodes now that procd has handed PID 1 to upgraded: jffs2 takes
	# the kernel's name, the reads a node of their own (in /dev: /tmp is nodev).
	mkdir -p /tmp/settings.mnt
	mount -t jffs2 "mtd$index" /tmp/settings.mnt || return 1
	cp "$UPGRADE_BACKUP" /tmp/settings.mnt/sysupgrade.tgz
	umount /tmp/settings.mnt || return 1
	mknod /dev/settings-mtd c 90 $((index * 2)) || return 1
	: >"$SETTINGS_JFFS2"
	while [ $block -lt $blocks ]; do
		if [ "$(dd if=/dev/settings-mtd bs=64k skip=$block count=1 2>/dev/null |
			tail -c +13 | tr -d '\377' | head -c 1 | wc -c)" != 0 ]; then
			dd if=/dev/settings-mtd bs=64k skip=$block count=1 2>/dev/null \
				>>"$SETTINGS_JFFS2"
			used=$((used + 1))
		fi
		block=$((block + 1))
	done
	rm /dev/settings-mtd
	[ $used -gt 0 ] || return 1
	# The end mark, made here: stage2's RAM root has no tr.
	{ printf '\336\255\300\336'
	  dd if=/dev/zero bs=65532 count=1 2>/dev/null | tr '\0' '\377'; } >>"$SETTINGS_JFFS2"
}

platform_do_upgrade() {
	local data
	data="$(find_mtd_part rootfs_data)"
	[ -n "$data" ] || return 1
	if [ -n "$UPGRADE_BACKUP" ]; then
		dd if="$SETTINGS_JFFS2" of="$data" bs=64k conv=fsync || return 1
	else
		{ printf '\336\255\300\336'
		  dd if=/dev/zero bs=65532 count=1 2>/dev/null | tr '\0' '\377'; } |
			dd of="$data" bs=64k count=1 conv=fsync || return 1
	fi
	sync
}
EOF

# 6c. apk, OpenWrt's package manager since it replaced opkg, for `snapshot upgrade` and the
#     commit hook. The one tool not built against musl: apk 3 needs OpenSSL (or mbedtls) and
#     zstd, which the pinned sources do not hold. It is the pinned apk-tools on Debian's
#     glibc, OpenSSL and zstd (in PYTHON_DEBS), which the root holds beside musl for Python:
#     on x86_64 the host tests' build (scripts/setup-openwrt-tools.sh), on mipsel that build
#     cross-compiled ($APK, above). Its database is made as OpenWrt's image build makes it,
#     by the host's apk (the database's files are the same on every CPU), here with no
#     package installed by apk. Its architecture is OpenWrt's package architecture, as
#     there; the test feeds' packages are noarch, which every architecture takes. The
#     project's commit hook (step 6) is for the router's own transactions, not this one: run
#     here, chrooted into the root, it would need the root's CPU.
install -m 0755 "$APK/bin/apk" "$R/usr/bin/apk"
cp -a "$APK"/lib/libapk.so* "$R/usr/lib/"
run "$W/apk.log" "$OPENWRT_TOOLS/bin/apk" --root "$R" --arch "$OPENWRT_ARCH" add --initdb \
    --no-cache --no-commit-hooks
# initdb's cache and log went through /var, a link to /tmp, which is RAM on the router.
find "$R/tmp" -mindepth 1 -delete

# 6d. LuCI (the browser tier, x86_64): its packages' trees, and luci-app-snapshot laid out as
#     luci.mk lays out an app (htdocs in /www, root in /). luci-base's postinst, which the
#     image build skips, is done here: uhttpd runs LuCI's ucode dispatcher for /cgi-bin/luci,
#     in place of the Lua handler of the stock config.
if [[ -n $LUCI_KEY ]]; then
    cp -a "$LUCI/stage/." "$R/"
    # rpcd's Makefile installs its ACL for sessions not logged in: without `session access`
    # there, LuCI's login page takes its first refused call for an expired session.
    tar -xzf "$(tarball rpcd)" -O rpcd/unauthenticated.json \
        >"$R/usr/share/rpcd/acl.d/unauthenticated.json"
    APP="$HERE/openwrt-package/luci-app-snapshot"
    cp -a "$APP/htdocs/." "$R/www/"
    cp -a "$APP/root/." "$R/"
    sed -i "s,^\(\s*\)list lua_prefix\s.*,\1list ucode_prefix '/cgi-bin/luci=/usr/share/ucode/luci/uhttpd.uc'," \
        "$R/etc/config/uhttpd"
    grep -q ucode_prefix "$R/etc/config/uhttpd" || { log "no lua_prefix in uhttpd.config"; exit 1; }
fi

# 6e. batman-adv, the mesh the trial and rollback test runs over (tests/test_router.py): the
#     kernel's module and what it needs, loaded at boot as OpenWrt's kmod-batman-adv has it
#     loaded. The mesh itself is configured with busybox's `ip link` (batman-adv takes its
#     interfaces over rtnetlink); batctl, from OpenWrt's routing feed, is not pinned.
modprobe -d "$KROOT" -S "$KVER" --show-depends batman_adv | while read -r verb path _; do
    [[ $verb == insmod ]] && cp "$path" "$KMODS/"
done
# libcrc32c, which batman-adv needs, asks the kernel for a crc32c implementation: loaded first.
printf 'crc32c_generic\nbatman-adv\n' >"$R/etc/modules.d/50-batman-adv"

# 7. Services enabled as `/etc/init.d/NAME enable` does.
for script in "$R"/etc/init.d/*; do
    chmod 0755 "$script"
    name="$(basename "$script")"
    start="$(sed -n 's/^START=//p' "$script" | head -n1)"
    stop="$(sed -n 's/^STOP=//p' "$script" | head -n1)"
    [[ -n $start ]] && ln -sfn "../init.d/$name" "$R/etc/rc.d/S$start$name"
    [[ -n $stop ]] && ln -sfn "../init.d/$name" "$R/etc/rc.d/K$stop$name"
done

run "$W/squashfs.log" mksquashfs "$R" "$ROOT.tmp/root.squashfs" -noappend -quiet -all-root \
    -comp xz

# 8. The initramfs: the kernel's part of the boot (see INIT below).
I="$W/initramfs"
mkdir -p "$I/bin" "$I/dev" "$I/proc" "$I/sys" "$I/newroot" "$I/lib/modules"
# The host's busybox, or Debian's mipsel busybox-static.
if [[ $ARCH == x86_64 ]]; then
    cp "$(command -v busybox)" "$I/bin/busybox"
else
    cp "$MIPSEL_ENTRY/root/bin/busybox" "$I/bin/busybox"
fi
mknod -m 0600 "$I/dev/console" c 5 1
: >"$I/etc.modules"
for mod in virtio_pci virtio_blk squashfs loop overlay mtdblock block2mtd jffs2 zstd deflate lzo ubi ubifs; do
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$mod" | while read -r verb path _; do
        [[ $verb == insmod ]] || continue
        ko="$(basename "$path")"
        grep -qx "$ko" "$I/etc.modules" && continue
        cp "$path" "$I/lib/modules/"
        echo "$ko" >>"$I/etc.modules"
    done
done
mv "$I/etc.modules" "$I/modules"
cat >"$I/init" <<'INIT'
#!/bin/busybox sh
# What a router's kernel does with its built-in drivers before it runs /sbin/init: virtio
# for the disks, squashfs for the root, MTD with the flash (block2mtd over the second disk),
# jffs2, UBI and ubifs (with the compressors ubifs asks the crypto API for: the initramfs
# has no modprobe to answer a request), and overlay. Then procd takes over, as on the router.
# The flash is a NOR router's, the MTD partition rootfs_data; with `flash=ubi` on the
# kernel command line (tests/router_vm.py) a NAND router's, an MTD partition `ubi` that
# UBI attaches at boot, as a NAND board's kernel does: rootfs_data is a volume in it.
B=/bin/busybox
fail() { echo "initramfs: $*"; $B sleep 1; $B poweroff -f; }
# OpenWrt's kernel carries a jffs2 patch that Debian's lacks: when jffs2 mounts a partition,
# the first block that starts with 0xdeadc0de (the end mark `mtd -j` writes after the jffs2
# of a sysupgrade that keeps settings) and every block after it are erased, so nothing the
# partition held before (an old jffs2's nodes, a chain's records) joins the new filesystem.
# This boot mounts jffs2 when rootfs_data starts with a jffs2 node (fstools' test), so the
# erase is done then, here; the kernel would do it a little later, in mount_root, after the
# chain's own void (DESIGN.md §11) has run.
starts() { $B dd if="$1" bs=1 count="$2" skip="$3" 2>/dev/null | $B od -An -tx1 | $B tr -d ' \n'; }
end_of_filesystem() {
    local mtd erase blocks b=1
    mtd=$($B grep '"rootfs_data"' /proc/mtd | $B cut -d: -f1)
    [ -n "$mtd" ] || return 0
    case "$(starts /dev/$mtd 2 0)" in 8519|1985) ;; *) return 0 ;; esac
    erase=$($B cat /sys/class/mtd/$mtd/erasesize)
    blocks=$(($($B cat /sys/class/mtd/$mtd/size) / erase))
    while [ $b -lt $blocks ]; do
        if [ "$(starts /dev/$mtd 4 $((b * erase)))" = deadc0de ]; then
            echo "initramfs: jffs2's end of filesystem mark at block $b of rootfs_data:" \
                "erasing from there on"
            $B dd if=/dev/zero bs=$erase count=$((blocks - b)) 2>/dev/null | $B tr '\0' '\377' |
                $B dd of=/dev/mtdblock${mtd#mtd} bs=$erase seek=$b conv=fsync 2>/dev/null ||
                fail "erase rootfs_data from block $b"
            return 0
        fi
        b=$((b + 1))
    done
}
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
flash=nor
for arg in $($B cat /proc/cmdline); do
    case "$arg" in flash=ubi) flash=ubi ;; esac
done
while read -r ko; do
    case "$ko:$flash" in
    block2mtd.ko:*)
        n=0
        while [ ! -b /dev/vdb ] && [ $n -lt 50 ]; do $B sleep 0.1; n=$((n + 1)); done
        name=rootfs_data
        [ $flash = ubi ] && name=ubi
        $B insmod /lib/modules/$ko block2mtd=/dev/vdb,65536,$name || fail "insmod $ko" ;;
    ubi.ko:ubi)
        $B insmod /lib/modules/$ko mtd=ubi || fail "insmod $ko mtd=ubi" ;;
    *)
        $B insmod /lib/modules/$ko || fail "insmod $ko" ;;
    esac
done < /modules
end_of_filesystem
$B mount -t squashfs -o ro /dev/vda /newroot || fail "mount the squashfs root"
$B umount /proc /sys /dev
exec $B switch_root /newroot /sbin/init
INIT
chmod 0755 "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet >"$ROOT.tmp/initramfs.cpio")
echo "$KERNEL_IMAGE" >"$ROOT.tmp/KERNEL"
echo "$ARCH" >"$ROOT.tmp/ARCH"

rm -rf "$W"
echo "assembled in $((SECONDS - started)) s" >"$ROOT.tmp/READY"
rm -rf "$ROOT"
mv "$ROOT.tmp" "$ROOT"
# Entries of earlier inputs, once no session can still be using them.
find "$CACHE" -mindepth 1 -maxdepth 1 \
    \( -name 'tools-*' -o -name 'luci-*' -o -name 'apk-*' -o -name 'root-*' \) \
    ! -name "tools-$TOOLS_KEY" ! -name "luci-$LUCI_KEY" ! -name "apk-$APK_KEY" \
    ! -name "root-$ROOT_KEY" -mmin +60 -exec rm -rf {} +
log "root ready in $ROOT ($((SECONDS - started)) s)"
echo "$ROOT"
