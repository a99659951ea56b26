"""The chain commands as users run them: format, save, push, rollback, list, unpack, check."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot.store.chain import Chain
from snapshot.store.format import ANCHOR_BLOCKS
from clirun import commands, error_of, invoke, ok, run
from sweep import make_tree, tree

KIB = 1024
MIB = 1024 * KIB
NAND = Geometry(FlashType.NAND, 4096 * KIB, 128 * KIB, 2048, 64)
NOR = Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0)








def listing(image) -> dict:
    return json.loads(ok(image, "list", "--json"))


@pytest.fixture(params=["nand", "nor"])
def image(request, tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NAND if request.param == "nand" else NOR,
                    bad_blocks=[5] if request.param == "nand" else [])
    ok(path, "format")
    return path


def test_new_chain_is_empty(image):
    info = listing(image)
    assert info["snapshots"] == [] and info["volatile"] is None
    assert set(info) == {"device", "geometry", "snapshots", "volatile", "volatiles",
                         "last_rollback", "used_bytes", "free_bytes"}
    assert info["volatiles"] == [] and info["last_rollback"] is None


def test_push_appends_snapshots_in_order(image, tmp_path):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)), "-m", "first")
    ok(image, "push", "--from", str(make_tree(tmp_path / "b", 2, 4)), "-m", "second")
    snaps = listing(image)["snapshots"]
    assert [(s["index"], s["seq"], s["message"], s["state"], s["integrity"]) for s in snaps] \
        == [(1, 1, "first", "confirmed", "verified"),
            (2, 2, "second", "confirmed", "header ok")]
    assert set(snaps[0]) == {"index", "seq", "size", "blocks", "flash_bytes", "created",
                             "message", "state", "integrity"}


def test_push_consumes_the_volatile(image, tmp_path):
    ok(image, "save", "--from", str(make_tree(tmp_path / "v", 1, 1)))
    assert listing(image)["volatile"] is not None
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 2, 1)))
    assert listing(image)["volatile"] is None


def test_save_replaces_the_volatile(image, tmp_path):
    ok(image, "save", "--from", str(make_tree(tmp_path / "v1", 1, 1)))
    ok(image, "save", "--from", str(make_tree(tmp_path / "v2", 2, 1)))
    ok(image, "unpack", "--to", str(tmp_path / "out"), "--volatile-to", str(tmp_path / "vol"))
    assert tree(tmp_path / "vol") == tree(tmp_path / "v2")


def test_unpack_applies_snapshots_in_order(image, tmp_path):
    a = make_tree(tmp_path / "a", 1, 2)
    b = tmp_path / "b"
    (b / "etc/config").mkdir(parents=True)
    (b / "etc/config/network").write_text("changed\n")
    (b / ".profile").write_text("top-level dotfile\n")
    ok(image, "push", "--from", str(a))
    ok(image, "push", "--from", str(b))
    ok(image, "unpack", "--to", str(tmp_path / "all"))
    assert (tmp_path / "all/etc/config/network").read_text() == "changed\n"
    assert (tmp_path / "all/.profile").exists()
    assert (tmp_path / "all/usr/lib/blob").read_bytes() == (a / "usr/lib/blob").read_bytes()
    ok(image, "unpack", "--to", str(tmp_path / "first"), "--upto", "1")
    assert tree(tmp_path / "first") == tree(a)


def test_unpack_keeps_modes_and_symlinks(image, tmp_path):
    a = make_tree(tmp_path / "a", 1, 1)
    ok(image, "push", "--from", str(a))
    ok(image, "unpack", "--to", str(tmp_path / "out"))
    assert tree(tmp_path / "out") == tree(a)


def test_rollback_drops_the_newest_snapshot_and_the_volatile(image, tmp_path):
    for seed in (1, 2):
        ok(image, "push", "--from", str(make_tree(tmp_path / str(seed), seed, 1)))
    ok(image, "save", "--from", str(make_tree(tmp_path / "v", 3, 1)))
    assert "dropped snapshot 2, the volatile record" in ok(image, "rollback")
    info = listing(image)
    assert len(info["snapshots"]) == 1 and info["volatile"] is None


def test_rollback_to_n_keeps_snapshots_up_to_n(image, tmp_path):
    for seed in (1, 2, 3):
        ok(image, "push", "--from", str(make_tree(tmp_path / str(seed), seed, 1)))
    ok(image, "rollback", "--to", "1")
    assert [s["seq"] for s in listing(image)["snapshots"]] == [1]


def test_rollback_of_the_last_snapshot_needs_to_0(image, tmp_path):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 1)))
    assert "use --to 0" in error_of(run(image, "rollback"))
    assert len(listing(image)["snapshots"]) == 1
    ok(image, "rollback", "--to", "0")
    assert listing(image)["snapshots"] == []


def test_rollback_to_a_missing_snapshot_is_an_error(image, tmp_path):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 1)))
    assert "is not a snapshot number (0..1)" in error_of(run(image, "rollback", "--to", "5"))


def test_format_refuses_an_existing_chain_without_force(image):
    assert "holds a snapshot chain; add --force" in error_of(run(image, "format"))
    ok(image, "format", "--force")


@pytest.mark.parametrize("content,what", [
    (b"\x85\x19\x01\xe0", "a jffs2 filesystem"),
    (b"OWRT\x44\x41\x54\x41", "an old-format (fstools) snapshot chain"),
])
def test_format_refuses_recognisable_data_without_force(tmp_path, content, what):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NOR)
    with SimFlash(path, writable=True) as flash:
        flash.write(0, content)
    before = path.read_bytes()
    assert f"holds {what}; add --force" in error_of(run(path, "format"))
    assert path.read_bytes() == before
    ok(path, "format", "--force")
    assert listing(path)["snapshots"] == []


def test_commands_on_an_unformatted_device_say_so(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NOR)
    assert "no snapshot chain on this device (run `snapshot format`)" in \
        error_of(run(path, "list"))


def test_missing_source_directory_is_an_error_and_writes_nothing(image, tmp_path):
    before = image.read_bytes()
    assert "no such directory" in error_of(run(image, "push", "--from", str(tmp_path / "nope")))
    assert image.read_bytes() == before


def test_flash_full_is_a_clear_error_and_keeps_the_old_state(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NOR)   # 16 blocks of 64 KiB, 12 for data
    ok(path, "format")
    ok(path, "push", "--from", str(make_tree(tmp_path / "a", 1, 300)))
    before = listing(path)
    message = error_of(run(path, "push", "--from", str(make_tree(tmp_path / "b", 2, 600))))
    assert "flash full" in message and "nothing was changed" in message
    # The same chain (the push may have read snapshot 1's payload: list then knows more).
    after = listing(path)
    for info in (before, after):
        info["snapshots"][0].pop("integrity")
    assert after == before


def holds_a_lock(pid: int, path, kind: str = "FLOCK") -> bool:
    """Whether process `pid` holds a lock of `kind` (FLOCK: the writer lock; POSIX: the
    simulator's sidecar lock) on the file at path (/proc/locks)."""
    inode = os.stat(path).st_ino
    for line in open("/proc/locks"):
        fields = line.split()
        if fields[1] == kind and fields[4] == str(pid) and \
                fields[5].rsplit(":", 1)[1] == str(inode):
            return True
    return False


def stop(pid: int) -> None:
    """SIGSTOP pid and wait until it is stopped (the signal is delivered asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.001)


def test_second_writer_gets_busy(image, tmp_path):
    """Two real snapshot processes: the first is stopped while it writes (holding its lock),
    the second is refused at once and writes nothing; the first then finishes."""
    big = make_tree(tmp_path / "big", 1, 400)
    first = subprocess.Popen([sys.executable, "-m", "snapshot", "--device", str(image), "push",
                              "--from", str(big)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not holds_a_lock(first.pid, image):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.001)
        stop(first.pid)
        # Not inside the simulator's sidecar update: any opener waits for that lock (a real
        # MTD device has no sidecar), so a stop there would stall the second for good.
        while holds_a_lock(first.pid, image, "POSIX"):
            os.kill(first.pid, signal.SIGCONT)
            time.sleep(0.001)
            stop(first.pid)
        second = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image),
                                 "save", "--from", str(make_tree(tmp_path / "v", 2, 1))],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 3, second.stderr
        assert second.stderr == f"Error: {image}: busy, another snapshot command is " \
                                f"writing to it\n"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=60) == 0, first.stderr.read()
    info = listing(image)
    assert len(info["snapshots"]) == 1 and info["volatile"] is None


def test_read_only_commands_never_write(image, tmp_path):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    ok(image, "save", "--from", str(make_tree(tmp_path / "v", 2, 1)))
    before = image.read_bytes()
    ok(image, "list")
    ok(image, "list", "--json")
    ok(image, "check")
    ok(image, "unpack", "--to", str(tmp_path / "o"), "--volatile-to", str(tmp_path / "v2"))
    assert image.read_bytes() == before


def test_check_of_a_healthy_chain_is_clean(image, tmp_path):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    report = json.loads(ok(image, "check", "--json"))
    assert report["clean"] is True and report["problems"] == []


def test_every_command_has_help_with_an_example():
    every = commands()
    names = [[name] for name in every if name != "flash"] + [
        ["flash", name] for name in every["flash"].commands]
    assert len(names) > 10
    for command in names:
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_records_skip_the_factory_bad_block(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NAND, bad_blocks=[ANCHOR_BLOCKS + 1])
    ok(path, "format")
    a = make_tree(tmp_path / "a", 1, 300)   # three blocks: 4, (5 is bad), 6, 7
    ok(path, "push", "--from", str(a))
    with SimFlash(path) as flash:
        assert Chain(flash).snapshots[0].blocks == [4, 6, 7]
    ok(path, "unpack", "--to", str(tmp_path / "out"))
    assert tree(tmp_path / "out") == tree(a)


def test_probe_says_whether_a_chain_is_there(image, tmp_path):
    assert run(image, "probe").exit_code == 0
    blank = tmp_path / "blank.img"
    SimFlash.create(blank, NOR)
    result = run(blank, "probe")
    assert result.exit_code == 1 and result.output == ""


# -- bounded input: refused with one line before anything is written ---------------------------

@pytest.mark.parametrize("message", ["x" * 256, "é" * 128, "bad \udcff byte"],
                         ids=["256-bytes", "256-bytes-of-two-byte-chars", "not-utf8"])
def test_push_refuses_a_message_that_does_not_fit_and_writes_nothing(image, tmp_path, message):
    before = image.read_bytes()
    error = error_of(run(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)),
                         "-m", message))
    assert "message" in error and "nothing" not in listing(image)
    assert image.read_bytes() == before


def test_push_takes_a_message_of_exactly_255_bytes(image, tmp_path):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)), "-m", "é" * 127 + "x")
    assert listing(image)["snapshots"][0]["message"] == "é" * 127 + "x"


def test_a_refused_message_writes_nothing_even_over_records_needing_a_scrub(image, tmp_path):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    with SimFlash(image) as flash:
        record = Chain(flash).records[0]
        offset = flash.geometry.block_offset(record.blocks[0]) + record.layout.payload_offset
    SimFlash.add_faults(image, bitflips={offset + 10: "corrected"})
    before = image.read_bytes()
    error_of(run(image, "push", "--from", str(make_tree(tmp_path / "b", 2, 4)), "-m", "x" * 300))
    assert image.read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (["rollback", "--to", "-1"], "--to -1 is not a snapshot number (0..1)"),
    (["rollback", "--to", str(1 << 70)], "is not a snapshot number (0..1)"),
    (["unpack", "--to", "OUT", "--upto", "-1"], "--upto -1 is not a snapshot number (0..1)"),
    (["unpack", "--to", "OUT", "--upto", str(1 << 70)], "is not a snapshot number (0..1)"),
    (["show", "0"], "there is no snapshot 0 (the chain has 1)"),
    (["show", str(1 << 70)], "there is no snapshot"),
    (["export", str(1 << 70), "-o", "OUT.tgz"], "there is no snapshot"),
])
def test_numbers_out_of_range_are_one_clear_line_and_change_nothing(image, tmp_path, args,
                                                                   message):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    before = image.read_bytes()
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    assert message in error_of(run(image, *args))
    assert image.read_bytes() == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tgz").exists()


# -- the filesystem refusing a path the user gave: one line naming it --------------------------

@pytest.mark.parametrize("args,message", [
    (["export", "1", "-o", "/missing/dir/f.tgz"],
     "Error: /missing/dir/f.tgz: cannot be written: No such file or directory"),
    (["export", "1", "-o", "/proc/version"], "Error: /proc/version: cannot be written"),
    (["unpack", "--to", "/proc/sys/nope"],
     "Error: /proc/sys/nope: cannot unpack into it: No such file or directory"),
    (["unpack", "--to", "OUT", "--volatile-to", "/proc/sys/nope"],
     "Error: /proc/sys/nope: cannot unpack into it: No such file or directory"),
    (["push", "--from", "/proc/1/fdinfo/nope"], "Error: /proc/1/fdinfo/nope: "),
    (["save", "--from", "/missing/dir"], "Error: /missing/dir: no such directory"),
    (["convert", "--archive", "/proc/self/mem"], "Error: /proc/self/mem"),
])
def test_a_path_the_filesystem_refuses_is_one_error_line_naming_it(image, tmp_path, args,
                                                                  message):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    ok(image, "save", "--from", str(make_tree(tmp_path / "v", 2, 1)))
    before = image.read_bytes()
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    assert error_of(run(image, *args)).startswith(message)
    assert image.read_bytes() == before


def test_an_unreadable_configuration_is_one_error_line(image, tmp_path):
    result = invoke("list", env={"SNAPSHOT_CONFIG": str(tmp_path)})
    assert error_of(result) == f"Error: {tmp_path}: cannot read the configuration: Is a directory"


def test_output_into_a_closed_pipe_ends_quietly(image, tmp_path):
    import subprocess
    import sys
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    reader, writer = os.pipe()
    os.close(reader)
    done = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image), "list",
                           "--json"], stdout=writer, stderr=subprocess.PIPE, text=True)
    os.close(writer)
    assert done.returncode == 1 and done.stderr == ""


# -- the edges a new user trips on ---------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--device", "IMAGE", "list", "--json"],
    ["list", "--device", "IMAGE", "--json"],
    ["list", "--json", "--device", "IMAGE"],
    # After the command, it wins over the one before it.
    ["--device", "/nonexistent.img", "list", "--device", "IMAGE", "--json"],
], ids=["before", "after", "last", "after-wins"])
def test_device_goes_before_or_after_the_command(image, args):
    result = invoke(*[str(image) if a == "IMAGE" else a for a in args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == str(image)


def test_every_command_that_opens_a_device_takes_device_after_it():
    opens = {"format", "save", "push", "squash", "rollback", "list", "unpack", "check", "show",
             "export", "probe", "convert", "mount", "confirm", "watch", "status", "upgrade",
             "package-hook", "bundle create", "bundle apply", "flash info", "fleet poll",
             "fleet confirm", "fleet rollback"}
    takes = set()
    for name, command in commands().items():
        for sub, leaf in getattr(command, "commands", {name: command}).items():
            if any(p.name == "device" for p in leaf.params):
                takes.add(sub if leaf is command else f"{name} {sub}")
    assert takes == opens


def test_device_after_a_nested_command(tmp_path):
    path = tmp_path / "flash.img"
    created = invoke("flash", "create", path, "--type", "nor", "--size", "1M",
                     "--erase-size", "64K")
    assert created.exit_code == 0, created.output
    result = invoke("flash", "info", "--json", "--device", path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == str(path)



@pytest.mark.parametrize("into", ["--to", "--volatile-to"])
def test_unpack_into_a_directory_that_is_not_empty_is_refused_without_force(image, tmp_path,
                                                                           into):
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    ok(image, "save", "--from", str(make_tree(tmp_path / "v", 2, 1)))
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    out.mkdir()
    (out / "config").write_text("the user's own\n")
    args = ["--to", out] if into == "--to" else ["--to", fresh, "--volatile-to", out]
    assert error_of(run(image, "unpack", *args)) == (
        f"Error: {out} is not empty: the snapshots' files and whiteouts would replace what it "
        f"holds; add --force to unpack into it anyway")
    assert os.listdir(out) == ["config"] and not fresh.exists()
    assert (out / "config").read_text() == "the user's own\n"
    ok(image, "unpack", *args, "--force")
    assert len(os.listdir(out)) > 1


def incompressible(where, size: int, seed: int = 1):
    where.mkdir(parents=True)
    rng = random.Random(seed)
    for n in range(size // (64 * KIB)):
        (where / f"noise{n}").write_bytes(rng.randbytes(64 * KIB))
    return where


@pytest.mark.parametrize("command, what", [("push", "snapshot"), ("save", "volatile record")])
def test_a_record_bigger_than_the_free_flash_is_refused_before_anything_is_written(
        tmp_path, command, what):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NOR)   # 16 blocks of 64 KiB, 12 for data
    ok(path, "format")
    before, listed = path.read_bytes(), listing(path)
    message = error_of(run(path, command, "--from", str(incompressible(tmp_path / "a", MIB))))
    needed = re.fullmatch(
        rf"Error: {re.escape(str(path))}: flash full: the {what} needs (\d+) blocks \((\d+) "
        rf"KiB\) and 12 are free \(768 KiB\); nothing was changed \(`snapshot squash` merges "
        rf"snapshots into one and may make room\)", message)
    assert needed and int(needed[1]) > 12 and int(needed[2]) == int(needed[1]) * 64, message
    assert path.read_bytes() == before and listing(path) == listed


def test_a_tree_bigger_than_the_free_flash_that_compresses_into_it_is_stored(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NOR)
    ok(path, "format")
    source = tmp_path / "zeros"
    source.mkdir()
    (source / "zeros").write_bytes(bytes(2 * MIB))
    ok(path, "push", "--from", str(source))
    assert [s["index"] for s in listing(path)["snapshots"]] == [1]


def test_the_progress_line_says_how_much_flash_is_free(capsys):
    from snapshot.cli.stores import Progress
    progress = Progress("push", 768 * KIB)
    progress.shown = True
    progress(64 * KIB)
    progress(64 * KIB)
    progress.done()
    assert capsys.readouterr().err == ("\rpush: 64 KiB written (of 768 KiB free)"
                                       "\rpush: 128 KiB written (of 768 KiB free)\n")


def test_the_size_a_store_expects_is_more_than_the_tar_stream_it_writes(tmp_path):
    """capture.tar_bound: long names, symlinks, hardlinks, extended attributes, empty and
    odd-sized files."""
    import gzip
    from snapshot.tree.capture import Capture, tar_bound
    root = make_tree(tmp_path / "t", 3, 40)
    (root / ("n" * 200)).write_bytes(b"x" * 513)
    (root / "empty").touch()
    (root / "link").symlink_to("l" * 300)
    os.link(root / "empty", root / "hard")
    os.setxattr(root / "empty", "user.note", b"v" * 3000)

    class Kept(bytearray):
        def write(self, data):
            self.extend(data)
            return len(data)

    out = Kept()
    Capture(root).pack(out)
    assert len(gzip.decompress(bytes(out))) <= tar_bound(root)
