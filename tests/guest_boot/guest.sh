#!/bin/sh
# The job tests/test_kernel_boot.py runs in the kernel-tier guest (tests/kernel_vm.py), in the
# harness's chroot of the host tree. It stands in for the router's firmware and bootloader:
#
#   1. names the flash: a partition `rootfs_data` over the whole block2mtd device (the disk
#      image that persists across boots), as a router's partition table would;
#   2. optionally formats the partition (the installer's step, before the first boot);
#   3. boots: in a private mount namespace (so nothing here or in the harness is affected),
#      rootfs.sh pivots into the squashfs and runs its /etc/preinit.
#
# Environment: KBOOT_SQUASHFS (the image), KBOOT_PYTHON (the project's venv python),
# KBOOT_FORMAT=1, and what life.py reads (KBOOT_PLAN).
set -eu
here=$(cd "$(dirname "$0")" && pwd)

part=$("$KBOOT_PYTHON" "$here/mtdpart.py" "$MTD_BLOCK2MTD" rootfs_data)
echo "kboot: rootfs_data is $part over $MTD_BLOCK2MTD"

if [ "${KBOOT_FORMAT:-0}" = 1 ]; then
    "$KBOOT_PYTHON" -m snapshot --device mtd:rootfs_data format
fi

exec unshare --mount --propagation private /bin/sh "$here/rootfs.sh"
