"""What a snapshot changed in UCI terms (`snapshot show N --uci`): for each /etc/config file
it added, modified or deleted, every option whose value it changed, old value to new.

Both versions of a file are read by the router's own uci (`uci show`), never parsed here:
what the diff names is exactly what `uci get` would answer before and after. The version
before snapshot N is the file as snapshots 1..N-1 leave it over the read-only root (`rom`,
when given); the version after is snapshot N's. Anonymous sections are named as uci shows
them (`network.@route[0]`), so inserting one shifts the names after it, as it does for uci.

Nothing here trusts the chain: file names must be UCI package names, and a file bigger than
MAX_FILE is not compared (its problem is reported instead). Read-only.
"""
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from snapshot.errors import SnapshotError
from snapshot.operations import entries_of, snapshot_record
from snapshot.store.chain import Chain
from snapshot.tree import archive
from snapshot.tree.restore import clean_name

CONFIG = "etc/config"
UCI_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: A configuration file bigger than this is not read into memory to compare (OpenWrt's
#: largest stock files are a few KiB).
MAX_FILE = 256 * 1024
_QUOTED = re.compile(r"'((?:[^']|'\\'')*)'")


class _TooBig:
    """A file that was not read: bigger than MAX_FILE, a link, or not a regular file."""

    def __init__(self, why: str):
        self.why = why


def _package(name: str) -> str | None:
    """The UCI package a path names (`etc/config/network` -> `network`), if any."""
    parent, _, base = name.rpartition("/")
    return base if parent == CONFIG and UCI_NAME.fullmatch(base) else None


def _content(reader, entry) -> bytes | _TooBig:
    if entry.type != archive.FILE:
        return _TooBig("not a regular file")
    if entry.size > MAX_FILE:
        return _TooBig(f"larger than {MAX_FILE // 1024} KiB")
    return b"".join(bytes(chunk) for chunk in reader.chunks())


def _hides(name: str) -> bool:
    """Whether a whiteout or opaque directory at `name` hides all of /etc/config below it."""
    return CONFIG == name or CONFIG.startswith(name + "/")


def _versions(chain: Chain, index: int, rom: Path | None) -> dict[str, tuple]:
    """package -> (before, after) for each file snapshot `index` touched; None where the file
    does not exist."""
    before: dict[str, bytes | _TooBig | None] = {}
    rom_visible = rom is not None
    for record in chain.snapshots[:index - 1]:
        for reader, entry in entries_of(chain, record):
            name = clean_name(entry.name)
            if (entry.is_whiteout or entry.is_opaque) and _hides(name):
                before = {package: None for package in before}
                rom_visible = False
            package = _package(name)
            if package is not None:
                before[package] = None if entry.is_whiteout else _content(reader, entry)
    after: dict[str, bytes | _TooBig | None] = {}
    hidden = False
    for reader, entry in entries_of(chain, snapshot_record(chain, index)):
        name = clean_name(entry.name)
        if (entry.is_whiteout or entry.is_opaque) and _hides(name):
            hidden = True
        package = _package(name)
        if package is not None:
            after[package] = None if entry.is_whiteout else _content(reader, entry)

    def earlier(package: str):
        if package in before:
            return before[package]
        path = rom / CONFIG / package if rom_visible else None
        if path is None or not path.is_file() or path.is_symlink():
            return None
        if path.stat().st_size > MAX_FILE:
            return _TooBig(f"larger than {MAX_FILE // 1024} KiB")
        return path.read_bytes()

    touched = set(after)
    if hidden:
        # An opaque or removed /etc/config drops every file the snapshot does not bring.
        known = set(before) | ({p.name for p in (rom / CONFIG).iterdir() if _package(
            f"{CONFIG}/{p.name}")} if rom_visible and (rom / CONFIG).is_dir() else set())
        touched |= known
    return {package: (earlier(package), after.get(package)) for package in sorted(touched)}


def _show(package: str, content: bytes | None, uci: str) -> dict[str, str | list[str]]:
    """Every section and option of one version of the file as uci shows it."""
    if content is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="snapshot-uci.") as tmp:
        (Path(tmp) / package).write_bytes(content)
        done = subprocess.run([uci, "-c", tmp, "-t", os.path.join(tmp, ".save"), "show",
                               package], capture_output=True)
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise SnapshotError(f"uci cannot read it ({reason[-1] if reason else 'no reason'})")
    options: dict[str, str | list[str]] = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        items = [item.replace("'\\''", "'") for item in _QUOTED.findall(value)]
        # A section's line gives its type unquoted; a list option several quoted items.
        options[key] = value if not items else items[0] if len(items) == 1 else items
    return options


def _uci() -> str:
    uci = shutil.which("uci")
    if uci is None:
        raise SnapshotError("uci is not installed: `show --uci` reads the configuration "
                            "with it, as the router does")
    return uci


def changes(chain: Chain, index: int, rom: Path | None = None) -> list[dict]:
    """For each configuration file snapshot `index` touched: {"config": package, "changes":
    [{"option", "old", "new"}, ...]} (old or new None where the option or section is new or
    gone), or {"config", "problem"} where a version could not be compared."""
    uci = _uci()
    found = []
    for package, (old, new) in _versions(chain, index, rom).items():
        problem = next((f"{which} snapshot {index}: {v.why}" for which, v in
                        (("before", old), ("after", new)) if isinstance(v, _TooBig)), None)
        if problem is None:
            try:
                was, now = _show(package, old, uci), _show(package, new, uci)
            except SnapshotError as e:
                problem = str(e)
        if problem is not None:
            found.append({"config": package, "problem": problem})
            continue
        diff = [{"option": key, "old": was.get(key), "new": now.get(key)}
                for key in sorted(set(was) | set(now), key=_order(was, now))
                if was.get(key) != now.get(key)]
        found.append({"config": package, "changes": diff})
    return found


def _order(was: dict, now: dict):
    """Options in the order uci shows them: the new file's, then those only the old had."""
    position = {key: i for i, key in enumerate(list(now) + [k for k in was if k not in now])}
    return position.__getitem__
