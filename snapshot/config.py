"""Settings from /etc/config/snapshot, the UCI file OpenWrt keeps configuration in
(initscripts/etc/config/snapshot documents each option):

    config snapshot 'main'
        option compression 'xz'

On a router it is read through `uci`, which also sees uncommitted changes; elsewhere the file
is parsed directly. Only the `snapshot` section named `main` counts (the first `snapshot`
section when parsing). SNAPSHOT_CONFIG names another file (tests, images being prepared on a
PC). A missing file means built-in defaults.
"""
import os
import shutil

DEFAULT_PATH = "/etc/config/snapshot"
DEFAULTS = {"device": "", "compression": "gzip", "save_on_shutdown": "0", "max_attempts": "3"}


def load(path: str | None = None) -> dict[str, str]:
    path = path or os.environ.get("SNAPSHOT_CONFIG", DEFAULT_PATH)
    options = dict(DEFAULTS)
    if shutil.which("uci") and os.path.exists(path):
        options.update(_from_uci(path))
        return options
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return options
    except (OSError, UnicodeDecodeError) as e:
        from snapshot.errors import SnapshotError
        raise SnapshotError(f"{path}: cannot read the configuration: "
                            f"{getattr(e, 'strerror', None) or e}") from None
    import shlex   # here, like subprocess below: most commands never need them
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


def _from_uci(path: str) -> dict[str, str]:
    """`uci show` prints `snapshot.main.compression='xz'` lines."""
    import shlex
    import subprocess
    directory, name = os.path.split(os.path.abspath(path))
    shown = subprocess.run(["uci", "-q", "-c", directory, "show", f"{name}.main"],
                           capture_output=True, text=True).stdout
    options = {}
    for line in shown.splitlines():
        key, _, value = line.partition("=")
        parts = key.split(".")
        if len(parts) == 3:
            options[parts[2]] = shlex.split(value)[0] if value else ""
    return options
