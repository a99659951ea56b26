"""The router's package manager, as `snapshot upgrade` and the automatic snapshots drive it:
apk on OpenWrt 25.12 and later, opkg on 24.10 and older (../shared/reference/lifecycle.md
§1-2 has the facts each parser below relies on).

Every failing step raises a PackageError whose exit code says which step failed (README,
"Exit status"); its message is one line with what the package manager said.
"""
import gzip
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from snapshot.errors import SnapshotError


class PackageError(SnapshotError):
    """A step of a package transaction failed; nothing was written to flash."""


class FeedsUnavailable(PackageError):
    exit_code = 10


class BadSignature(PackageError):
    exit_code = 11


class InstallFailed(PackageError):
    exit_code = 12


class PartialUpgrade(PackageError):
    exit_code = 13


class NoPackageManager(PackageError):
    exit_code = 1


@dataclass(frozen=True)
class Change:
    name: str
    old: str | None     # None: newly installed
    new: str | None     # None: removed

    def __str__(self) -> str:
        if self.old is None:
            return f"add {self.name} {self.new}"
        if self.new is None:
            return f"del {self.name} {self.old}"
        return f"{self.name} {self.old} -> {self.new}"


@dataclass(frozen=True)
class Size:
    download: int       # bytes fetched: what a snapshot of the files takes, roughly
    installed: int      # bytes unpacked: what the files take in the RAM layer


def _last_lines(text: str, pattern: str = "") -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    picked = [line for line in lines if pattern and re.search(pattern, line)]
    return "; ".join((picked or lines)[-2:]) or "no output"


class PackageManager:
    name = ""
    #: Files of the package database, relative to the root: what says a transaction
    #: changed something.
    database: tuple[str, ...] = ()

    def __init__(self, root: Path = Path("/"), command: list[str] | None = None,
                 env: dict | None = None):
        self.root = Path(root)
        self.command = command or [self.name]
        self.env = env

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        """The package manager run with `args`. A package name comes from a feed: it goes
        after `--` (opkg and apk both take it), so that one named `--force-depends` can never
        be an option."""
        try:
            return subprocess.run([*self.command, *args], capture_output=True, text=True,
                                  env=self.env, errors="replace")
        except OSError as e:
            raise NoPackageManager(f"{self.command[0]}: {e.strerror}") from None

    def installed(self) -> dict[str, str]:
        raise NotImplementedError

    def changes(self, before: dict[str, str], after: dict[str, str]) -> list[Change]:
        """What a transaction did, from the installed packages before and after it."""
        names = sorted(set(before) | set(after))
        return [Change(n, before.get(n), after.get(n)) for n in names
                if before.get(n) != after.get(n)]


class Apk(PackageManager):
    name = "apk"
    database = ("lib/apk/db/installed", "etc/apk/world")

    CHANGE = re.compile(r"^\(\s*\d+/\d+\)\s+(Upgrading|Downgrading|Installing|Replacing)\s+"
                        r"(\S+?)(?:@\S+)?\s+\((?:(\S+)\s+->\s+)?(\S+)\)")

    def installed(self) -> dict[str, str]:
        """name -> version, read from the database file (no apk run)."""
        found, name = {}, None
        try:
            text = (self.root / "lib/apk/db/installed").read_text(errors="replace")
        except OSError:
            return {}
        for line in text.splitlines():
            if line.startswith("P:"):
                name = line[2:]
            elif line.startswith("V:") and name:
                found[name] = line[2:]
        return found

    def _failed(self, result, what: str):
        output = result.stdout + result.stderr
        if "UNTRUSTED" in output or "signature" in output.lower():
            return BadSignature(f"apk {what}: a bad or untrusted signature: "
                                f"{_last_lines(output, 'UNTRUSTED|signature')}")
        if "unavailable" in output or "stale" in output or "fetch" in output.lower():
            return FeedsUnavailable(f"apk {what}: a repository cannot be reached: "
                                    f"{_last_lines(output, 'unavailable|stale|fetch|ERROR')}")
        return InstallFailed(f"apk {what} failed (exit {result.returncode}): "
                             f"{_last_lines(output, 'ERROR')}")

    def update(self) -> None:
        result = self._run("update")
        output = result.stdout + result.stderr
        if result.returncode != 0 or "UNTRUSTED" in output:
            raise self._failed(result, "update")

    def pending(self) -> list[Change]:
        """What `apk upgrade` would do, from its simulation."""
        result = self._run("upgrade", "--simulate")
        if result.returncode != 0:
            raise self._failed(result, "upgrade --simulate")
        changes = []
        for line in result.stdout.splitlines():
            match = self.CHANGE.match(line.strip())
            if match:
                verb, name, old, new = match.groups()
                changes.append(Change(name, old if verb != "Installing" else None, new))
        return changes

    def sizes(self, changes: list[Change]) -> dict[str, Size]:
        result = self._run("query", "--format", "json", "--upgradable", "--fields",
                           "name,version,installed-size,file-size", "*")
        found = {}
        try:
            for item in json.loads(result.stdout or "[]"):
                found[item["name"]] = Size(int(item.get("file-size") or 0),
                                           int(item.get("installed-size") or 0))
        except (ValueError, KeyError, TypeError):
            pass
        return found

    def upgrade(self, changes: list[Change]) -> None:
        result = self._run("upgrade")
        if result.returncode != 0:
            raise self._failed(result, "upgrade")


