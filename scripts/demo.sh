#!/usr/bin/env bash
# The main job on a simulated flash image: install, create a NAND image, show it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/snapshot-demo.XXXXXX)
export SNAPSHOT_DEVICE="$work/flash.img"

set -x
snapshot flash create "$SNAPSHOT_DEVICE" --type nand --size 16M --erase-size 128K --bad-blocks 5
snapshot flash info
