"""Settings from /etc/config/snapshot, the UCI file OpenWrt keeps configuration in
(initscripts/etc/config/snapshot documents each option and section):

    config snapshot 'main'
        option compression 'xz'

    config check 'mesh'
        option type 'batman'

On a router it is read through `uci`, which also sees uncommitted changes; elsewhere the file
is parsed directly. The options of the `snapshot` section named `main` (the first `snapshot`
section when parsing) are the settings; `check` sections are the health checks. SNAPSHOT_CONFIG
names another file (tests, images being prepared on a PC). A missing file means built-in
defaults.
"""
import os
import shutil

from snapshot.errors import SnapshotError

DEFAULT_PATH = "/etc/config/snapshot"
DEFAULTS = {"device": "", "compression": "gzip", "save_on_shutdown": "0", "max_attempts": "3",
            "health_dir": "/etc/snapshot/health.d", "rollback_dir": "/etc/snapshot/rollback.d",
            "interval": "30", "grace": "300", "pass_rounds": "3", "fail_rounds": "3",
            "window": "1800"}


def load(path: str | None = None) -> dict[str, str]:
    """The settings: the defaults, overridden by the main section's options."""
    options = dict(DEFAULTS)
    main = next((opts for kind, name, opts in sections(path) if kind == "snapshot"
                 and name in ("main", None)), {})
    options.update(main)
    return options


def checks(path: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """The `check` sections, in file order: (name, options)."""
    return [(name, opts) for kind, name, opts in sections(path) if kind == "check"]


def sections(path: str | None = None) -> list[tuple[str, str | None, dict[str, str]]]:
    """Every section of the file: (type, name or None for an anonymous one, options)."""
    path = path or os.environ.get("SNAPSHOT_CONFIG", DEFAULT_PATH)
    if shutil.which("uci") and os.path.exists(path):
        return _from_uci(path)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path}: cannot read the configuration: "
                            f"{getattr(e, 'strerror', None) or e}") from None
    import shlex   # here, like subprocess below: most commands never need them
    found = []
    for line in lines:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if not words:
            continue
        if words[0] == "config" and len(words) > 1:
            found.append((words[1], words[2] if len(words) > 2 else None, {}))
        elif words[0] == "option" and found and len(words) >= 3:
            found[-1][2][words[1]] = words[2]
    return found


def _from_uci(path: str) -> list[tuple[str, str | None, dict[str, str]]]:
    """`uci show` prints `snapshot.main=snapshot` for a section and
    `snapshot.main.compression='xz'` for an option (`@check[0]` names an anonymous one)."""
    import shlex
    import subprocess
    directory, name = os.path.split(os.path.abspath(path))
    shown = subprocess.run(["uci", "-q", "-c", directory, "show", name],
                           capture_output=True, text=True).stdout
    found: dict[str, tuple[str, str | None, dict[str, str]]] = {}
    for line in shown.splitlines():
        key, _, value = line.partition("=")
        parts = key.split(".")
        value = shlex.split(value)[0] if value else ""
        if len(parts) == 2:
            found[parts[1]] = (value, None if parts[1].startswith("@") else parts[1], {})
        elif len(parts) == 3 and parts[1] in found:
            found[parts[1]][2][parts[2]] = value
    return list(found.values())


def number(options: dict[str, str], key: str, low: int, high: int | None = None) -> int:
    """An integer option, or SnapshotError naming it and what it may be."""
    value = options.get(key, DEFAULTS.get(key, ""))
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < low or (high is not None and n > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise SnapshotError(f"option {key} '{value}' in the configuration is not a number "
                            f"{bound}")
    return n
