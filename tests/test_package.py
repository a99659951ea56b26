"""The feed package, openwrt-package/snapshot: what it installs on a router, and its DEPENDS.

Its recipes run through tests/openwrt_package/harness.mk (tests/package_stage.py) with
OpenWrt's INSTALL_DIR, INSTALL_BIN, INSTALL_DATA and INSTALL_CONF into a staging root. That
proves the paths and modes the package gives every file; it cannot prove that an OpenWrt
buildroot builds the package (no buildroot here: harness.mk says what stands in for it).
scripts/build-router.sh installs the real router's root by the same recipes.
"""
import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import openwrt_python
import package_stage
from snapshot import config

REPO = package_stage.REPO

#: Every file of the package but the Python packages, with its mode: commands and scripts
#: run by path 0755 (INSTALL_BIN), files read or sourced 0644 (INSTALL_DATA; /etc/preinit
#: sources the preinit hook), the UCI configuration 0600 (INSTALL_CONF).
FILES = {
    "sbin/snapshot": 0o755,
    "lib/preinit/81_snapshot": 0o644,
    "lib/snapshot/convert-stage": 0o755,
    "etc/init.d/snapshot": 0o755,
    "etc/config/snapshot": 0o600,
    "lib/upgrade/keep.d/snapshot": 0o644,
    "usr/libexec/rpcd/snapshot": 0o755,
    "usr/share/rpcd/acl.d/snapshot.json": 0o644,
    "etc/apk/commit_hooks.d/snapshot": 0o755,
    "usr/sbin/opkg": 0o755,
}

#: The package's files that are this repository's, and where they are in it (the others
#: are the package's own, in openwrt-package/snapshot/files/).
FROM_THE_REPOSITORY = {rel: f"initscripts/{rel}" for rel in (
    "lib/preinit/81_snapshot", "lib/snapshot/convert-stage", "etc/init.d/snapshot",
    "etc/config/snapshot", "usr/libexec/rpcd/snapshot", "usr/share/rpcd/acl.d/snapshot.json",
    "etc/apk/commit_hooks.d/snapshot", "usr/sbin/opkg")}

#: What python3-light, python3-click and python3-cffi are in DEPENDS for whatever the code
#: imports: the interpreter (with zlib, whose crc32 the format uses), the CLI, the MTD binding.
ALWAYS = {"python3-light", "python3-click", "python3-cffi"}


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> package_stage.Staged:
    return package_stage.stage(tmp_path_factory.mktemp("package"))


def files_outside_site_packages(root: Path) -> dict[str, str]:
    """Path -> octal mode of everything but directories outside site-packages."""
    site = root / package_stage.SITE_PACKAGES
    return {str(path.relative_to(root)): f"{stat.S_IMODE(path.lstat().st_mode):o}"
            for path in root.rglob("*") if not path.is_dir() and site not in path.parents}


def test_the_package_installs_each_router_file_at_its_path_with_its_mode(staged):
    assert files_outside_site_packages(staged.root) == {rel: f"{mode:o}"
                                                        for rel, mode in FILES.items()}


def test_every_directory_install_dir_makes_is_0755(staged):
    """(site-packages and below are copied from the build, with the build's modes.)"""
    site = staged.site_packages
    modes = {str(path.relative_to(staged.root)): stat.S_IMODE(path.stat().st_mode)
             for path in staged.root.rglob("*") if path.is_dir() and path != site
             and site not in path.parents}
    assert {rel: f"{mode:o}" for rel, mode in modes.items() if mode != 0o755} == {}


def test_the_router_files_are_the_repository_s(staged):
    for rel, source in FROM_THE_REPOSITORY.items():
        assert (staged.root / rel).read_bytes() == (REPO / source).read_bytes(), rel


def test_sbin_snapshot_is_a_python3_launcher(staged):
    assert (staged.root / "sbin/snapshot").read_text().startswith("#!/usr/bin/python3\n")


def test_the_python_packages_are_byte_compiled_with_the_compiled_mtd_and_ubi_bindings(staged):
    site = staged.site_packages
    want = {str(path.relative_to(REPO).with_suffix(".pyc"))
            for top in ("snapshot", "mtd") for path in (REPO / top).rglob("*.py")}
    want.discard("mtd/build_abi.pyc")
    got = {str(path.relative_to(site)) for path in site.rglob("*.pyc")}
    assert got == want
    assert "snapshot/cli/__init__.pyc" in got
    # The bindings the build compiled (cffi_modules in setup.py), named as mtd/build_abi.py
    # names them, for the interpreter's ABI.
    assert sorted(path.name for path in site.glob("mtd/_*_abi*.so")) == \
        ["_mount_abi.abi3.so", "_mtd_abi.abi3.so", "_ubi_abi.abi3.so"]
    # Sources and what only the build reads stay out, as python3-package.mk leaves them.
    assert not list(staged.root.rglob("*.py"))
    assert not [name for name in ("mtd_abi.h", "ubi_abi.h", "mount_abi.h")
                if (site / "mtd" / name).exists()]


