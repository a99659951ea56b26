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

#: The standard library's C extension modules, by the module of SPLIT whose package ships
#: each (the feed's python3-package-*.mk list them with it).
EXTENSIONS = {
    "_asyncio": "asyncio",
    "_codecs_cn": "unicodedata", "_codecs_hk": "unicodedata", "_codecs_iso2022": "unicodedata",
    "_codecs_jp": "unicodedata", "_codecs_kr": "unicodedata", "_codecs_tw": "unicodedata",
    "_ctypes": "ctypes", "_ctypes_test": "ctypes",
    "_curses": "curses", "_curses_panel": "curses",
    "_dbm": "dbm", "_gdbm": "dbm",
    "_decimal": "decimal",
    "_lzma": "lzma",
    "_multiprocessing": "multiprocessing", "_posixshmem": "multiprocessing",
    "_ssl": "ssl", "_hashlib": "ssl",
    "_sqlite3": "sqlite3",
    "_uuid": "uuid",
    "_elementtree": "xml",
}

#: Standard library modules python3-light ships, as far as snapshot imports them. Named one
#: by one: a new import fails the test until someone has checked where OpenWrt puts it.
LIGHT = {
    "_operator",    # built into the interpreter (operator's C half)
    "base64", "binascii", "collections", "contextlib", "dataclasses", "enum", "errno", "fcntl",
    "gc", "gzip", "hashlib", "http", "io",
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

#: The DEPENDS of the feed's packages above, as far as they name Python packages (their
#: Makefiles: lang/python/python-click, python-cffi, python-pycparser).
FEED_DEPENDS = {
    "python3-click": {"python3-light", "python3-urllib", "python3-uuid"},
    "python3-cffi": {"python3-light", "python3-pycparser"},
    "python3-pycparser": {"python3-light", "python3-ply"},
}

#: This repository's own packages.
OWN = {"snapshot", "mtd"}


#: What python3-light's filespec leaves out besides ABSENT: the test suites (also every
#: package's test/ and tests/), the test extension modules, and pdb's help text.
LIGHT_LEAVES_OUT = {"test", "pdb.doc",
                    # Debian's, not CPython's: its sitecustomize.py (which imports apport's
                    # hook into every start) is in no OpenWrt package, and would weigh on
                    # every start-up measured on the router, `python3 -c pass` included.
                    "sitecustomize.py"}


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


def stdlib_package(name: str) -> str | None:
    """The OpenWrt package shipping a top-level entry of the standard library directory or of
    its lib-dynload (None: one python3-light leaves out)."""
    module = name.split(".")[0]
    if module in ABSENT or name in LIGHT_LEAVES_OUT or module.startswith("_test"):
        return None
    return SPLIT.get(EXTENSIONS.get(module, module), "python3-light")


def beyond(stdlib: Path, packages: set[str]) -> list[Path]:
    """The files and directories of a CPython standard library (/usr/lib/python3.X) that none
    of the OpenWrt packages `packages` ships: what a router with only those lacks."""
    found = []
    for entry in [*stdlib.iterdir(), *(stdlib / "lib-dynload").iterdir()]:
        if entry.name in ("lib-dynload", "site-packages", "dist-packages"):
            continue
        if stdlib_package(entry.name) not in packages:
            found.append(entry)
        elif entry.is_dir():
            found += [sub for sub in entry.rglob("test*")
                      if sub.is_dir() and sub.name in ("test", "tests")]
    return found


def closure(packages: set[str]) -> set[str]:
    """packages and every Python package they depend on: what a router installing them has."""
    found, todo = set(), set(packages)
    while todo:
        package = todo.pop()
        found.add(package)
        todo |= FEED_DEPENDS.get(package, set()) - found
    return found
