#!/bin/sh
# Run by guest.sh in a private mount namespace: make the squashfs the root, as the kernel does
# on a router, and run its /etc/preinit.
#
# The squashfs (built by test_kernel_boot.py) holds the router's own files, /etc/preinit and
# /lib/preinit/*, and symlinks for the host tree it borrows (the kernel-tier guest has no
# Python of its own): /usr -> /rom/.host/usr and the like, where rom/.host -> /.host. The old
# root (the harness's view of the host tree) becomes /.host at the pivot below; after
# `snapshot mount` pivots again, the squashfs is /rom and the old root /rom/.host. So
# /rom/.host names the host tree both before and after that pivot, and the symlinks resolve
# in both roots (the merged root sees the squashfs's files through overlayfs, but not the
# mounts on top of them).
set -eu
root=/run/kboot-root
mkdir -p "$root"
mount -t squashfs -o ro,loop "$KBOOT_SQUASHFS" "$root"
# What the kernel and preinit's early steps give a router: proc, sys, dev, a tmpfs /tmp.
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
# A checkout under the host's /tmp (KBOOT_TMP_LINKS: the names there) stays reachable.
for name in ${KBOOT_TMP_LINKS:-}; do
	ln -s "/rom/.host/tmp/$name" "$root/tmp/$name"
done
cd "$root"
pivot_root . .host
cd /
exec /bin/busybox ash /etc/preinit
