#!/bin/sh
# The job tests/test_kernel_boot.py runs in the kernel-tier guest (tests/kernel_vm.py), in the
# harness's chroot of the host tree. It stands in for the router's firmware and bootloader:
#
#   1. names the flash: a partition `rootfs_data` over the whole block2mtd device (the disk
#      image that persists across boots), as a router's partition table would; or, with
#      KBOOT_UBI=1, a UBI volume `rootfs_data` on it, as on a NAND router;
#   2. optionally formats the partition (the installer's step, before the first boot);
#   3. boots: in a private mount namespace (so nothing here or in the harness is affected),
#      rootfs.sh pivots into the squashfs and runs its /etc/preinit.
#
# Environment: KBOOT_SQUASHFS (the image), KBOOT_PYTHON (the project's venv python),
# KBOOT_FORMAT=1, and what life.py reads (KBOOT_PLAN).
set -eu
here=$(cd "$(dirname "$0")" && pwd)

if [ "${KBOOT_UBI:-0}" = 1 ]; then
    # A NAND router's rootfs_data: a UBI volume. UBI is attached to the flash (a router's
    # kernel command line or board preinit does it) and the volume made once, as OpenWrt's
    # nand.sh makes it (ubimkvol -N rootfs_data -m); KBOOT_RECREATE=1 makes it anew, as a
    # sysupgrade does, and KBOOT_UBIFS=1 puts a stock ubifs overlay on a new one (holding
    # the sysupgrade.tgz KBOOT_UBIFS_SETTINGS names, if it names one).
    ubiattach -m "${MTD_BLOCK2MTD#/dev/mtd}" -d 0 > /dev/null
    if [ "${KBOOT_RECREATE:-0}" = 1 ]; then
        ubirmvol /dev/ubi0 -N rootfs_data > /dev/null
    fi
    if [ ! -e /sys/class/ubi/ubi0_0 ]; then
        ubimkvol /dev/ubi0 -N rootfs_data -m > /dev/null
        if [ "${KBOOT_UBIFS:-0}" = 1 ]; then
            mkdir -p /run/kboot-ubifs
            mount -t ubifs ubi0:rootfs_data /run/kboot-ubifs
            mkdir /run/kboot-ubifs/upper /run/kboot-ubifs/work
            # A sysupgrade that kept settings: nand.sh stores them there.
            if [ -n "${KBOOT_UBIFS_SETTINGS:-}" ]; then
                cp "$KBOOT_UBIFS_SETTINGS" /run/kboot-ubifs/sysupgrade.tgz
            fi
            umount /run/kboot-ubifs
        fi
    fi
    export KBOOT_DEVICE=ubi:rootfs_data
    echo "kboot: rootfs_data is the UBI volume /dev/ubi0_0 on $MTD_BLOCK2MTD"
else
    part=$("$KBOOT_PYTHON" "$here/mtdpart.py" "$MTD_BLOCK2MTD" rootfs_data)
    export KBOOT_DEVICE=mtd:rootfs_data
    echo "kboot: rootfs_data is $part over $MTD_BLOCK2MTD"
fi

if [ "${KBOOT_FORMAT:-0}" = 1 ]; then
    "$KBOOT_PYTHON" -m snapshot --device "$KBOOT_DEVICE" format
fi

exec unshare --mount --propagation private /bin/sh "$here/rootfs.sh"
