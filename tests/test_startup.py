"""A command pays for its own imports only (snapshot/cli/common.py, Group): on a router's
CPU, start-up is most of a short command (bench/bench_startup.py measures it). These check
what is imported, never how long it takes."""
import json
import subprocess
import sys

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot.cli import common
from clirun import commands, ok

KIB = 1024

#: What `list` and `status` must never import: the tree layer and its tar and compressors, the
#: engine's writers, the wings, the HTTP stack, the subprocess machinery and the compiled
#: MTD bindings (the image is simulated).
HEAVY = {"tarfile", "lzma", "bz2", "gzip", "shutil", "subprocess", "http.client", "ssl",
         "email", "urllib.request", "snapshot.operations", "snapshot.tree.archive",
         "snapshot.tree.capture", "snapshot.tree.restore", "snapshot.fleet.bundle",
         "snapshot.fleet.channel", "snapshot.fleet.fetch", "snapshot.health.checks",
         "snapshot.packages.transaction", "snapshot.packages.upgrade", "mtd.device",
         "mtd.ubi"}

IMPORTS = """
import json, sys
from snapshot.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_by(*args) -> set[str]:
    done = subprocess.run([sys.executable, "-c", IMPORTS, *map(str, args)],
                          capture_output=True, text=True, check=True)
    return set(json.loads(done.stderr.splitlines()[-1]))


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
    modules = imported_by("--device", image, command)
    assert "snapshot.cli.listing" in modules
    assert not modules & HEAVY, modules & HEAVY
    assert not {m for m in modules if m.startswith("snapshot.cli.")} - {
        "snapshot.cli.common", "snapshot.cli.listing"}
