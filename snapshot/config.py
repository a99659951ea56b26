"""Settings from /etc/config/snapshot, the UCI file OpenWrt keeps configuration in
(initscripts/etc/config/snapshot documents each option and section):

    config snapshot 'main'
        option compression 'xz'

    config check 'mesh'
        option type 'batman'

On a router it is read through `uci export`, which also applies the changes `uci set` saved in
SAVE_DIR and not yet committed. Elsewhere the file is parsed directly, one statement a line,
to the sections uci reads; so is a file uci refuses, less the lines that do not parse, so that
a broken file never stops a boot. The options of the first `snapshot` section named `main`,
or anonymous, are the settings; `check` sections are the health checks. An option with an
empty value is left out, as uci does; lists are not settings and are left out too.
SNAPSHOT_CONFIG names another file (tests, images being prepared on a PC). A missing file
means built-in defaults.

A section of a type snapshot does not read, and an option its reader does not know (the keys
of its defaults: DEFAULTS here, fleet/memory.DEFAULTS, health.OPTIONS), get a warning on stderr
naming the file, the section and the option, once per process: a misspelt option would
otherwise be silently ignored.
"""
import os
import re
import sys

from snapshot.errors import SnapshotError
from snapshot.text import printable

DEFAULT_PATH = "/etc/config/snapshot"
DEFAULTS = {"device": "", "compression": "gzip", "save_on_shutdown": "0", "max_attempts": "3",
            "health_dir": "/etc/snapshot/health.d", "rollback_dir": "/etc/snapshot/rollback.d",
            "interval": "30", "grace": "300", "pass_rounds": "3", "fail_rounds": "3",
            "window": "1800", "auto_snapshot": "1", "keep": "0",
            "keys_dir": "/etc/snapshot/keys", "channel_keys_dir": "/etc/snapshot/channel-keys",
            "board_file": "/tmp/sysinfo/board_name",
            "rom": "/rom"}
# Where `uci set` keeps the changes not yet committed: uci's own default, as on the router
# (given another with -t, uci applies the changes in both).
SAVE_DIR = "/tmp/.uci"
# The names uci accepts for a configuration file.
UCI_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: The section types snapshot reads: its settings (here), `check` (health/checks.py),
#: `fleet` (fleet/channel.py). Each reader warns about the options it does not know
#: (unknown()).
SECTION_TYPES = ("snapshot", "check", "fleet")
_warned: set[str] = set()


def load(path: str | None = None) -> dict[str, str]:
    """The settings: the defaults, overridden by the main section's options."""
    options = dict(DEFAULTS)
    found = sections(path)
    for kind, name, _ in found:
        if kind not in SECTION_TYPES:
            _warn(path, f"section type {kind!r}{_named(name)} is unknown (snapshot reads "
                        f"{', '.join(SECTION_TYPES)}); it is ignored")
    name, main = next(((name, opts) for kind, name, opts in found if kind == "snapshot"
                       and name in ("main", None)), (None, {}))
    unknown(path, "snapshot", name, main, DEFAULTS)
    options.update(main)
    return options


def unknown(path: str | None, kind: str, name: str | None, options: dict[str, str],
            known) -> None:
    """Warn about each option of a section (`kind`, `name`) that is not in `known`."""
    for key in options:
        if key not in known:
            _warn(path, f"option {key!r} in section {kind}{_named(name)} is unknown; it is "
                        f"ignored")


def _named(name: str | None) -> str:
    return f" {name!r}" if name else ""


def _warn(path: str | None, what: str) -> None:
    """One line on stderr, once per process however often the file is read."""
    line = printable(f"warning: {_path(path)}: {what}")
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr, flush=True)


def _path(path: str | None) -> str:
    return path or os.environ.get("SNAPSHOT_CONFIG", DEFAULT_PATH)


def checks(path: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """The `check` sections, in file order: (name, options)."""
    return [(name, opts) for kind, name, opts in sections(path) if kind == "check"]


def sections(path: str | None = None) -> list[tuple[str, str | None, dict[str, str]]]:
    """Every section of the file: (type, name or None for an anonymous one, options)."""
    path = _path(path)
    text = _from_uci(path)
    if text is None:
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise SnapshotError(f"{path}: cannot read the configuration: "
                                f"{getattr(e, 'strerror', None) or e}") from None
    return _parse(text)


def _from_uci(path: str) -> str | None:
    """The file as `uci export` prints it, uncommitted changes applied; None without uci, for a
    missing file, or when uci fails, so that the file parser reads what uci cannot."""
    directory, name = os.path.split(os.path.abspath(path))
    # uci takes a name with a dot in it as package.section, and would read another file.
    if not (os.path.exists(path) and UCI_NAME.fullmatch(name)):
        return None
    import subprocess   # here, like shlex below: most commands off a router never need it
    try:
        done = subprocess.run(["uci", "-c", directory, "-t", SAVE_DIR, "export", name],
                              capture_output=True)
    except FileNotFoundError:
        return None
    try:
        return done.stdout.decode() if done.returncode == 0 else None
    except UnicodeDecodeError:
        return None


def _parse(text: str) -> list[tuple[str, str | None, dict[str, str]]]:
    """The sections of a UCI file, one statement a line; a line that does not parse is
    skipped, where uci would refuse the whole file."""
    import shlex
    found: list[tuple[str, str | None, dict[str, str]]] = []
    named: dict[str, dict[str, str]] = {}
    options = None
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if not words:
            continue
        if words[0] == "config" and len(words) > 1:
            name = words[2] if len(words) > 2 else None
            # uci adds the options of a section named again to the first one of that name.
            options = named.get(name) if name else None
            if options is None:
                options = {}
                found.append((words[1], name, options))
                if name:
                    named[name] = options
        # uci ignores an option with an empty value, even one set before it.
        elif words[0] == "option" and options is not None and len(words) > 2 and words[2]:
            options[words[1]] = words[2]
    return found


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
