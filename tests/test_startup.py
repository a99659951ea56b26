"""A command pays for its own imports only (snapshot/cli/common.py, Group), and the commands a
router runs most do without click (snapshot/cli/door.py): on a router's CPU, start-up is most
of a short command (bench/bench_startup.py measures it). These check what is imported, never
how long it takes."""
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot.cli import common
from clirun import commands, ok

KIB = 1024

#: What `list` and `status` must never import: click, the tree layer and its tar and
#: compressors, the engine's writers, the wings, the HTTP stack, the subprocess machinery, the
#: compiled MTD bindings (the image is simulated), and the standard library's heavier
#: modules for start-up (each a tenth or more of `list` on a router's CPU). `status` reads
#: the JSON records kept in RAM (snapshot/kept.py), and json brings re and enum; `list`
#: imports none of them (LIST_HEAVY), nor does the simulator that opens the image here
#: (mtd/jsontext.py).
HEAVY = {"click", "dataclasses", "inspect", "typing", "contextlib", "pathlib",
         "tarfile", "lzma", "bz2", "gzip", "shutil", "subprocess", "shlex", "http.client", "ssl",
         "email", "urllib.request", "snapshot.operations", "snapshot.tree.archive",
         "snapshot.tree.capture", "snapshot.tree.restore", "snapshot.fleet.bundle",
         "snapshot.fleet.channel", "snapshot.fleet.fetch", "snapshot.health.checks",
         "snapshot.packages.transaction", "snapshot.packages.upgrade", "mtd.device",
         "mtd.ubi"}
LIST_HEAVY = HEAVY | {"json", "re", "enum"}

IMPORTS = """
import sys
from mtd.sim import SimFlash
SimFlash(sys.argv[1]).close()
simulator = set(sys.modules)
from snapshot.__main__ import run
sys.argv = ["snapshot", *sys.argv[2:]]
try:
    run()
finally:
    print(" ".join(sorted(set(sys.modules) - simulator)), file=sys.stderr)
"""


def imported_by(image: Path, *args, env: dict | None = None) -> set[str]:
    """The modules `snapshot ARGS...` imports beyond what opening the simulated IMAGE imports,
    as a router's interpreter runs it: -S, so that what this virtualenv's site imports (its
    editable install's finder imports enum, contextlib and re) is not counted as the
    command's."""
    path = os.pathsep.join([str(Path(__file__).resolve().parent.parent), *site.getsitepackages()])
    done = subprocess.run([sys.executable, "-S", "-c", IMPORTS, str(image), *map(str, args)],
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=path, **(env or {})))
    return set(done.stderr.splitlines()[-1].split())


def test_every_command_is_found_in_the_family_the_group_names():
    found = commands()
    assert set(found) == set(common.Group.FAMILIES)
    for name, command in found.items():
        family = command.callback.__module__ if command.callback else None
        assert family in (None, f"snapshot.cli.{common.Group.FAMILIES[name]}"), name


@pytest.mark.parametrize("command", ["list", "status"])
def test_list_and_status_import_nothing_of_the_tree_layer_nor_the_wings_code(tmp_path, command):
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0))
    ok(image, "format")
    modules = imported_by(image, "--device", image, command)
    assert "snapshot.cli.hot" in modules and "snapshot.store.chain" in modules
    heavy = LIST_HEAVY if command == "list" else HEAVY
    assert not modules & heavy, modules & heavy
    assert not {m for m in modules if m.startswith("snapshot.cli.")} - {
        "snapshot.cli.door", "snapshot.cli.hot", "snapshot.cli.plain"}


def test_list_with_the_device_from_the_configuration_reads_it_without_uci_or_shlex(tmp_path):
    """As on a router, where `snapshot list` names no device: the configuration is read by
    the file parser (no uci process: it has no saved changes), and nothing heavy is imported
    for it."""
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0))
    ok(image, "format")
    settings = tmp_path / "snapshot"
    settings.write_text(f"config snapshot 'main'\n\toption device '{image}'\n")
    modules = imported_by(image, "list", env={"SNAPSHOT_CONFIG": str(settings)})
    assert "snapshot.config" in modules and "snapshot.store.chain" in modules
    assert not modules & LIST_HEAVY, modules & LIST_HEAVY


#: What boot's one Python process must not import to mount the chain: the writers' tar and
#: compressors, dataclasses (and with it inspect, ast, dis), typing, the subprocess
#: machinery; each a large part of the boot's start-up on a router's CPU
#: (bench/bench_router_boot.py).
BOOT_HEAVY = {"click", "dataclasses", "inspect", "typing", "tarfile", "lzma", "bz2", "shutil",
              "subprocess", "snapshot.tree.capture", "snapshot.fleet.bundle", "ssl", "email",
              "http.client"}


def test_the_mount_imports_none_of_the_writers_or_dataclasses():
    path = os.pathsep.join([str(Path(__file__).resolve().parent.parent), *site.getsitepackages()])
    done = subprocess.run([sys.executable, "-S", "-c", "import sys; import snapshot.boot, "
                           "snapshot.cli.door, snapshot.cli.hot; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=path))
    modules = set(done.stdout.split())
    assert "snapshot.boot" in modules and "snapshot.tree.restore" in modules
    assert not modules & BOOT_HEAVY, modules & BOOT_HEAVY