class Opkg(PackageManager):
    name = "opkg"
    database = ("usr/lib/opkg/status",)
    LISTED = re.compile(r"^(\S+) - (\S+) - (\S+)$")

    def installed(self) -> dict[str, str]:
        found, name = {}, None
        try:
            text = (self.root / "usr/lib/opkg/status").read_text(errors="replace")
        except OSError:
            return {}
        for line in text.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Version:") and name:
                found[name] = line.split(":", 1)[1].strip()
            elif line.startswith("Status:") and name and "installed" not in line:
                found.pop(name, None)
        return found

    def _feeds(self) -> tuple[list[str], Path]:
        """The feeds opkg's configuration names, and its lists directory."""
        names, lists = [], self.root / "var/opkg-lists"
        conf = [self.root / "etc/opkg.conf"] + sorted((self.root / "etc/opkg").glob("*.conf"))
        for path in conf:
            try:
                text = path.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                words = line.split()
                if len(words) >= 3 and words[0] in ("src", "src/gz"):
                    names.append(words[1])
                elif len(words) >= 3 and words[0] == "lists_dir":
                    lists = self.root / words[2].lstrip("/")
        return names, lists

    def update(self) -> None:
        result = self._run("update")
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise FeedsUnavailable(f"opkg update: {result.returncode} feed(s) failed: "
                                   f"{_last_lines(output, 'rror|ailed')}")
        # opkg deletes a list whose signature is bad and still exits 0; a corrupt list
        # reads as empty.
        names, lists = self._feeds()
        for name in names:
            path = lists / name
            if "ignature" in output and ("fail" in output or "bad" in output.lower()):
                raise BadSignature(f"opkg update: the signature of feed {name} does not "
                                   f"verify: {_last_lines(output, 'ignature')}")
            if not path.exists():
                raise BadSignature(f"opkg update: feed {name} has no verified package list "
                                   f"(a bad signature?): {_last_lines(output)}")
            if _list_is_empty(path):
                raise FeedsUnavailable(f"opkg update: feed {name}'s package list is empty "
                                       f"or corrupt")

    def pending(self) -> list[Change]:
        result = self._run("list-upgradable")
        changes = []
        for line in result.stdout.splitlines():
            match = self.LISTED.match(line.strip())
            if match:
                changes.append(Change(*match.groups()))
        return changes

    def sizes(self, changes: list[Change]) -> dict[str, Size]:
        found = {}
        for change in changes:
            result = self._run("info", "--", change.name)
            stanza, version = {}, None
            for line in result.stdout.splitlines() + [""]:
                if not line.strip():
                    if version == change.new and stanza:
                        size = int(stanza.get("Size", "0") or 0)
                        found[change.name] = Size(size, int(stanza.get("Installed-Size",
                                                                       size * 3) or 0))
                    stanza, version = {}, None
                    continue
                key, _, value = line.partition(":")
                stanza[key.strip()] = value.strip()
                if key.strip() == "Version":
                    version = value.strip()
        return found

    def upgrade(self, changes: list[Change]) -> None:
        before = self.installed()
        result = self._run("upgrade", "--", *[c.name for c in changes])
        output = result.stdout + result.stderr
        after = self.installed()
        if result.returncode == 0:
            # With the layer it writes into full, opkg exits 0 having written the files
            # empty and its status file emptied: the database says what really happened.
            missing = [c for c in changes if after.get(c.name) != c.new]
            if missing:
                raise InstallFailed(f"opkg upgrade exited 0 but {missing[0].name} is not at "
                                    f"{missing[0].new} (the RAM layer full?): "
                                    f"{_last_lines(output, 'rror|Couldn|ailed')}")
            return
        done = [c for c in changes if after.get(c.name) == c.new]
        detail = _last_lines(output, "rror|ailed|postinst")
        if done and len(done) < len(changes) or (done and after != before):
            raise PartialUpgrade(f"opkg upgrade stopped part way: {len(done)} of "
                                 f"{len(changes)} upgraded ({detail})")
        raise InstallFailed(f"opkg upgrade failed (exit {result.returncode}): {detail}")


def _list_is_empty(path: Path) -> bool:
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return True
    return b"Package:" not in data


def detect(root: Path = Path("/")) -> PackageManager:
    """apk where its database is (OpenWrt 25.12 and later), else opkg."""
    if (root / "lib/apk/db").is_dir() and shutil.which("apk"):
        return Apk(root)
    if shutil.which("opkg"):
        return Opkg(root)
    raise NoPackageManager("neither apk nor opkg is installed")
