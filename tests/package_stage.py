"""The feed package (openwrt-package/snapshot) staged as an OpenWrt build would install it:
tests/openwrt_package/harness.mk runs its Build/Prepare, a build of its Python packages by
this interpreter, and its Package/snapshot/install into a staging root. What that proves, and
what it cannot, is said at the top of harness.mk.
"""
import subprocess
import sys
from dataclasses import dataclass
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
