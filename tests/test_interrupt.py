"""Ctrl-C: an interrupted command says in one line what state its device is in, and exits 130.
Before its commit nothing changed, which is where Ctrl-C nearly always lands; after it, the
change was made."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clirun import invoke, ok
from mtd import FlashType, Geometry, SimFlash
from mtd.sim import sidecar_path
from snapshot.store import chain as chains
from sweep import make_tree

MIB = 1 << 20
NAND = Geometry(FlashType.NAND, 64 * MIB, 128 * 1024, 2048, 64)


def state(image) -> dict:
    """What `list` says the device holds (without how much of it this boot has read)."""
    listed = json.loads(ok(image, "list", "--json"))
    for record in listed["snapshots"] + listed["volatiles"]:
        record.pop("integrity")
    return listed


@pytest.fixture(autouse=True)
def no_steps_yet(monkeypatch):
    """Each in-process command starts as a process does: no visible step taken."""
    monkeypatch.setattr(chains, "VISIBLE_STEPS", {})


def writing_its_record(image) -> bool:
    """Whether a writer has begun changing the image: the simulator marks its sidecar dirty
    before its first change (mtd/sim.py)."""
    return json.loads(open(sidecar_path(image)).read()).get("dirty") is True


def test_ctrl_c_during_a_push_says_nothing_was_changed(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    ok(image, "format")
    ok(image, "push", "--from", make_tree(tmp_path / "a", 1, 10), "-m", "first")
    before = state(image)
    source = tmp_path / "big"
    source.mkdir()
    (source / "noise").write_bytes(os.urandom(40 * MIB))
    # SIGINT at its default, as a terminal's foreground command has it: a test run started
    # in the background by a shell without job control inherits it ignored, and Python
    # then installs no handler of its own.
    push = subprocess.Popen([sys.executable, "-m", "snapshot", "--device", str(image), "push",
                             "--from", str(source)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Ctrl-C once the push has begun writing its 40 MiB record, about a second before its
    # commit.
    deadline = time.monotonic() + 60
    while not writing_its_record(image):
        assert push.poll() is None and time.monotonic() < deadline, push.stderr.read()
        time.sleep(0.001)
    push.send_signal(signal.SIGINT)
    out, err = push.communicate(timeout=60)
    assert (push.returncode, out, err) == \
        (130, "", f"Interrupted: nothing was changed on {image}\n")
    assert state(image) == before


def test_ctrl_c_after_the_commit_says_the_change_was_made(tmp_path, monkeypatch):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    ok(image, "format")
    from snapshot.cli import chain as chain_cli

    def interrupt(*args):
        raise KeyboardInterrupt
    # Interrupted while it reports the push it just committed.
    monkeypatch.setattr(chain_cli, "stored", interrupt)
    result = invoke("--device", image, "push", "--from", make_tree(tmp_path / "a", 1, 10))
    assert (result.exit_code, result.stdout, result.stderr) == (
        130, "", f"Interrupted after its change to {image} was committed; `snapshot list` "
                 f"shows it\n")
    assert len(json.loads(ok(image, "list", "--json"))["snapshots"]) == 1


def test_ctrl_c_in_the_middle_of_the_commit_says_it_is_one_state_or_the_other(tmp_path,
                                                                              monkeypatch):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    ok(image, "format")
    real = SimFlash.write

    def write(self, offset, data):
        if offset < 4 * NAND.erasesize:   # the anchor area: the commit
            raise KeyboardInterrupt
        return real(self, offset, data)
    monkeypatch.setattr(SimFlash, "write", write)
    result = invoke("--device", image, "push", "--from", make_tree(tmp_path / "a", 1, 10))
    assert (result.exit_code, result.stderr) == (
        130, f"Interrupted while committing on {image}: it holds the state before the command "
             f"or the state after it; `snapshot list` says which\n")


def test_ctrl_c_in_a_command_that_opens_no_device_says_only_that(tmp_path, monkeypatch):
    from snapshot.cli import flash as flash_cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(flash_cli.SimFlash, "create", interrupt)
    result = invoke("flash", "create", tmp_path / "x.img", "--type", "nor", "--size", "1M",
                    "--erase-size", "64K")
    assert (result.exit_code, result.stderr) == (130, "Interrupted\n")
