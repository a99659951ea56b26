# Sourced by the setup scripts: Debian packages installed only when missing, with at most one
# `apt-get update` per run. The sourcing script defines log().

apt_updated=0
apt_update_once() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

# Install those of the named packages that are not installed.
apt_install_missing() {
    local pkg missing=()
    for pkg in "$@"; do
        # dpkg -s alone also succeeds for removed-but-configured packages: check the status.
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || missing+=("$pkg")
    done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    apt_update_once
    log "apt-get install ${missing[*]}"
    # Recommends would pull in GUI/audio libraries qemu does not need for -display none.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
