"""The feed package (openwrt-package/snapshot) staged as an OpenWrt build would install it:
tests/openwrt_package/harness.mk runs its Build/Prepare, a build of its Python packages by
this interpreter, and its Package/snapshot/install into a staging root. What that proves, and
what it cannot, is said at the top of harness.mk.

install_root() makes a router's root of a staged package for the kernel tier's guest, which
has no Python of its own.
"""
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "openwrt-package" / "snapshot"
HARNESS = REPO / "tests" / "openwrt_package" / "harness.mk"
PYTHON_LIB = f"usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
#: python3-package.mk's PYTHON3_PKG_DIR, for this interpreter's version.
SITE_PACKAGES = f"{PYTHON_LIB}/site-packages"


@dataclass
class Staged:
    root: Path   # the package's files, as the router gets them
    info: Path   # what BuildPackage read: one file per field (harness.mk's `info`)

    @property
    def site_packages(self) -> Path:
        return self.root / SITE_PACKAGES

    def field(self, name: str) -> str:
        # make's file function ends what it writes with a newline.
        return (self.info / name).read_text().removesuffix("\n")


def make(work: Path, target: str) -> None:
    done = subprocess.run(["make", "-s", "-C", str(PACKAGE), "-f", str(HARNESS),
                           f"WORK={work}", f"HOST_PYTHON3_BIN={sys.executable}", target],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"harness.mk {target} failed (exit {done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")


def stage(work: Path) -> Staged:
    for target in ("prepare", "compile", "install", "info"):
        make(work, target)
    return Staged(work / "root", work / "info")


#: The feed packages snapshot depends on (and python3-cffi's python3-pycparser), as the
#: host's venv has them: the top-level modules each puts into site-packages.
STAND_INS = {"python3-click": ("click",), "python3-cffi": ("cffi", "_cffi_backend"),
             "python3-pycparser": ("pycparser",)}


def install_root(staged: Staged, tree: Path, host: str) -> None:
    """Install the staged package into the router's root `tree`, where the host's tree is
    reached at `host` (an absolute path in the router), and stand in for python3-light
    and the python3-* packages.

    The router's /usr is the host's, but for the package's files: each directory of /usr
    the package installs into is a directory of its own, holding symlinks to the host's
    entries beside the package's. The package's /usr/bin/python3 is the interpreter of
    this venv, whose prefix /usr/pyvenv.cfg makes /usr as on OpenWrt, so that it finds
    the staged packages where OpenWrt's does, in /usr/lib/python3.X/site-packages, and
    nothing of the checkout; click and cffi are this venv's, linked there.
    """
    shutil.copytree(staged.root, tree, symlinks=True, dirs_exist_ok=True)
    base = Path(os.path.realpath(sys._base_executable))
    (tree / "usr/bin").mkdir(parents=True, exist_ok=True)
    (tree / "usr/bin/python3").symlink_to(base)
    (tree / "usr/pyvenv.cfg").write_text(f"home = {base.parent}\n"
                                         "include-system-site-packages = false\n")
    # An interpreter whose own prefix is /usr (Debian's) reads dist-packages instead.
    (tree / PYTHON_LIB / "dist-packages").symlink_to("site-packages")
    for modules in STAND_INS.values():
        for module in modules:
            origin = Path(find_spec(module).origin)
            source = origin.parent if origin.name == "__init__.py" else origin
            (tree / SITE_PACKAGES / source.name).symlink_to(source)
    for directory, dirs, files in os.walk(tree / "usr"):
        here = Path(directory)
        theirs = Path("/") / here.relative_to(tree)
        if theirs.is_dir() and not theirs.is_symlink():
            for name in sorted(set(os.listdir(theirs)) - set(dirs) - set(files)):
                (here / name).symlink_to(f"{host}{theirs / name}")