def test_the_staged_command_runs_from_the_staged_packages_alone(staged, tmp_path):
    """/sbin/snapshot runs with the staged site-packages and the venv's click and cffi,
    nothing of the checkout: -S leaves out the venv's .pth files (the editable install)."""
    env = {**os.environ, "PYTHONPATH": f"{staged.site_packages}:{sysconfig.get_paths()['purelib']}"}
    python = [sys.executable, "-S"]
    done = subprocess.run([*python, staged.root / "sbin/snapshot", "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: snapshot [OPTIONS] COMMAND [ARGS]...")
    where = subprocess.run([*python, "-c", "import snapshot, mtd._mtd_abi as abi; "
                            "print(snapshot.__file__); print(abi.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.split() == [str(staged.site_packages / "snapshot/__init__.pyc"),
                                    str(staged.site_packages / "mtd/_mtd_abi.abi3.so")]


def test_the_configuration_is_a_conffile(staged):
    assert staged.field("snapshot.conffiles").split() == [config.DEFAULT_PATH]


def test_sysupgrade_keeps_the_configuration_and_the_directories_it_names(staged):
    lines = (staged.root / "lib/upgrade/keep.d/snapshot").read_text().splitlines()
    kept = [line for line in lines if line.strip() and not line.startswith("#")]
    assert kept == ["/etc/config/snapshot", "/etc/snapshot/"]
    configured = [config.DEFAULT_PATH, config.DEFAULTS["health_dir"],
                  config.DEFAULTS["rollback_dir"]]
    assert [path for path in configured if not any(
        path == keep or keep.endswith("/") and path.startswith(keep) for keep in kept)] == []


def test_the_postinst_makes_a_running_rpcd_rescan_and_leaves_an_image_alone(staged, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "killall").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/killed\n')
    (bin_dir / "killall").chmod(0o755)
    script = tmp_path / "postinst"
    script.write_text(staged.field("snapshot.postinst"))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    image = subprocess.run(["sh", script], env={**env, "IPKG_INSTROOT": str(staged.root)})
    assert image.returncode == 0 and not (tmp_path / "killed").exists()
    env.pop("IPKG_INSTROOT", None)
    running = subprocess.run(["sh", script], env=env)
    assert running.returncode == 0
    assert (tmp_path / "killed").read_text() == "-HUP rpcd\n"


def test_the_package_definition(staged):
    assert staged.field("built").split() == ["snapshot", "snapshot-src"]
    assert (staged.field("snapshot.SECTION"), staged.field("snapshot.CATEGORY")) == \
        ("utils", "Utilities")
    # fstools' snapshot-tool installs /sbin/snapshot as well.
    assert staged.field("snapshot.CONFLICTS") == "snapshot-tool"


def test_the_package_version_is_the_python_package_s(staged):
    """python3-package.mk installs the wheel named after PKG_VERSION."""
    (info,) = staged.site_packages.glob("snapshot-*.egg-info")
    version = next(line.split(": ", 1)[1] for line in (info / "PKG-INFO").read_text().splitlines()
                   if line.startswith("Version: "))
    makefile = (package_stage.PACKAGE / "Makefile").read_text()
    assert f"\nPKG_VERSION:={version}\n" in makefile


def test_depends_names_the_package_of_every_module_the_code_imports(staged):
    derived = openwrt_python.depends(REPO / "snapshot", REPO / "mtd") | ALWAYS
    depends = staged.field("snapshot.DEPENDS").split()
    assert len(depends) == len(set(depends)), depends
    assert set(depends) == {f"+{package}" for package in derived}


def test_an_import_the_table_cannot_place_fails_naming_the_module(tmp_path):
    (tmp_path / "new.py").write_text("import json\nfrom pickletools import dis\n")
    with pytest.raises(openwrt_python.Unplaced, match=r"new.py:2 imports pickletools, and "
                       r"tests/openwrt_python.py does not say which OpenWrt package ships it"):
        openwrt_python.depends(tmp_path)


def test_the_table_names_only_standard_library_modules_as_such():
    named = set(openwrt_python.SPLIT) | openwrt_python.LIGHT | openwrt_python.ABSENT
    assert named - sys.stdlib_module_names == set()
    assert set(openwrt_python.FEED) & sys.stdlib_module_names == set()
