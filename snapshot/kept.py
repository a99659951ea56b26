"""Small JSON records kept in RAM between commands (/tmp/snapshot: the running job, the last
health round, the last fleet poll, the package wing's marks, the booted device, the firmware
root's identity). A reboot forgets them.

Each is replaced whole: written to a temporary file of this process's own, then renamed into
place, so a reader never sees half of one, and two writers never write into the same
temporary file. A record that cannot be read, or is not a JSON object, reads as none: /tmp
is anybody's, and what is kept there is advice, never trusted over the flash.

Paths are strings (os.path), not pathlib: `status`, which LuCI polls through rpcd, and
`bundle apply` read these, and pathlib would add urllib.parse, ipaddress and fnmatch to
every start of theirs. JSON is read and written by mtd/jsontext.py, without the json module
(which, with the re and enum it imports, costs about as much as Python's own start-up).
"""
import os

from mtd.jsontext import dumps, loads


def read(path) -> dict | None:
    """The record at `path`, or None if there is none, or it is damaged or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            found = loads(f.read())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def forget(path) -> None:
    """Remove the file at `path`, if there is one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write(path, record: dict) -> None:
    """Replace the record at `path` whole (its directory made if need be). OSError if it
    cannot; the old record is then left as it was."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    partial = os.path.join(folder, f".{name}.{os.getpid()}")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.write(dumps(record))
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
