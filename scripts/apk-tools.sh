# Sourced by scripts/setup-openwrt-tools.sh (the host's apk) and scripts/build-router.sh (the
# router root's apk on another CPU): the pinned apk-tools built one way for both. OpenSSL and
# zstd from Debian, libfetch for URLs, no Lua, manual pages or help text (they would need
# Lua and scdoc). The programs find libapk in PREFIX/lib, beside their bin/, wherever PREFIX
# is copied to. The sourcing script defines JOBS.

# apk_tools_build SRCDIR PREFIX [meson options...]: configure, build and install into PREFIX;
# the log is SRCDIR/_build.log, its tail shown on failure.
apk_tools_build() {
    local dir="$1" prefix="$2"; shift 2
    meson setup "$dir/_build" "$dir" --prefix="$prefix" --libdir=lib -Dlua=disabled \
        -Ddocs=disabled -Dhelp=disabled -Dpython=disabled -Dtests=disabled \
        -Dcrypto_backend=openssl -Durl_backend=libfetch -Dzstd=enabled \
        "-Dc_link_args=-Wl,-rpath,\$ORIGIN/../lib" "$@" >"$dir/_build.log" 2>&1 \
        || { tail -n 30 "$dir/_build.log" >&2; return 1; }
    ninja -C "$dir/_build" -j"$JOBS" >>"$dir/_build.log" 2>&1 \
        || { tail -n 30 "$dir/_build.log" >&2; return 1; }
    ninja -C "$dir/_build" install >/dev/null
}
