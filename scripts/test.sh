#!/usr/bin/env bash
# Install everything and run every test tier: unit and simulator tests on the host, and the
# kernel tier (real nandsim, mtdram and block2mtd devices) inside a qemu guest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not kernel"` for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/setup-kernel-tier.sh
exec .venv/bin/python -m pytest "$@"
