#!/usr/bin/env bash
# Build the router's own tools from their pinned upstream sources, for the tests: libubox, ubus
# (ubusd, ubus), uci, usign, rpcd, opkg, apk v3 and fstools (snapshot_tool, factoryreset,
# mount_root). Facts about each build: ../shared/reference/openwrt-tools.md.
#
# Idempotent and cached: a component is rebuilt only when its source tarball changed.
#
# Sources: $SNAPSHOT_OPENWRT_SRC, default ../shared/openwrt-src beside the checkout when it is
# there; otherwise the upstream repositories are cloned at the pinned commits (network needed).
#
# Result, in $SNAPSHOT_OPENWRT_TOOLS (default /var/cache/snapshot-openwrt-tools):
#   bin/ sbin/ lib/ include/ libexec/ share/   the install prefix
#   fstools/                                   snapshot_tool, factoryreset, mount_root (+ libs)
#   stamps/NAME                                the tarball each component was built from
#   READY                                      written last: "setup complete"
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${SNAPSHOT_OPENWRT_TOOLS:-/var/cache/snapshot-openwrt-tools}"
SRC="${SNAPSHOT_OPENWRT_SRC:-}"
if [[ -z $SRC && -d "$HERE/../shared/openwrt-src" ]]; then
    SRC="$(cd "$HERE/../shared/openwrt-src" && pwd)"
fi
JOBS="$(nproc)"
# Debian build dependencies (Lua and libblkid are not needed).
PACKAGES=(gcc make libc6-dev libcrypt-dev cmake meson ninja-build pkg-config libjson-c-dev
          libssl-dev zlib1g-dev libzstd-dev git ca-certificates)
# name  upstream  commit: the pins of ../shared/openwrt-src/SOURCES.md.
PINS=(
    "libubox https://git.openwrt.org/project/libubox.git 1aa36ee774c8db4d7a396903e0d2e1fb79ee8bf1"
    "ubus https://git.openwrt.org/project/ubus.git 3cc98db1a422dcf560f2d6347fd410f17565a89d"
    "uci https://git.openwrt.org/project/uci.git 66127cd76c5d0bd46d5a90302cc6110f53a4e2f8"
    "usign https://git.openwrt.org/project/usign.git c4c72b1b07945ee192361dc751291a7c98d6adcd"
    "rpcd https://git.openwrt.org/project/rpcd.git 4476687403d8c6e988eaa1ecc892e998838e6da9"
    "opkg-lede https://git.openwrt.org/project/opkg-lede.git 38eccbb1fd694d4798ac1baf88f9ba83d1eac616"
    "apk-tools https://gitlab.alpinelinux.org/alpine/apk-tools.git 90b974fd8510fbc2b3d6adde311ad1ba8754c728"
    "fstools https://git.openwrt.org/project/fstools.git e600d842ce81b776dc8e2c7aaf39bb923e446c45"
)

log() { echo "setup-openwrt-tools: $*" >&2; }

# shellcheck source=scripts/apk-tools.sh
source "$(dirname "$0")/apk-tools.sh"

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]} (run as root to install them)"
        exit 1
    fi
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "$PREFIX/stamps" "$PREFIX/build"
WORK="$PREFIX/build"

# source_dir NAME URL COMMIT: a fresh copy of the source in $WORK/NAME.
source_dir() {
    local name="$1" url="$2" commit="$3" tarball
    tarball=$(ls "$SRC/$name"-*.tar.gz 2>/dev/null | head -n1 || true)
    rm -rf "$WORK/$name"
    if [[ -n $SRC && -n $tarball ]]; then
        tar -xzf "$tarball" -C "$WORK"
    else
        log "$name: cloning $url at $commit"
        git clone -q "$url" "$WORK/$name"
        git -C "$WORK/$name" checkout -q "$commit"
    fi
}

want_stamp() {
    local name="$1" url="$2" commit="$3" tarball
    tarball=$(ls "$SRC/$name"-*.tar.gz 2>/dev/null | head -n1 || true)
    if [[ -n $SRC && -n $tarball ]]; then
        echo "$(basename "$tarball") $(sha256sum "$tarball" | cut -d' ' -f1)"
    else
        echo "$url $commit"
    fi
}

CMAKE_COMMON=(-DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_PREFIX_PATH="$PREFIX"
              "-DCMAKE_INSTALL_RPATH=\$ORIGIN/../lib" -DCMAKE_BUILD_TYPE=Release)

