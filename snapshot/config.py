"""Defaults from /etc/config/snapshot, the UCI file OpenWrt keeps configuration in:

    config snapshot 'main'
        option compression 'xz'

Only the first `config snapshot` section counts. SNAPSHOT_CONFIG names another file (tests,
images being prepared on a PC). A missing file means built-in defaults.
"""
import os
import shlex

DEFAULT_PATH = "/etc/config/snapshot"
DEFAULTS = {"compression": "gzip"}


def load(path: str | None = None) -> dict[str, str]:
    path = path or os.environ.get("SNAPSHOT_CONFIG", DEFAULT_PATH)
    options = dict(DEFAULTS)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return options
    section = None
    for line in lines:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if not words:
            continue
        if words[0] == "config":
            if section == "snapshot":
                break
            section = words[1] if len(words) > 1 else None
        elif words[0] == "option" and section == "snapshot" and len(words) >= 3:
            options[words[1]] = words[2]
    return options
