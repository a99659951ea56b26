#!/usr/bin/env bash
# The main job on a simulated flash image: install, create a NAND image, show it; then the
# same on a simulated UBI volume.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/snapshot-demo.XXXXXX)
export SNAPSHOT_DEVICE="$work/flash.img"

# Stand-ins for an overlay's upper directory before and after a change.
mkdir -p "$work/upper/etc/config" "$work/later/etc/config"
printf "config interface 'lan'\n\toption proto 'static'\n" > "$work/upper/etc/config/network"
printf "config system\n\toption hostname 'rooftop-7'\n" > "$work/later/etc/config/system"

set -x
snapshot flash create "$SNAPSHOT_DEVICE" --type nand --size 16M --erase-size 128K --bad-blocks 5
snapshot format
snapshot push --from "$work/upper" -m "first boot"
snapshot save --from "$work/later"
snapshot push --from "$work/later" -m "hostname"
snapshot list
snapshot unpack --to "$work/restored"
find "$work/restored" -type f
snapshot rollback
snapshot check
snapshot flash info
# The same chain on a UBI volume, where most NAND routers keep rootfs_data.
snapshot flash create "$work/ubi.img" --type ubi --size 31M --erase-size 124K
snapshot --device "$work/ubi.img" format
snapshot --device "$work/ubi.img" push --from "$work/upper" -m "first boot"
snapshot --device "$work/ubi.img" list
set +x
echo
echo "The simulated flash is $SNAPSHOT_DEVICE. snapshot is installed in $PWD/.venv; try:"
echo "  $PWD/.venv/bin/snapshot --device $SNAPSHOT_DEVICE list"
