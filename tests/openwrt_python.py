"""Which OpenWrt package ships each module snapshot imports, so that the feed package's
DEPENDS can be derived from the code (tests/test_package.py).

The facts are the packages feed's, openwrt/packages@0521bb5 (Python 3.14):
lang/python/python3/Makefile ships the standard library as python3-light (which pulls in
python3-base, the interpreter), less idlelib, tkinter, turtledemo, webbrowser.py and
_osx_support.py, and less the modules lang/python/python3/files/python3-package-*.mk split
out into packages of their own (SPLIT). The other projects' packages are the feed's
lang/python/python-click and python-cffi.
"""
import ast
from pathlib import Path

#: Standard library modules split out of python3-light, by the package shipping each.
SPLIT = {
    "asyncio": "python3-asyncio",
    "unicodedata": "python3-codecs",
    "ctypes": "python3-ctypes",
    "dbm": "python3-dbm",
    "decimal": "python3-decimal",
    "logging": "python3-logging",
    "lzma": "python3-lzma",
    "multiprocessing": "python3-multiprocessing",
    "curses": "python3-ncurses",
    # hashlib stays in python3-light; its OpenSSL algorithms (_hashlib) do not.
    "ssl": "python3-openssl",
    "doctest": "python3-pydoc",
    "pydoc": "python3-pydoc",
    "pydoc_data": "python3-pydoc",
    "readline": "python3-readline",
    "sqlite3": "python3-sqlite3",
    "unittest": "python3-unittest",
    "email": "python3-urllib",
    "urllib": "python3-urllib",
    "uuid": "python3-uuid",
    "xml": "python3-xml",
    "xmlrpc": "python3-xml",
    "pyexpat": "python3-xml",
    "ensurepip": "python3-venv",
    "venv": "python3-venv",
}

#: Standard library modules python3-light ships, as far as snapshot imports them. Named one
#: by one: a new import fails the test until someone has checked where OpenWrt puts it.
LIGHT = {
    "base64", "contextlib", "dataclasses", "enum", "errno", "fcntl", "gc", "gzip", "hashlib",
    "http", "io",
    "json", "mmap", "os", "pathlib", "random", "re", "shlex", "shutil", "signal", "socket",
    "stat", "struct", "subprocess", "sys", "syslog", "tarfile", "tempfile", "time",
    "traceback",
    "typing", "zlib",
}

#: Standard library modules no OpenWrt package ships.
ABSENT = {"idlelib", "tkinter", "turtledemo", "webbrowser", "_osx_support"}

#: Other projects' modules, by the feed package shipping each.
FEED = {
    "click": "python3-click",
    "cffi": "python3-cffi",
    "_cffi_backend": "python3-cffi",
}

#: This repository's own packages.
OWN = {"snapshot", "mtd"}


class Unplaced(Exception):
    """An import this table cannot place in an OpenWrt package."""


def imports(top: Path) -> dict[str, list[str]]:
    """Top-level module -> where each .py file under top imports it (path:line)."""
    found: dict[str, list[str]] = {}
    for path in sorted(top.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(f"{path}:{node.lineno}")
    return found


def package_of(module: str, where: str) -> str | None:
    """The OpenWrt package shipping module (None: this repository's own)."""
    if module in OWN:
        return None
    if module in ABSENT:
        raise Unplaced(f"{where} imports {module}, which no OpenWrt package ships")
    package = SPLIT.get(module) or FEED.get(module) or ("python3-light" if module in LIGHT
                                                        else None)
    if package is None:
        raise Unplaced(
            f"{where} imports {module}, and tests/openwrt_python.py does not say which OpenWrt "
            f"package ships it: look it up in the packages feed (lang/python/python3/files/"
            f"python3-package-*.mk split modules out of python3-light; other projects' "
            f"modules have their own python3-* package), add it to the table, and to DEPENDS "
            f"in openwrt-package/snapshot/Makefile")
    return package


def depends(*tops: Path) -> set[str]:
    """The OpenWrt packages shipping every module the code under tops imports."""
    return {package for top in tops for module, where in imports(top).items()
            if (package := package_of(module, where[0])) is not None}
