#!/usr/bin/env bash
# Install everything and run every test tier: unit and simulator tests on the host; real
# squashfs, overlayfs and tmpfs mounts as root in `unshare -m`; and the kernel tier (real
# nandsim, mtdram and block2mtd devices) inside a qemu guest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not kernel and not kernel_boot"`
# for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Tier 2 builds squashfs images and mounts them in `unshare -m` (util-linux), and runs the
# health checks against real daemons in network namespaces (iproute2, ping, babeld); the
# kernel tier's guest uses the host's batctl with its own batman-adv module; the stock
# marks' tests write a sysupgrade's jffs2 made with mkfs.jffs2, and the real router's NAND
# flash is made with mtd-utils' mkfs.ubifs and ubinize; the fleet test's routers run
# Debian's dropbear, and Ansible reaches them with OpenSSH's client; the browser tier drives
# Debian's chromium through its chromedriver (Selenium never downloads a browser).
missing=()
for tool in mksquashfs:squashfs-tools unshare:util-linux ip:iproute2 ping:iputils-ping \
            babeld:babeld batctl:batctl mkfs.jffs2:mtd-utils dropbear:dropbear-bin \
            ssh:openssh-client nsenter:util-linux signify-openbsd:signify-openbsd \
            openssl:openssl chromium:chromium chromedriver:chromium-driver; do
    PATH="$PATH:/usr/sbin:/sbin" command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "test: apt-get install ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash scripts/setup-kernel-tier.sh
# The router tier's mipsel guest: Debian's malta kernel and mipsel Python, and the cross
# compiler for the project's bindings.
bash scripts/setup-mipsel.sh
# The router's own tools (uci, ubus, rpcd, usign, apk, opkg, fstools), built from the pinned
# sources; the tests find them in $SNAPSHOT_OPENWRT_TOOLS.
bash scripts/setup-openwrt-tools.sh
# The real router (OpenWrt built from the pinned sources against musl, booted in qemu), for
# both CPUs, built here so that its minutes show; its tests say why if it cannot be.
for arch in x86_64 mipsel; do
    ARCH=$arch bash scripts/build-router.sh >/dev/null \
        || echo "test: ARCH=$arch scripts/build-router.sh failed; the router tests will say why" >&2
done
# Two workers (the machines here have two cores): the qemu guests of the kernel tiers run
# side by side; tests/conftest.py groups the tests so that no two host tests run at once.
exec .venv/bin/python -m pytest -n "${SNAPSHOT_TEST_WORKERS:-2}" --dist loadgroup "$@"
