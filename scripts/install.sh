#!/usr/bin/env bash
# Install snapshot into ./.venv from this checkout, with the Debian packages the build needs.
# Idempotent; run as root on Debian (apt-get runs only when a package is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc compiles the cffi MTD bindings against <mtd/mtd-user.h> (linux-libc-dev) and Python.h.
needed=()
python3 -c 'import ensurepip' 2>/dev/null || needed+=(python3-venv)
[[ -f /usr/include/mtd/mtd-user.h ]] || needed+=(linux-libc-dev)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || needed+=(python3-dev)
if [[ ${#needed[@]} -gt 0 ]]; then
    echo "install: apt-get install ${needed[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${needed[@]}"
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
