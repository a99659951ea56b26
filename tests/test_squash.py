"""`snapshot squash`: snapshots 1..N merged into one record showing exactly the same, so that
what later snapshots deleted or overwrote stops taking flash; `option keep` after a push; and
the flash use `list` shows. Tier 1 as root (whiteouts are device nodes, opaque marks trusted
xattrs) on the simulator; the last tests boot and mount the result for real (tier 2)."""
import atexit
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clirun import error_of, ok, run
from mtd import FlashType, Geometry, SimFlash
from snapshot import live, operations, squash
from snapshot.store import trial as trials
from snapshot.store.chain import Chain, RecordWriter, commit
from snapshot.store.format import COMPRESSION_GZIP, CONFIRMED, SNAPSHOT, TRIAL, VOLATILE
from snapshot.tree.capture import compressor
from sweep import (GEOMETRIES, SCENARIOS, SimCase, base_overwritten_snapshots, make_tree,
                   run_cli, visible)
from test_boot import boot, make_rootfs
from test_boot import write as write_layer
from test_overlayfs import EVERY_KIND_OF_CHANGE, OPS, namespaces, run_lab  # noqa: F401

KIB, MIB = 1024, 1 << 20
NAND = Geometry(FlashType.NAND, 4 * MIB, 128 * KIB, 2048, 64)
NOR = Geometry(FlashType.NOR, 1 * MIB, 64 * KIB, 1, 0)
T1, T2, T3 = 1_600_000_000, 1_650_000_000, 1_700_000_000


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NAND, bad_blocks=[5])
    ok(path, "format")
    return path


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def opaque(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def put(path: Path, data: str | bytes = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def stamp(root: Path, when: int) -> Path:
    """Every entry's mtime set to `when`, directories last, so layers are reproducible."""
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (when, when), follow_symlinks=False)
    return root


def upper(root: Path) -> dict:
    """All an upper directory holds: each entry's type, mode, owner, mtime, xattrs and
    contents (data, link target, device numbers), and which files are hardlinks of each
    other."""
    entries, inodes = {}, {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                  for k in sorted(os.listxattr(path, follow_symlinks=False))}
        if stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
            inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        else:
            content = st.st_rdev
        entries[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, int(st.st_mtime), xattrs, content)
    return {"entries": entries, "hardlinks": sorted(p for p in inodes.values() if len(p) > 1)}


def layers(tmp_path: Path) -> list[Path]:
    """Three upper directories that stack every kind of change on the ones before."""
    one = tmp_path / "l1"
    put(one / "etc/config/network", "lan 1\n")
    put(one / "etc/config/wireless", "radio 1\n")
    put(one / "etc/hosts", "old hosts\n")
    os.link(one / "etc/hosts", one / "etc/hosts.link")
    put(one / "usr/lib/big", random.Random(1).randbytes(64 * KIB))
    put(one / "www/index.html", "<html>1</html>\n")
    put(one / "www/img/logo", "logo\n")
    put(one / "bin/tool", "#!/bin/sh\n")
    put(one / "lib/dir/inner", "inner\n")
    (one / "opt/dir").mkdir(parents=True)
    os.chmod(one / "opt/dir", 0o750)
    os.setxattr(one / "opt/dir", "user.a", b"1")
    os.mkfifo(one / "etc/fifo")
    (one / "etc/link").symlink_to("hosts")
    whiteout(one / "etc/banner")           # hides a squashfs file
    opaque(one / "usr/share/doc")          # hides a squashfs directory
    whiteout(one / "usr/share/doc/gone")   # hidden itself by snapshot 3's opaque directory
    stamp(one, T1)
    two = tmp_path / "l2"
    put(two / "etc/config/network", "lan 2\n")
    put(two / "etc/config/wireless", "radio 2\n")
    os.chown(two / "etc/config/wireless", 1000, 100)
    os.chmod(two / "etc/config/wireless", 0o600)
    put(two / "etc/hosts", "new hosts\n")  # etc/hosts.link keeps the old one
    whiteout(two / "usr/lib/big")
    opaque(two / "www")
    put(two / "www/new.html", "<html>2</html>\n")
    (two / "opt/dir").mkdir(parents=True)
    os.chmod(two / "opt/dir", 0o700)
    os.setxattr(two / "opt/dir", "user.b", b"2")
    put(two / "bin/tool/inner", "a directory where a file was\n")
    put(two / "lib/dir", "a file where a directory was\n")
    whiteout(two / "etc/fifo")
    whiteout(two / "srv")
    stamp(two, T2)
    three = tmp_path / "l3"
    put(three / "usr/lib/big", "a file where a whiteout was\n")
    put(three / "etc/new", "linked\n")
    os.link(three / "etc/new", three / "etc/new.link")
    (three / "opt/dir").mkdir(parents=True)
    os.setxattr(three / "opt/dir", "user.c", b"3")
    put(three / "www/later.html", "<html>3</html>\n")   # www stays opaque
    put(three / "srv/site", "a plain directory where a whiteout was\n")
    opaque(three / "usr/share/doc")
    put(three / "usr/share/doc/README", "readme\n")
    stamp(three, T3)
    return [one, two, three]


def push_all(image: Path, roots: list[Path]) -> None:
    for n, root in enumerate(roots, start=1):
        ok(image, "push", "--from", root, "-m", f"layer {n}")


def unpacked(image: Path, target: Path, *args) -> dict:
    ok(image, "unpack", "--to", target, *args)
    return upper(target)


def writes(image: Path) -> int:
    """Programs and erases the image has had: unchanged means nothing was written."""
    with SimFlash(image) as flash:
        stats = flash.stats()
    return stats.programs + stats.erases


# -- what the merged record holds --------------------------------------------------------------

def test_the_squashed_record_unpacks_to_exactly_the_upper_dir_the_snapshots_gave(image,
                                                                                 tmp_path):
    push_all(image, layers(tmp_path))
    before = unpacked(image, tmp_path / "before")
    ok(image, "squash")
    assert [s["seq"] for s in json.loads(ok(image, "list", "--json"))["snapshots"]] == [1]
    assert unpacked(image, tmp_path / "after") == before
    # etc/hosts was replaced; etc/hosts.link keeps the file they shared.
    assert before["hardlinks"] == [["etc/new", "etc/new.link"]]
    assert before["entries"]["etc/hosts.link"][-1] == b"old hosts\n"


def test_over_the_squashfs_it_unpacks_as_the_snapshots_do(image, tmp_path):
    rom = tmp_path / "rom"
    for name in ("etc/banner", "www/index.html", "usr/share/doc/pkg", "srv/x", "bin/tool"):
        put(rom / name)
    push_all(image, layers(tmp_path))
    before = unpacked(image, tmp_path / "before", "--rom", rom)
    ok(image, "squash")
    assert unpacked(image, tmp_path / "after", "--rom", rom) == before


def test_whiteouts_and_opaque_marks_the_result_needs_are_kept_and_the_rest_go(image,
                                                                              tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "squash")
    ok(image, "export", "1", "-o", tmp_path / "merged.tar.gz")
    with tarfile.open(tmp_path / "merged.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    whiteouts = sorted(n for n, m in members.items() if m.ischr())
    assert whiteouts == ["etc/banner", "etc/fifo"]
    opaque_dirs = sorted(n for n, m in members.items()
                         if m.pax_headers.get("SCHILY.xattr.trusted.overlay.opaque") == "y")
    # bin/tool and srv: directories where a file and a whiteout were hide the squashfs too.
    assert opaque_dirs == ["bin/tool", "srv", "usr/share/doc", "www"]
    assert "usr/share/doc/gone" not in members and "www/index.html" not in members


def test_deleted_and_overwritten_files_stop_taking_flash(image, tmp_path):
    rng = random.Random(7)
    for n in range(5):
        root = put(tmp_path / f"s{n}/usr/lib/blob", rng.randbytes(200 * KIB)).parents[2]
        if n == 0:
            put(root / "usr/lib/removed", rng.randbytes(300 * KIB))
        if n == 3:
            whiteout(root / "usr/lib/removed")
        ok(image, "push", "--from", root)
    report = json.loads(ok(image, "squash", "--json"))
    size = json.loads(ok(image, "list", "--json"))["snapshots"][0]["size"]
    assert 200 * KIB < size < 210 * KIB
    assert report == {"squashed": 5, "snapshots": 1, "before_bytes": (4 + 4 * 2) * 128 * KIB,
                      "after_bytes": 2 * 128 * KIB, "free_bytes": report["free_bytes"]}


def test_directories_come_before_their_contents_and_links_after_their_file(image,
                                                                           tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "squash")
    ok(image, "export", "1", "-o", tmp_path / "merged.tar.gz")
    with tarfile.open(tmp_path / "merged.tar.gz") as tar:
        names = [(m.name, m) for m in tar.getmembers()]
    seen = set()
    for name, member in names:
        assert name.rpartition("/")[0] in seen | {""}, name
        if member.islnk():
            assert member.linkname in seen, name
        seen.add(name)
    kinds = [m.isfile() or m.islnk() for _, m in names]
    assert kinds == sorted(kinds)   # every entry without data first, then the files


def test_gnu_tar_reads_the_squashed_record(image, tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "squash")
    ok(image, "export", "1", "-o", tmp_path / "merged.tar.gz")
    listed = subprocess.run(["tar", "tzf", str(tmp_path / "merged.tar.gz")], check=True,
                            capture_output=True, text=True).stdout
    assert "etc/hosts.link\n" in listed and "usr/lib/big\n" in listed


def test_a_record_a_boot_would_refuse_is_refused_and_nothing_is_written(image, tmp_path):
    ok(image, "push", "--from", put(tmp_path / "a/etc/x").parents[1])
    (tmp_path / "b").mkdir()
    (tmp_path / "b/etc").symlink_to("/etc")
    ok(image, "push", "--from", tmp_path / "b")
    # Snapshot 3 writes below snapshot 2's symlink: restore refuses it, and so does squash.
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        writer = RecordWriter(chain, SNAPSHOT, 3, "", COMPRESSION_GZIP)
        with compressor(writer, COMPRESSION_GZIP) as stream, \
                tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(tarfile.TarInfo("etc/passwd"))
        commit(chain, [r.entry for r in chain.snapshots] + [writer.finish()])
    done = writes(image)
    message = error_of(run(image, "squash"))
    assert message.startswith("Error: snapshot 3 cannot be applied (archive entry 'etc/passwd' "
                              "refused: 'etc' is a symlink in the target)")
    assert message.endswith("; nothing was written")
    assert writes(image) == done


# -- what it does to the rest of the chain ------------------------------------------------------

def test_the_volatile_record_stays_renumbered(image, tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "save", "--from", make_tree(tmp_path / "v", 4, 2))
    ok(image, "squash")
    volatile = json.loads(ok(image, "list", "--json"))["volatile"]
    assert volatile["seq"] == 1 and volatile["integrity"] == "header ok"
    ok(image, "unpack", "--to", tmp_path / "o", "--volatile-to", tmp_path / "v2")
    assert upper(tmp_path / "v2") == upper(tmp_path / "v")


def test_a_pending_trial_is_left_on_top_with_its_boots_and_its_kept_record(image, tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "save", "--from", make_tree(tmp_path / "v", 4, 2))
    ok(image, "push", "--trial", "--from", make_tree(tmp_path / "t", 5, 2))
    ok(image, "save", "--from", make_tree(tmp_path / "v2", 6, 2))
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        commit(chain, [r.entry.marked(attempts=2) if r.entry.state == TRIAL else r.entry
                       for r in chain.records])
    tried, fallback = _views(image, tmp_path / "before")
    ok(image, "squash")
    with SimFlash(image) as flash:
        directory = [(e.type, e.seq, e.state, e.fallback, e.attempts)
                     for e in (r.entry for r in Chain(flash).records)]
    assert directory == [(SNAPSHOT, 1, CONFIRMED, False, 0), (SNAPSHOT, 2, TRIAL, False, 2),
                         (VOLATILE, 1, CONFIRMED, True, 0), (VOLATILE, 2, CONFIRMED, False, 0)]
    assert _views(image, tmp_path / "after") == (tried, fallback)


def _views(image: Path, work: Path) -> tuple:
    """What a boot of the trial shows, and what the state before it shows."""
    found = []
    with SimFlash(image) as flash:
        chain = Chain(flash)
        for tried in (True, False):
            target = work / str(tried)
            operations.apply_snapshots(chain, target / "upper", tried=tried)
            operations.apply_volatile(chain, target / "volatile", tried=tried)
            found.append((upper(target / "upper"), upper(target / "volatile")))
    return tuple(found)


def test_a_volatile_record_on_trial_stays_on_trial(image, tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "save", "--from", make_tree(tmp_path / "v", 4, 2))
    ok(image, "save", "--trial", "--from", make_tree(tmp_path / "v2", 5, 2))
    ok(image, "squash")
    volatiles = json.loads(ok(image, "list", "--json"))["volatiles"]
    assert [(v["seq"], v["state"], v["kept_for_rollback"]) for v in volatiles] == \
        [(1, "confirmed", True), (1, "trial", False)]


def test_squashing_up_to_a_trial_is_refused_and_nothing_is_written(image, tmp_path):
    push_all(image, layers(tmp_path)[:2])
    ok(image, "push", "--trial", "--from", make_tree(tmp_path / "t", 5, 2))
    done = writes(image)
    assert error_of(run(image, "squash", "--upto", "3")) == \
        "Error: snapshot 3 is on trial: confirm it first, or squash --upto 2; nothing was written"
    assert writes(image) == done


def test_a_damaged_record_is_refused_pointing_at_check_repair_and_nothing_is_written(image,
                                                                                     tmp_path):
    push_all(image, layers(tmp_path))
    with SimFlash(image) as flash:
        record = Chain(flash).snapshots[1]
        offset = flash.geometry.block_offset(record.blocks[0]) + record.layout.payload_offset
    flip_byte(image, offset + 40)
    done = writes(image)
    message = error_of(run(image, "squash"), code=4)
    assert "snapshot 2 (block" in message and "is damaged: payload CRC mismatch" in message
    assert message.endswith("; run `snapshot check --repair` first; nothing was written")
    assert writes(image) == done


def test_a_damaged_volatile_record_is_refused_too(image, tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "save", "--from", make_tree(tmp_path / "v", 4, 20))
    with SimFlash(image) as flash:
        record = Chain(flash).volatile
        offset = flash.geometry.block_offset(record.blocks[0]) + record.layout.payload_offset
    flip_byte(image, offset + 40)
    done = writes(image)
    message = error_of(run(image, "squash"), code=4)
    assert "the volatile record (block" in message and "check --repair" in message
    assert writes(image) == done


def flip_byte(image: Path, offset: int) -> None:
    """Damage one byte behind the flash layer's back, as a failing cell would."""
    with open(image, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def test_one_snapshot_or_none_is_nothing_to_squash_and_writes_nothing(image, tmp_path):
    nothing = "nothing to squash: it takes two snapshots or more; nothing was written\n"
    done = writes(image)
    assert ok(image, "squash") == nothing
    assert writes(image) == done
    ok(image, "push", "--from", make_tree(tmp_path / "a", 1, 1))
    done = writes(image)
    assert ok(image, "squash") == ok(image, "squash", "--upto", "1") == nothing
    assert json.loads(ok(image, "squash", "--json")) == {
        "squashed": 0, "snapshots": 1, "before_bytes": 128 * KIB, "after_bytes": 128 * KIB,
        "free_bytes": (32 - 4 - 1 - 1) * 128 * KIB}
    assert writes(image) == done


def test_a_snapshot_number_out_of_range_is_one_error_line(image, tmp_path):
    push_all(image, layers(tmp_path)[:2])
    for upto in ("0", "3"):
        assert error_of(run(image, "squash", "--upto", upto)) == \
            f"Error: there is no snapshot {upto} (the chain has 2)"


def test_a_failed_trial_goes_as_on_any_write(image, tmp_path):
    push_all(image, layers(tmp_path)[:2])
    ok(image, "push", "--trial", "--from", make_tree(tmp_path / "t", 5, 2))
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        commit(chain, *trials.fail(chain, "no mesh", T3))
    ok(image, "squash")
    info = json.loads(ok(image, "list", "--json"))
    assert [s["state"] for s in info["snapshots"]] == ["confirmed"]
    assert info["last_rollback"]["reason"] == "no mesh"


# -- room --------------------------------------------------------------------------------------

def test_too_little_free_flash_is_refused_before_the_first_erase_saying_how_much(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NOR)
    ok(path, "format")
    rng = random.Random(3)
    for n in range(3):   # 3 blocks each
        ok(path, "push", "--from", put(tmp_path / f"s{n}/blob", rng.randbytes(150 * KIB)).parent)
    ok(path, "save", "--from", put(tmp_path / "v/blob", rng.randbytes(100 * KIB)).parent)
    assert json.loads(ok(path, "list", "--json"))["free_bytes"] == 64 * KIB
    done = writes(path)
    assert error_of(run(path, "squash")) == (
        f"Error: {path}: squash needs up to 5 free blocks (320 KiB) for the merged record and "
        f"the records above it, and 1 are free (64 KiB); nothing was written")
    assert writes(path) == done


def test_flash_running_out_while_writing_leaves_the_old_chain(image, tmp_path):
    push_all(image, layers(tmp_path))
    ok(image, "save", "--from", make_tree(tmp_path / "v", 4, 2))
    before = visible(str(image))
    with SimFlash(image) as flash:
        chain = Chain(flash)
        counts = flash.stats().erase_counts
        free = chain.free_blocks()
    # Every free block but one fails at its next erase: the merged record gets that one,
    # the volatile record's copy finds none.
    SimFlash.add_faults(image, wear_limits={b: counts[b] for b in free[1:]})
    message = error_of(run(image, "squash"))
    assert "flash full" in message and message.endswith("nothing was changed")
    assert visible(str(image)) == before


# -- list and the reports ----------------------------------------------------------------------

def test_list_shows_the_flash_each_record_takes_and_what_is_used_and_free(image, tmp_path):
    ok(image, "push", "--from", make_tree(tmp_path / "a", 1, 200))   # 2 blocks
    ok(image, "save", "--from", make_tree(tmp_path / "v", 2, 1))
    info = json.loads(ok(image, "list", "--json"))
    assert info["snapshots"][0]["flash_bytes"] == 256 * KIB
    assert info["volatile"]["flash_bytes"] == 128 * KIB
    assert info["used_bytes"] == 384 * KIB
    assert info["free_bytes"] == (32 - 4 - 1 - 3) * 128 * KIB
    text = ok(image, "list")
    assert "  256 KiB  " in text and "(128 KiB of flash)" in text
    assert "\nflash: 384 KiB used, 3 MiB free\n" in text


def test_squash_says_what_it_merged_and_the_flash_used_before_and_after(image, tmp_path):
    push_all(image, layers(tmp_path))
    assert ok(image, "squash") == ("squashed snapshots 1..3 into snapshot 1: flash used "
                                   "384 KiB -> 128 KiB, 3.25 MiB free\n")


def test_squash_upto_n_keeps_the_later_snapshots_renumbered(image, tmp_path):
    push_all(image, layers(tmp_path))
    before = unpacked(image, tmp_path / "before")
    ok(image, "squash", "--upto", "2")
    info = json.loads(ok(image, "list", "--json"))
    assert [(s["seq"], s["message"]) for s in info["snapshots"]] == \
        [(1, "squash of 1..2: layer 2"), (2, "layer 3")]
    assert unpacked(image, tmp_path / "after") == before
    assert json.loads(ok(image, "check", "--json"))["clean"]


def test_a_booted_layer_over_the_squashed_snapshots_can_still_be_saved(image, tmp_path):
    push_all(image, layers(tmp_path))
    layer = tmp_path / "volatile" / "upper"
    put(layer / "etc/unsaved", "running\n")
    with SimFlash(image) as flash:
        live.write_base(layer, [r.entry for r in Chain(flash).snapshots])
    with SimFlash(image, writable=True) as flash:
        squash.squash(Chain(flash), layer=layer)
    ok(image, "save", "--from", layer)


def test_squash_holds_no_snapshot_in_memory_and_stages_nothing(image, tmp_path):
    big = put(tmp_path / "s1/usr/big", random.Random(5).randbytes(16 * MIB)).parents[1]
    path = tmp_path / "big.img"
    SimFlash.create(path, Geometry(FlashType.NAND, 64 * MIB, 128 * KIB, 2048, 64))
    ok(path, "format")
    ok(path, "push", "--from", big)
    ok(path, "push", "--from", big)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # The baseline: a command that starts through click and opens the image, as squash
    # does, and reads no payload (`list` starts without click: snapshot/cli/door.py).
    baseline = _peak_rss(path, scratch, "flash", "info")
    peak = _peak_rss(path, scratch, "squash")
    assert peak < baseline + 6 * MIB, (peak, baseline)
    assert list(scratch.iterdir()) == []


# A small process between the test and the command: a child's peak RSS starts at its
# parent's, so the command is forked from one far smaller than it.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], "
            "stdout=subprocess.DEVNULL); _, s, r = os.wait4(p.pid, 0); "
            "print(os.waitstatus_to_exitcode(s), r.ru_maxrss * 1024)")


def _peak_rss(image: Path, scratch: Path, *args) -> int:
    """Peak RSS of one command, run with TMPDIR and its working directory in `scratch`."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "snapshot",
                           "--device", str(image), *args], capture_output=True, text=True,
                          cwd=scratch, check=True, env=dict(os.environ, TMPDIR=str(scratch),
                                                            PYTHONPATH=_ROOT))
    status, peak = map(int, done.stdout.split())
    assert status == 0, done.stderr
    return peak


_ROOT = str(Path(__file__).resolve().parent.parent)


# -- option keep -------------------------------------------------------------------------------

def keep_config(tmp_path: Path, keep: int) -> dict:
    conf = tmp_path / "snapshot.conf"
    conf.write_text(f"config snapshot 'main'\n\toption keep '{keep}'\n")
    return {"SNAPSHOT_CONFIG": str(conf)}


def test_option_keep_squashes_the_oldest_after_a_push_so_that_k_remain(image, tmp_path):
    env = keep_config(tmp_path, 2)
    for n, root in enumerate(layers(tmp_path), start=1):
        result = run_cli(str(image), ["push", "--json", "--from", str(root), "-m", f"l{n}"],
                         env=env)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["snapshot"], bool(report["squashed"])) == ((1, False), (2, False),
                                                                  (2, True))[n - 1]
    assert report["squashed"]["squashed"] == 2
    info = json.loads(ok(image, "list", "--json"))
    assert [s["message"] for s in info["snapshots"]] == ["squash of 1..2: l2", "l3"]


def test_option_keep_is_off_by_default_and_never_squashes_a_trial(image, tmp_path):
    push_all(image, layers(tmp_path))
    assert len(json.loads(ok(image, "list", "--json"))["snapshots"]) == 3
    env = keep_config(tmp_path, 1)
    result = run_cli(str(image), ["push", "--trial", "--from",
                                  str(make_tree(tmp_path / "t", 5, 2))], env=env)
    assert result.returncode == 0, result.stderr
    assert "; squashed snapshots 1..3 into snapshot 1" in result.stdout
    info = json.loads(ok(image, "list", "--json"))
    assert [(s["seq"], s["state"]) for s in info["snapshots"]] == [(1, "confirmed"),
                                                                   (2, "trial")]


def test_a_push_whose_squash_fails_is_still_pushed_and_says_why(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, NOR)
    ok(path, "format")
    rng = random.Random(3)
    for n in range(3):
        ok(path, "push", "--from", put(tmp_path / f"s{n}/blob", rng.randbytes(150 * KIB)).parent)
    result = run_cli(str(path), ["push", "--json", "--from",
                                 str(put(tmp_path / "s3/blob", rng.randbytes(100 * KIB)).parent)],
                     env=keep_config(tmp_path, 2))
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: pushed, but not squashed: ")
    assert "squash needs up to" in json.loads(result.stdout)["squashed"]["error"]
    assert len(json.loads(ok(path, "list", "--json"))["snapshots"]) == 4


def test_a_bad_option_keep_refuses_the_push_before_anything_is_written(image, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("config snapshot 'main'\n\toption keep 'some'\n")
    done = writes(image)
    result = run_cli(str(image), ["push", "--from", str(make_tree(tmp_path / "a", 1, 1))],
                     env={"SNAPSHOT_CONFIG": str(conf)})
    assert result.returncode == 1
    assert result.stderr == ("Error: option keep 'some' in the configuration is not a number "
                             "of at least 0\n")
    assert writes(image) == done


# Power cuts in a push with `option keep`: two operations, each one commit; after a cut the
# chain is the old one, the pushed one, or the pushed and squashed one.
_KEEP_CASES: dict[str, dict] = {}


def keep_case(geometry: str, root: Path) -> dict:
    if geometry not in _KEEP_CASES:
        work = root / f"keep-{geometry}"
        work.mkdir(parents=True)
        base = work / "base.img"
        g, bad = GEOMETRIES[geometry]
        SimFlash.create(base, g, bad_blocks=bad)
        base_overwritten_snapshots(str(base), work)
        args = ["push", "--from", str(make_tree(work / "s9", 9, 40))]
        env = keep_config(work, 2)
        states = [visible(str(base))]
        for name, extra in (("pushed.img", None), ("squashed.img", env)):
            image = _copy(base, work / name)
            assert run_cli(str(image), args, env=extra).returncode == 0
            states.append(visible(str(image)))
        _KEEP_CASES[geometry] = {"work": work, "base": base, "args": args, "env": env,
                                 "states": states,
                                 "operations": writes(work / "squashed.img") - writes(base)}
    return _KEEP_CASES[geometry]


def _copy(base: Path, image: Path) -> Path:
    shutil.copyfile(base, image)
    shutil.copyfile(f"{base}.sim.json", f"{image}.sim.json")
    return image


_KEEP_ROOT = Path(tempfile.mkdtemp(prefix="snapshot-keep-sweep-"))
atexit.register(shutil.rmtree, _KEEP_ROOT, ignore_errors=True)


def pytest_generate_tests(metafunc):
    if "keep_cut" not in metafunc.fixturenames:
        return
    metafunc.parametrize("geometry,keep_cut", [
        pytest.param(g, cut, id=f"pushkeep-{g}-cut{cut}") for g in GEOMETRIES
        for cut in range(1, keep_case(g, _KEEP_ROOT)["operations"] + 1)])


def test_a_cut_in_a_push_with_keep_leaves_the_old_the_pushed_or_the_squashed_chain(geometry,
                                                                                   keep_cut):
    case = keep_case(geometry, _KEEP_ROOT)
    image = _copy(case["base"], case["work"] / f"cut{keep_cut}.img")
    result = run_cli(str(image), case["args"], cut=keep_cut, seed=keep_cut, env=case["env"])
    assert result.returncode == 99, result.stderr
    assert visible(str(image)) in case["states"]


def test_the_sweeps_squash_bases_show_the_same_before_and_after(tmp_path):
    for name in ("squash", "squashtrial"):
        case = SimCase(SCENARIOS[name], "nand", tmp_path)
        old, new = case.old, case.new
        assert (old[4], old[5]) == (new[4], new[5]), name   # the merged tree, the volatile
        assert len(new[3]) == len(old[3]) - 2, name         # three snapshots became one


# -- tier 2: real mounts -----------------------------------------------------------------------

def test_booting_the_squashed_chain_shows_what_the_old_one_showed(namespaces, tmp_path):
    rootfs = make_rootfs(tmp_path)
    image = tmp_path / "boot.img"
    SimFlash.create(image, Geometry(FlashType.NAND, 16 * MIB, 128 * KIB, 2048, 64),
                    bad_blocks=[5])
    ok(image, "format")
    write_layer(image, tmp_path, "push", {"etc/config/network": "lan\n", "etc/old": "1\n"})
    write_layer(image, tmp_path, "push", {"etc/config/network": "lan 2\n"},
                whiteouts=["etc/banner", "etc/old"])
    write_layer(image, tmp_path, "push", {"etc/config/wireless": "wifi\n"},
                whiteouts=["bin/tool"])
    write_layer(image, tmp_path, "save", {"etc/config/system": "hostname rooftop\n"})
    before = boot(rootfs, image, tmp_path)
    assert before["rc"] == 0, before["log"]
    ok(image, "squash")
    after = boot(rootfs, image, tmp_path)
    assert after["rc"] == 0, after["log"]
    assert after["files"] == before["files"] == {
        "etc/config/network": "lan 2\n", "etc/config/wireless": "wifi\n",
        "etc/config/system": "hostname rooftop\n"}
    assert "mounted 1 snapshots and the volatile record" in after["log"]


def test_every_kind_of_change_squashed_mounts_as_it_was_made(namespaces, tmp_path):
    report = run_lab(tmp_path, EVERY_KIND_OF_CHANGE, squash=True)
    assert report["ok"], report.get("difference")
    assert report["steps"] == 3


@settings(max_examples=int(os.environ.get("SNAPSHOT_HYPOTHESIS_EXAMPLES", "6")),
          deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.lists(OPS, min_size=1, max_size=6), min_size=2, max_size=4))
def test_random_change_sequences_squashed_mount_as_they_were_made(namespaces,
                                                                  tmp_path_factory, steps):
    report = run_lab(tmp_path_factory.mktemp("lab"), steps, squash=True)
    assert report["ok"], report.get("difference")