cmake_build() {
    local dir="$1"; shift
    cmake -S "$dir" -B "$dir/_build" "${CMAKE_COMMON[@]}" "$@" >"$dir/_build.log" 2>&1 \
        || { tail -n 30 "$dir/_build.log" >&2; return 1; }
    make -C "$dir/_build" -j"$JOBS" >>"$dir/_build.log" 2>&1 \
        || { tail -n 30 "$dir/_build.log" >&2; return 1; }
}

build() {
    local name="$1" dir="$WORK/$1"
    case "$name" in
    libubox|ubus)
        cmake_build "$dir" -DBUILD_LUA=OFF -DBUILD_EXAMPLES=OFF -DUNIT_TESTING=OFF
        make -C "$dir/_build" install >/dev/null ;;
    uci)
        cmake_build "$dir" -DBUILD_LUA=OFF -DUNIT_TESTING=OFF
        make -C "$dir/_build" install >/dev/null ;;
    usign)
        cmake_build "$dir" -DUSE_LIBUBOX=OFF
        make -C "$dir/_build" install >/dev/null ;;
    rpcd)
        cmake_build "$dir" -DFILE_SUPPORT=OFF -DIWINFO_SUPPORT=OFF -DRPCSYS_SUPPORT=OFF \
            -DUCODE_SUPPORT=OFF
        make -C "$dir/_build" install >/dev/null ;;
    opkg-lede)
        # libopkg ignores the include directory cmake finds for libubox.
        cmake_build "$dir" -DBUILD_TESTS=OFF -DVERSION=38eccbb1fd69 \
            -DCMAKE_C_FLAGS="-I$PREFIX/include"
        make -C "$dir/_build" install >/dev/null
        ln -sf opkg-cl "$PREFIX/bin/opkg" ;;
    apk-tools)
        apk_tools_build "$dir" "$PREFIX" ;;
    fstools)
        # Built in place, not installed: the three binaries and libfstools, with a RUNPATH into
        # the prefix's libraries and their own directory.
        # Only the three targets: the rest (block) wants libblkid.
        cmake -S "$dir" -B "$dir/_build" "${CMAKE_COMMON[@]}" -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
            "-DCMAKE_INSTALL_RPATH=\$ORIGIN:\$ORIGIN/../lib" \
            -DCMAKE_SHARED_LINKER_FLAGS="-L$PREFIX/lib" -DCMAKE_EXE_LINKER_FLAGS="-L$PREFIX/lib" \
            -DCMAKE_C_FLAGS="-I$PREFIX/include" >"$dir/_build.log" 2>&1 \
            || { tail -n 30 "$dir/_build.log" >&2; return 1; }
        make -C "$dir/_build" -j"$JOBS" snapshot_tool factoryreset mount_root \
            >>"$dir/_build.log" 2>&1 || { tail -n 30 "$dir/_build.log" >&2; return 1; }
        rm -rf "$PREFIX/fstools"
        mkdir -p "$PREFIX/fstools"
        cp -a "$dir/_build/snapshot_tool" "$dir/_build/factoryreset" "$dir/_build/mount_root" \
            "$dir"/_build/lib*.so* "$PREFIX/fstools/" ;;
    esac
}

changed=0
for i in "${!PINS[@]}"; do
    read -r name url commit <<<"${PINS[$i]}"
    stamp="$(want_stamp "$name" "$url" "$commit")"
    # A component rebuilds when it or anything before it changed (later ones link earlier ones).
    if [[ $changed -eq 0 && -f "$PREFIX/stamps/$name" && "$(cat "$PREFIX/stamps/$name")" == "$stamp" ]]; then
        continue
    fi
    if [[ $changed -eq 0 ]]; then
        # This one and every later one rebuild now: forget their stamps first, so that a run
        # interrupted here rebuilds them all again, not just the one it stopped in.
        for later in "${PINS[@]:$i}"; do
            rm -f "$PREFIX/stamps/${later%% *}"
        done
    fi
    changed=1
    rm -f "$PREFIX/READY"
    log "building $name"
    source_dir "$name" "$url" "$commit"
    build "$name"
    echo "$stamp" >"$PREFIX/stamps/$name"
done
rm -rf "$WORK"
# rpcd's plugin and ACL directories are compiled in, with no option to move them; tests
# bind-mount their own over these (../shared/reference/openwrt-tools.md).
mkdir -p "$PREFIX/libexec/rpcd" "$PREFIX/share/rpcd/acl.d"
echo "setup complete" >"$PREFIX/READY"
log "tools ready in $PREFIX"
