"""The front door (snapshot/cli/door.py) starts list, status and mount without click. Each
form it takes must print and exit exactly as the click group does; every other command line
must reach the click group. Each case runs `snapshot ARGS` both ways, as processes."""
import os
import subprocess
import sys

import pytest

from mtd import FlashType, Geometry, SimFlash
from clirun import ok

KIB = 1024
DOOR = "import sys; sys.argv[0] = 'snapshot'; from snapshot.__main__ import run; run()"
CLICK = "import sys; from snapshot.cli import main; main(sys.argv[1:], prog_name='snapshot')"


def snapshot(code: str, args, env=None) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})))
    return done.returncode, done.stdout, done.stderr


def both(args, env=None) -> tuple[int, str, str]:
    """What `snapshot ARGS` gives through the door, checked to be what click gives."""
    door, group = snapshot(DOOR, args, env), snapshot(CLICK, args, env)
    assert door == group
    return door


@pytest.fixture
def chain(tmp_path):
    """A chain with a confirmed snapshot, one on trial with a message to escape, a volatile
    record."""
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0))
    ok(image, "format")
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "a").write_text("a")
    ok(image, "push", "--from", upper, "-m", "first")
    (upper / "b").write_text("b")
    ok(image, "push", "--from", upper, "--trial", "-m", "second\x1b[8m\nforged line")
    (upper / "c").write_text("c")
    ok(image, "save", "--from", upper)
    return image


@pytest.mark.parametrize("args", [
    ["list"], ["list", "--json"], ["status"], ["status", "--json"], ["list", "--json", "--json"],
], ids=" ".join)
def test_each_form_prints_and_exits_as_the_click_group_does(chain, args):
    for device in (["--device", chain], [f"--device={chain}"]):
        status, out, err = both([*device, *args])
        assert status == 0 and out and not err
    status, out, _ = both([*args, "--device", chain])
    assert status == 0 and "\x1b" not in out
    assert both(args, env={"SNAPSHOT_DEVICE": str(chain)})[1] == out


def test_a_device_after_the_command_wins_as_with_click(chain, tmp_path):
    status, out, _ = both(["--device", tmp_path / "missing.img", "list", "--device", chain])
    assert status == 0 and "first" in out


@pytest.mark.parametrize("device, message", [
    ("missing.img", "no such device or image"),
    ("plain-file", "not an MTD device, a UBI volume or a simulated flash image"),
])
def test_errors_are_the_same_one_line(tmp_path, device, message):
    (tmp_path / "plain-file").write_text("x")
    for command in ("list", "status"):
        status, out, err = both(["--device", tmp_path / device, command])
        assert status == 1 and not out
        assert err.count("\n") == 1 and err.startswith("Error: ") and message in err


def test_mount_of_a_device_without_a_chain_exits_6_both_ways(tmp_path):
    """What preinit runs at every boot: no chain (erased flash) is exit 6, nothing printed,
    nothing mounted; the stock mount_root then boots."""
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0))
    (tmp_path / "squashfs").mkdir()
    status, out, err = both(["--device", image, "mount", "--root", tmp_path / "squashfs",
                             "--target", tmp_path / "root"])
    assert (status, out, err) == (6, "", "")


@pytest.mark.parametrize("args", [
    ["list", "--help"], ["list", "-h"], ["list", "--bogus"], ["list", "--json=1"],
    ["list", "--device"], ["--device"], ["mount", "--root", "."], ["mount", "--target", "t"],
    ["mount", "--root", "missing", "--target", "t"], ["list", "extra"], ["--version"], [],
    ["lis"], ["--json", "list"],
], ids=lambda a: " ".join(a) or "nothing")
def test_every_other_command_line_gets_the_click_groups_answer(chain, args):
    """The door declines these: the answer (help, a usage error) is click's, whole."""
    from snapshot.cli.door import command
    assert command(args) is None
    status, out, err = both(args, env={"SNAPSHOT_DEVICE": str(chain)})
    assert status != 0 or "Usage:" in out or "version" in out
