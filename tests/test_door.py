"""The front door (snapshot/cli/door.py) starts list, status and mount without click. Each
form it takes must print and exit exactly as the click group does; every other command line
must reach the click group. Each case runs `snapshot ARGS` both ways, as processes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mtd import FlashType, Geometry, SimFlash
from bundle_lab import Lab
from clirun import commands, ok

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


def test_unpack_both_ways(chain, tmp_path):
    into = tmp_path / "into"
    for args in (["--to", into], ["--to", into, "--upto", "1", "--volatile-to", tmp_path / "v"],
                 ["--upto=1", "--force", f"--to={into}"]):
        seen = []
        for code in (DOOR, CLICK):
            shutil.rmtree(into, ignore_errors=True)
            shutil.rmtree(tmp_path / "v", ignore_errors=True)
            seen.append(snapshot(code, ["--device", chain, "unpack", *args]))
        assert seen[0] == seen[1]
        assert seen[0][0] == 0 and seen[0][1].startswith("unpacked ")
    (into / "x").write_text("x")
    status, out, err = both(["--device", chain, "unpack", "--to", into])
    assert status == 1 and err.startswith("Error: ") and "is not empty" in err


def test_bundle_apply_both_ways(tmp_path):
    """The same unit, the same bundle: the same lines, exit status and chain after; a bundle
    signed by a key the unit does not trust is the same one refusal, nothing written."""
    lab = Lab.make(tmp_path / "lab")
    reference = tmp_path / "reference.img"
    lab.reference(reference, Geometry(FlashType.NAND, 4 << 20, 128 * KIB, 2048, 64))
    signed = lab.bundle(reference, "2", tmp_path / "fix.snb")
    forged = lab.bundle(reference, "2", tmp_path / "forged.snb", lab.other)
    unit = tmp_path / "unit.img"
    env = {**lab.env, "PATH": lab.env["PATH"]}
    for bundle, expected in ((signed, 0), (forged, 1)):
        seen = []
        for code in (DOOR, CLICK):
            lab.unit_from(unit)
            done = snapshot(code, ["--device", unit, "bundle", "apply", bundle, "--no-reboot"],
                            env)
            listed = json.loads(snapshot(DOOR, ["--device", unit, "list", "--json"])[1])
            # When a record was made, and whether this machine's RAM ledger has seen its
            # payload (the same image path, copied over, is the same file to it), differ.
            for record in listed["snapshots"] + listed["volatiles"] + [listed["volatile"]]:
                record.pop("created")
                record.pop("integrity")
            seen.append((done, listed))
        assert seen[0] == seen[1]
        assert seen[0][0][0] == expected
    assert seen[0][0][2].startswith("Error: ") and seen[0][0][2].count("\n") == 1


def test_each_form_names_options_its_click_command_has():
    """The door's forms and the click commands cannot drift apart unnoticed."""
    from snapshot.cli.door import FORMS
    for words, form in FORMS.items():
        command = commands()[words[0]]
        for word in words[1:]:
            command = command.get_command(None, word)
        params = {p.name: p for p in command.params}
        options = {o: p for p in command.params for o in getattr(p, "opts", [])}
        for flag, name in form.flags.items():
            assert options[flag].name == name and options[flag].is_flag, (words, flag)
        for option, (name, _) in form.options.items():
            assert options[option].name == name and not options[option].is_flag, (words, option)
        if form.argument:
            assert params[form.argument].param_type_name == "argument"
        declared = set(form.flags) | set(form.options) | {"--device"}
        assert {o for p in command.params if p.param_type_name == "option"
                for o in p.opts} <= declared | {"-h", "--help"}, words


@pytest.mark.parametrize("args", [
    ["list", "--help"], ["list", "-h"], ["list", "--bogus"], ["list", "--json=1"],
    ["list", "--device"], ["--device"], ["mount", "--root", "."], ["mount", "--target", "t"],
    ["mount", "--root", "missing", "--target", "t"], ["list", "extra"], ["--version"], [],
    ["lis"], ["--json", "list"], ["unpack"], ["unpack", "--to", "t", "--upto", "one"],
    ["unpack", "--to", "t", "--rom", "missing"], ["bundle", "apply"],
    ["bundle", "apply", "a.snb", "b.snb"], ["bundle", "show", "a.snb"],
], ids=lambda a: " ".join(a) or "nothing")
def test_every_other_command_line_gets_the_click_groups_answer(chain, args):
    """The door declines these: the answer (help, a usage error) is click's, whole."""
    from snapshot.cli.door import command
    assert command(args) is None
    status, out, err = both(args, env={"SNAPSHOT_DEVICE": str(chain)})
    assert status != 0 or "Usage:" in out or "version" in out
