#!/usr/bin/env bash
# Install everything and run every test tier: unit and simulator tests on the host; real
# squashfs, overlayfs and tmpfs mounts as root in `unshare -m`; and the kernel tier (real
# nandsim, mtdram and block2mtd devices) inside a qemu guest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not kernel and not kernel_boot"`
# for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Tier 2 builds squashfs images and mounts them in `unshare -m` (util-linux).
if ! command -v mksquashfs >/dev/null || ! command -v unshare >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        squashfs-tools util-linux
fi
bash scripts/setup-kernel-tier.sh
exec .venv/bin/python -m pytest "$@"
