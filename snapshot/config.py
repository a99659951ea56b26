"""Settings from /etc/config/snapshot, the UCI file OpenWrt keeps configuration in
(initscripts/etc/config/snapshot documents each option and section):

    config snapshot 'main'
        option compression 'xz'

    config check 'mesh'
        option type 'batman'

The file is parsed here, one statement a line, into the sections uci reads (its words split as
uci's own parser splits them). Where `uci set` has saved changes to it in SAVE_DIR, not yet
committed, it is read through `uci export` instead, which applies them; a file uci refuses is
parsed here all the same, less the lines that do not parse, so that a broken file never stops
a boot. (Running uci for every read cost `snapshot list` on a router three times its own
start-up: the process, and the imports of subprocess. tests/test_config.py reads every
file both ways and compares.) The options of the first `snapshot` section named `main`,
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
# The characters uci accepts in a configuration file's name.
UCI_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
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
    """The file as `uci export` prints it, with the changes saved in SAVE_DIR applied; None
    when there are none, without uci, for a missing file, or when uci fails, so that the file
    parser reads the file."""
    directory, name = os.path.split(os.path.abspath(path))
    # uci takes a name with a dot in it as package.section, and would read another file.
    if not (name and UCI_NAME.issuperset(name) and os.path.exists(path)
            and os.path.exists(os.path.join(SAVE_DIR, name))):
        return None
    import subprocess   # here: a read without saved changes runs no process
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
    """The sections of a UCI file, its statements a line at a time; a line that does not parse
    is skipped, where uci would refuse the whole file."""
    found: list[tuple[str, str | None, dict[str, str]]] = []
    named: dict[str, dict[str, str]] = {}
    options = None
    statements = (words for line in text.splitlines() for words in _statements(line) or ())
    for words in statements:
        if not words:
            continue
        # uci takes a keyword's first letter for the keyword.
        if words[0] in ("config", "c") and len(words) > 1:
            name = words[2] if len(words) > 2 else None
            # uci adds the options of a section named again to the first one of that name.
            options = named.get(name) if name else None
            if options is None:
                options = {}
                found.append((words[1], name, options))
                if name:
                    named[name] = options
        # uci ignores an option with an empty value, even one set before it.
        elif words[0] in ("option", "o") and options is not None and len(words) > 2 and words[2]:
            options[words[1]] = words[2]
    return found


_SPACE = " \t\n\r\v\f"


def _statements(line: str) -> list[list[str]] | None:
    """The statements of one line, each its words, as uci's parser splits them: whitespace
    between words, `#` outside quotes ends the line; within a word, '...' is taken as it
    stands, and a backslash, outside single quotes, takes the character after it as it
    stands. A `;` after a closing quote starts another statement; after an unquoted word's
    last character it ends the line (uci reads no further there). None for a line that does
    not parse on its own (a quote left open, a backslash at its end: uci would go on to the
    next line; a `;` after a space after an unquoted word: uci refuses it). By hand, not with
    shlex: shlex imports re, most of a short command's start-up on a router."""
    statements: list[list[str]] = [[]]
    word: list[str] | None = None
    quoted = False      # whether the last character taken closed a quote
    at, end = 0, len(line)
    while at < end:
        c = line[at]
        if c in _SPACE or c == "#" or c == ";":
            if word is not None:
                statements[-1].append("".join(word))
                word = None
            if c == "#":
                break
            if c == ";":
                if not quoted:
                    return statements if at and line[at - 1] not in _SPACE else None
                statements.append([])
            at += 1
            continue
        if word is None:
            word = []
        quoted = c in "'\""
        if c == "'":
            close = line.find("'", at + 1)
            if close < 0:
                return None
            word.append(line[at + 1:close])
            at = close + 1
        elif c == '"':
            at += 1
            while at < end and line[at] != '"':
                if line[at] == "\\":
                    at += 1
                    if at == end:
                        return None
                word.append(line[at])
                at += 1
            if at == end:
                return None
            at += 1
        elif c == "\\":
            if at + 1 == end:
                return None
            word.append(line[at + 1])
            at += 2
        else:
            word.append(c)
            at += 1
    if word is not None:
        statements[-1].append("".join(word))
    return statements


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
