"""Capturing an overlay upper dir and applying it with overlayfs semantics, without mounts
(tier 1, as root: whiteouts are device nodes and opaque marks are trusted xattrs)."""
import errno
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot.store.format import COMPRESSION_GZIP, COMPRESSION_XZ
from snapshot.tree import archive, capture, restore
from snapshot.tree.archive import ArchiveError
from snapshot.tree.restore import UnsafeEntry
from clirun import invoke, ok, run
from sweep import tree

OPAQUE = "trusted.overlay.opaque"


def packed(root, compression=COMPRESSION_GZIP) -> bytes:
    out = io.BytesIO()
    capture.pack(root, out, compression)
    return out.getvalue()


def apply(data: bytes, dest, compression=COMPRESSION_GZIP):
    restore.apply(io.BytesIO(data), compression, dest)


def whiteout(path):
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def opaque_dir(path):
    path.mkdir()
    os.setxattr(path, OPAQUE, b"y")


def is_whiteout(path):
    st = path.lstat()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def full_view(root):
    """tree() plus owners, xattrs and file mtimes."""
    view = {}
    for rel, entry in tree(root).items():
        path = root / rel
        st = path.lstat()
        xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                  for k in sorted(os.listxattr(path, follow_symlinks=False))}
        view[rel] = (entry, st.st_uid, st.st_gid, xattrs,
                     None if stat.S_ISDIR(st.st_mode) else int(st.st_mtime), st.st_rdev)
    return view


@pytest.fixture
def upper(tmp_path):
    """An upper dir with every kind of entry overlayfs leaves in one."""
    u = tmp_path / "upper"
    (u / "etc/config").mkdir(parents=True)
    (u / "etc/config/network").write_text("config interface 'lan'\n")
    os.chown(u / "etc/config/network", 1000, 100)
    (u / "usr/bin").mkdir(parents=True)
    (u / "usr/bin/suid").write_text("#!/bin/sh\n")
    os.chmod(u / "usr/bin/suid", 0o4755)
    os.utime(u / "usr/bin/suid", (1_600_000_000, 1_600_000_000))
    os.link(u / "etc/config/network", u / "etc/network.link")
    (u / "etc/rc.d").mkdir()
    (u / "etc/rc.d/S10boot").symlink_to("../init.d/boot")
    os.mkfifo(u / "etc/fifo")
    whiteout(u / "etc/banner")
    opaque_dir(u / "www")
    (u / "www/index.html").write_text("<html/>\n")
    os.setxattr(u / "usr/bin/suid", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    os.setxattr(u / "etc/config", "user.note", b"\xff\x00binary")
    (u / ".profile").write_text("export PS1='# '\n")
    return u


def test_round_trip_keeps_every_kind_of_entry(upper, tmp_path):
    apply(packed(upper), tmp_path / "out")
    assert full_view(tmp_path / "out") == full_view(upper)


def test_hardlinks_stay_hardlinks(upper, tmp_path):
    apply(packed(upper), tmp_path / "out")
    a, b = (tmp_path / "out/etc/config/network").stat(), (tmp_path / "out/etc/network.link").stat()
    assert a.st_ino == b.st_ino


def test_xz_round_trip(upper, tmp_path):
    data = packed(upper, COMPRESSION_XZ)
    assert data.startswith(b"\xfd7zXZ")
    apply(data, tmp_path / "out", COMPRESSION_XZ)
    assert full_view(tmp_path / "out") == full_view(upper)


@pytest.mark.parametrize("piece", [1, 511, 513, 100_000])
def test_reading_does_not_depend_on_where_the_stream_is_cut(upper, tmp_path, monkeypatch, piece):
    (upper / "big").write_bytes(os.urandom(300_000))
    monkeypatch.setattr(archive, "PIECE", piece)
    apply(packed(upper), tmp_path / "out")
    assert full_view(tmp_path / "out") == full_view(upper)
    assert (tmp_path / "out/big").read_bytes() == (upper / "big").read_bytes()


def forks(monkeypatch) -> list[int]:
    """The pids of the processes the archive reader forks from now on."""
    pids, fork = [], os.fork

    def recording_fork():
        pid = fork()
        if pid:
            pids.append(pid)
        return pid
    monkeypatch.setattr(os, "fork", recording_fork)
    return pids


@pytest.mark.parametrize("in_place", [False, True], ids=["staged", "in-place"])
def test_a_refused_archive_leaves_no_reading_process_behind(tmp_path, monkeypatch, in_place):
    pids = forks(monkeypatch)
    data = crafted(("../x", *FILE), ("zeros", tarfile.REGTYPE, {"data": bytes(16 << 20)}))
    with pytest.raises(UnsafeEntry) as refused:
        restore.apply(io.BytesIO(data), COMPRESSION_GZIP, tmp_path / "out", in_place=in_place)
    assert refused.value.__traceback__ is not None   # the error, kept, holds no reader open
    assert len(pids) == 1
    with pytest.raises(ChildProcessError):   # reaped: no zombie, no orphan
        os.waitpid(pids[0], os.WNOHANG)


def test_archives_are_read_in_a_child_process_where_there_are_two_cpus(upper, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    pids = forks(monkeypatch)
    apply(packed(upper), tmp_path / "out")
    assert len(pids) == 1 and full_view(tmp_path / "out") == full_view(upper)


def test_pieces_from_the_reading_process_may_split_headers_and_data_anywhere(tmp_path,
                                                                          monkeypatch):
    # The reading process hands pieces over through one reused buffer: pieces of an odd
    # size put header and data boundaries anywhere in them, also across two of them.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(archive, "PIECE", 1000)
    monkeypatch.setattr(archive, "FIRST_PIECE", 700)
    source = tmp_path / "source"
    for i in range(150):
        (source / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (source / f"d{i % 7}" / f"f{i}").write_bytes(os.urandom(i * 37 % 2000))
    pids = forks(monkeypatch)
    apply(packed(source), tmp_path / "out")
    assert len(pids) == 1 and full_view(tmp_path / "out") == full_view(source)


def test_with_one_cpu_the_archive_is_read_in_process(upper, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    pids = forks(monkeypatch)
    apply(packed(upper), tmp_path / "out")
    assert pids == [] and full_view(tmp_path / "out") == full_view(upper)


@pytest.mark.parametrize("failing", ["fork", "pipe"])
def test_when_no_process_can_be_started_the_archive_is_read_in_process(upper, tmp_path,
                                                                       monkeypatch, failing):
    def fails():
        raise OSError(errno.ENOMEM if failing == "fork" else errno.EMFILE, "no room")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, failing, fails)
    apply(packed(upper), tmp_path / "out")
    assert full_view(tmp_path / "out") == full_view(upper)


def random_layers(tmp_path, sizes) -> list[bytes]:
    """Archives of one file of random bytes each (f1, f2, ...), of the given sizes."""
    return [layer(tmp_path, f"layer{n}", lambda r, n=n, size=size:
                  (r / f"f{n}").write_bytes(os.urandom(size)))
            for n, size in enumerate(sizes, 1)]


def test_one_reading_process_reads_several_payloads_one_after_the_other(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    layers = random_layers(tmp_path, [100_000, 200_000, 300_000])
    expected = tmp_path / "expected"
    for data in layers:
        apply(data, expected)
    pids = forks(monkeypatch)
    with archive.Payloads([io.BytesIO(d) for d in layers], [COMPRESSION_GZIP] * 3) as payloads:
        for payload in payloads:
            restore.apply(payload, COMPRESSION_GZIP, tmp_path / "out")
    assert len(pids) == 1 and full_view(tmp_path / "out") == full_view(expected)


def test_a_reading_process_lost_midway_is_taken_over_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(archive, "PIECE", 4096)
    layers = random_layers(tmp_path, [100_000, 200_000])
    expected = tmp_path / "expected"
    for data in layers:
        apply(data, expected)
    sent, send, parent = [], archive._send, os.getpid()

    def lost_after_a_while(fd, data):   # the child is lost: killed for memory, say
        if os.getpid() != parent:
            sent.append(len(data))
            if len(sent) == 40:
                os._exit(9)
        send(fd, data)
    monkeypatch.setattr(archive, "_send", lost_after_a_while)
    pids = forks(monkeypatch)
    with archive.Payloads([io.BytesIO(d) for d in layers], [COMPRESSION_GZIP] * 2) as payloads:
        for payload in payloads:
            restore.apply(payload, COMPRESSION_GZIP, tmp_path / "out", in_place=True)
    assert len(pids) == 1 and full_view(tmp_path / "out") == full_view(expected)


def test_a_payload_left_unfinished_ends_the_reading_process_the_rest_are_read_in_process(
        tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    layers = random_layers(tmp_path, [300_000, 200_000, 100_000])
    expected = tmp_path / "expected"
    for data in layers[1:]:
        apply(data, expected)
    pids = forks(monkeypatch)
    with archive.Payloads([io.BytesIO(d) for d in layers], [COMPRESSION_GZIP] * 3) as payloads:
        first = archive.entries(payloads[0], COMPRESSION_GZIP)
        next(first)
        first.close()
        for payload in payloads[1:]:
            restore.apply(payload, COMPRESSION_GZIP, tmp_path / "out")
        with pytest.raises(ChildProcessError):   # ended and reaped before payload 2 was read
            os.waitpid(pids[0], os.WNOHANG)
    assert len(pids) == 1 and full_view(tmp_path / "out") == full_view(expected)


def test_archives_are_deterministic(upper):
    assert packed(upper) == packed(upper)


def test_entries_are_sorted_and_nameless(upper):
    with tarfile.open(fileobj=io.BytesIO(packed(upper))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:5] == [".profile", "etc", "usr", "www", "etc/banner"]
    assert all(m.uname == "" and m.gname == "" for m in members)


def test_overlay_bookkeeping_xattrs_are_not_stored(tmp_path):
    u = tmp_path / "u"
    (u / "f").parent.mkdir()
    (u / "f").write_text("x")
    os.setxattr(u / "f", "trusted.overlay.origin", b"\x00\xfb")
    apply(packed(u), tmp_path / "out")
    assert os.listxattr(tmp_path / "out/f") == []


def test_metacopy_upper_entries_are_refused(tmp_path):
    u = tmp_path / "u"
    u.mkdir()
    (u / "f").write_text("")
    os.setxattr(u / "f", "trusted.overlay.metacopy", b"")
    with pytest.raises(ArchiveError, match="metacopy entries cannot be stored"):
        packed(u)


def test_device_nodes_other_than_whiteouts_are_refused_when_stored(tmp_path):
    u = tmp_path / "u"
    u.mkdir()
    os.mknod(u / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(ArchiveError, match="device nodes cannot be stored"):
        packed(u)


# -- overlayfs semantics when snapshots are applied in order -----------------------------------

def layer(tmp_path, name, build):
    root = tmp_path / name
    root.mkdir()
    build(root)
    return packed(root)


def test_whiteout_removes_what_earlier_snapshots_put_there_and_stays(tmp_path):
    first = layer(tmp_path, "1", lambda r: ((r / "d").mkdir(), (r / "d/f").write_text("x")))
    second = layer(tmp_path, "2", lambda r: whiteout(r / "d"))
    out = tmp_path / "out"
    apply(first, out)
    apply(second, out)
    assert is_whiteout(out / "d")


def test_whiteout_over_a_lower_without_that_path_only_removes(tmp_path):
    """overlayfs lists whiteouts in directories it does not merge, so one with nothing
    below to hide is left out when the lower layer is known."""
    first = layer(tmp_path, "1", lambda r: ((r / "new").mkdir(), (r / "new/a").mkdir()))
    second = layer(tmp_path, "2", lambda r: ((r / "new").mkdir(), whiteout(r / "new/a")))
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    out = tmp_path / "out"
    for data in (first, second):
        restore.apply(io.BytesIO(data), COMPRESSION_GZIP, out, lower)
    assert os.listdir(out / "new") == []


def test_whiteout_over_a_lower_with_that_path_stays(tmp_path):
    second = layer(tmp_path, "2", lambda r: ((r / "etc").mkdir(), whiteout(r / "etc/banner")))
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc/banner").write_text("OpenWrt\n")
    out = tmp_path / "out"
    restore.apply(io.BytesIO(second), COMPRESSION_GZIP, out, lower)
    assert is_whiteout(out / "etc/banner")


def test_whiteout_below_a_lower_symlink_stays(tmp_path):
    """The symlink is not followed (it may point anywhere on the host); a whiteout too many
    is harmless, one too few shows a deleted file again."""
    second = layer(tmp_path, "2", lambda r: ((r / "var").mkdir(), whiteout(r / "var/f")))
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "var").symlink_to("/nonexistent")
    out = tmp_path / "out"
    restore.apply(io.BytesIO(second), COMPRESSION_GZIP, out, lower)
    assert is_whiteout(out / "var/f")


def test_opaque_directory_replaces_earlier_contents(tmp_path):
    def one(r):
        (r / "d").mkdir()
        (r / "d/old").write_text("x")

    def two(r):
        opaque_dir(r / "d")
        (r / "d/new").write_text("y")
    out = tmp_path / "out"
    apply(layer(tmp_path, "1", one), out)
    apply(layer(tmp_path, "2", two), out)
    assert sorted(os.listdir(out / "d")) == ["new"]
    assert os.getxattr(out / "d", OPAQUE) == b"y"


def test_plain_directory_merges_with_earlier_contents_and_stays_opaque(tmp_path):
    def one(r):
        opaque_dir(r / "d")
        (r / "d/old").write_text("x")

    def two(r):
        (r / "d").mkdir()
        (r / "d/new").write_text("y")
    out = tmp_path / "out"
    apply(layer(tmp_path, "1", one), out)
    apply(layer(tmp_path, "2", two), out)
    assert sorted(os.listdir(out / "d")) == ["new", "old"]
    assert os.getxattr(out / "d", OPAQUE) == b"y"


@pytest.mark.parametrize("before", ["whiteout", "file"])
def test_directory_where_a_whiteout_or_file_was_becomes_opaque(tmp_path, before):
    first = layer(tmp_path, "1", lambda r: whiteout(r / "d") if before == "whiteout"
                  else (r / "d").write_text("x"))
    second = layer(tmp_path, "2", lambda r: ((r / "d").mkdir(), (r / "d/f").write_text("y")))
    out = tmp_path / "out"
    apply(first, out)
    apply(second, out)
    assert os.getxattr(out / "d", OPAQUE) == b"y" and os.listdir(out / "d") == ["f"]


def test_file_replaces_a_file_and_a_directory(tmp_path):
    def one(r):
        (r / "f").write_text("old")
        (r / "d").mkdir()
        (r / "d/inner").write_text("x")

    def two(r):
        (r / "f").write_text("new")
        (r / "d").write_text("now a file")
    out = tmp_path / "out"
    apply(layer(tmp_path, "1", one), out)
    apply(layer(tmp_path, "2", two), out)
    assert (out / "f").read_text() == "new" and (out / "d").read_text() == "now a file"


def test_in_place_with_the_names_earlier_archives_placed_gives_the_staged_result(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")

    def one(r):
        (r / "f").write_text("old")
        (r / "link").symlink_to(victim)
        (r / "hard").write_text("shared")
        os.link(r / "hard", r / "partner")
        (r / "d").mkdir()
        (r / "d/inner").write_text("x")

    def two(r):
        for name in ("f", "link", "hard", "d", "new"):
            (r / name).write_text(f"now {name}")
    layers = [layer(tmp_path, "1", one), layer(tmp_path, "2", two)]
    staged, in_place = tmp_path / "staged", tmp_path / "in-place"
    placed = {"gone", "new"}   # a hint that is wrong about two names
    for data in layers:
        apply(data, staged)
        restore.apply(io.BytesIO(data), COMPRESSION_GZIP, in_place, in_place=True,
                      placed=placed)
    assert full_view(in_place) == full_view(staged)
    assert victim.read_text() == "precious" and (in_place / "partner").read_text() == "shared"
    assert {"f", "link", "hard", "partner", "d", "d/inner", "new"} <= placed


# -- safety: crafted archives ------------------------------------------------------------------

def crafted(*entries) -> bytes:
    """A gzip tar of (TarInfo fields..., data) entries, as an attacker could write it."""
    out = io.BytesIO()
    with capture.compressor(out, COMPRESSION_GZIP) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = None
            for key, value in extra.items():
                if key != "data":
                    setattr(info, key, value)
            if kind == tarfile.REGTYPE:
                data = extra.get("data", b"x")
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


FILE = (tarfile.REGTYPE, {})


@pytest.mark.parametrize("entries,reason", [
    ([("/etc/passwd", *FILE)], "absolute path"),
    ([("../outside", *FILE)], "'..' in the path"),
    ([("a/../../outside", *FILE)], "'..' in the path"),
    ([("escape", tarfile.SYMTYPE, {"linkname": "/tmp"}), ("escape/file", *FILE)],
     "a symlink"),
    # The directory was safe for the entries below it until a later entry replaced it.
    ([("d", tarfile.DIRTYPE, {}), ("d/e", tarfile.DIRTYPE, {}), ("d/e/f", *FILE),
      ("d", tarfile.SYMTYPE, {"linkname": "/tmp"}), ("d/e/g", *FILE)], "a symlink"),
    ([("hl", tarfile.LNKTYPE, {"linkname": "/etc/shadow"})], "absolute path"),
    ([("hl", tarfile.LNKTYPE, {"linkname": "../../etc/shadow"})], "'..' in the path"),
    ([("hl", tarfile.LNKTYPE, {"linkname": "not-in-archive"})], "not a file earlier"),
    ([("null", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3})], "device node"),
    ([("disk", tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0})], "device node"),
])
def test_unsafe_entries_are_refused_and_nothing_is_unpacked(tmp_path, entries, reason):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("untouched")
    data = crafted(("first", *FILE), *entries)
    with pytest.raises(UnsafeEntry, match=reason) as e:
        apply(data, out)
    assert repr(entries[-1][0]) in str(e.value)
    assert os.listdir(out) == ["keep"] and (out / "keep").read_text() == "untouched"


def test_writing_through_a_symlink_already_in_the_target_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "etc").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeEntry, match="'etc' is a symlink in the target"):
        apply(crafted(("etc/passwd", *FILE)), out)
    assert not (tmp_path / "elsewhere").exists()


def test_a_path_through_a_file_in_the_target_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "etc").write_text("a file")
    with pytest.raises(UnsafeEntry, match="'etc' is not a directory in the target"):
        apply(crafted(("etc/config/network", *FILE)), out)
    assert (out / "etc").read_text() == "a file"


def test_a_file_replacing_a_symlink_does_not_follow_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / "f").symlink_to(victim)
    apply(crafted(("f", tarfile.REGTYPE, {"data": b"attack"})), out)
    assert victim.read_text() == "precious" and (out / "f").read_text() == "attack"


# -- commands ------------------------------------------------------------------------------------

@pytest.fixture
def image(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, Geometry(FlashType.NAND, 8 << 20, 128 << 10, 2048, 64))
    ok(path, "format")
    return path


def test_compression_is_recorded_and_listed(image, upper, tmp_path):
    ok(image, "push", "--from", upper, "--compression", "xz")
    ok(image, "push", "--from", upper)
    from snapshot.store.chain import Chain
    with SimFlash(image) as flash:
        assert [r.entry.compression for r in Chain(flash).snapshots] == \
            [COMPRESSION_XZ, COMPRESSION_GZIP]
    ok(image, "unpack", "--to", tmp_path / "out")
    assert full_view(tmp_path / "out") == full_view(upper)


def test_compression_default_comes_from_the_config_file(image, upper, tmp_path, monkeypatch):
    config = tmp_path / "snapshot.uci"
    config.write_text("config snapshot 'main'\n\toption compression 'xz'\n")
    monkeypatch.setenv("SNAPSHOT_CONFIG", str(config))
    ok(image, "push", "--from", upper)
    from snapshot.store.chain import Chain
    with SimFlash(image) as flash:
        assert Chain(flash).snapshots[0].entry.compression == COMPRESSION_XZ


def test_show_lists_what_a_snapshot_changed(image, tmp_path):
    one = tmp_path / "one"
    (one / "etc/config").mkdir(parents=True)
    (one / "etc/config/network").write_text("a\n")
    two = tmp_path / "two"
    (two / "etc/config").mkdir(parents=True)
    (two / "etc/config/network").write_text("b\n")
    (two / "etc/config/wireless").write_text("c\n")
    whiteout(two / "etc/banner")
    opaque_dir(two / "www")
    ok(image, "push", "--from", one)
    ok(image, "push", "--from", two, "-m", "wifi")
    import json
    info = json.loads(ok(image, "show", "2", "--json"))
    assert (info["added"], info["modified"], info["deleted"], info["opaque"]) == \
        (["etc/config/wireless"], ["etc/config/network"], ["etc/banner"], ["www"])
    assert info["message"] == "wifi"
    assert "  deleted   etc/banner" in ok(image, "show", "2")


def test_show_of_a_missing_snapshot_is_an_error(image):
    assert "there is no snapshot 3 (the chain has 0)" in run(image, "show", "3").output


def test_export_writes_a_tar_gnu_tar_lists(image, upper, tmp_path):
    import subprocess
    ok(image, "push", "--from", upper)
    ok(image, "export", "1", "-o", tmp_path / "s1.tar.gz")
    listing = subprocess.run(["tar", "tvf", str(tmp_path / "s1.tar.gz")], capture_output=True,
                             text=True, check=True).stdout
    assert "etc/config/network" in listing and "usr/bin/suid" in listing
    assert " 0,0 " in listing   # the whiteout


def test_unpacking_several_snapshots_starts_one_reading_process(image, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for n in range(3):
        (tmp_path / f"t{n}").mkdir()
        (tmp_path / f"t{n}/f{n}").write_bytes(os.urandom(150_000))
        ok(image, "push", "--from", tmp_path / f"t{n}")
    pids = forks(monkeypatch)
    ok(image, "unpack", "--to", tmp_path / "out")
    assert len(pids) == 1
    assert all((tmp_path / f"out/f{n}").read_bytes() == (tmp_path / f"t{n}/f{n}").read_bytes()
               for n in range(3))


def test_archive_commands_have_help_with_an_example():
    for command in ("show", "export"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


def test_unpack_of_a_crafted_record_fails_with_one_clear_line(image, tmp_path):
    from snapshot.store.chain import Chain, RecordWriter, commit
    from snapshot.store.format import SNAPSHOT
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        writer = RecordWriter(chain, SNAPSHOT, 1, "crafted", COMPRESSION_GZIP)
        writer.write(crafted(("ok", *FILE), ("../../etc/cron", *FILE)))
        commit(chain, [writer.finish()])
    out = tmp_path / "out"
    result = run(image, "unpack", "--to", out)
    assert result.exit_code == 1
    assert result.output == ("Error: archive entry '../../etc/cron' refused: '..' in the path; "
                             "nothing was unpacked\n")
    assert list(out.iterdir()) == []


# -- a staged unpack is all or nothing ---------------------------------------------------------

# Every call through which a staged unpack makes or changes something. (Removing, which the
# clean-up and an undo do, does not fail for want of space or inodes; an undo that fails is
# the next test.)
CHANGES = ("rename", "mkdir", "open", "link", "symlink", "mkfifo", "mknod", "setxattr",
           "removexattr", "chown", "chmod", "utime")


def strict_view(root):
    """full_view() plus directories' mtimes: after an undo even those are as they were."""
    return {rel: (*entry, int(os.lstat(root / rel).st_mtime)) for rel, entry in
            full_view(root).items()} | {".": int(os.lstat(root).st_mtime)}


def used_target(path):
    """A target with something at every path the archive below replaces or merges with."""
    path.mkdir()
    (path / "file-to-dir").write_text("a file")
    (path / "dir-to-file").mkdir()
    (path / "dir-to-file/inner").write_text("inner")
    (path / "merged").mkdir()
    os.setxattr(path / "merged", "user.old", b"1")
    (path / "merged/kept").write_text("kept")
    (path / "opaque").mkdir()
    (path / "opaque/hidden").write_text("hidden by the new opaque dir")
    (path / "whited").write_text("whited out")
    (path / "replaced").write_text("old contents")
    (path / "link").symlink_to("replaced")
    for p in sorted(path.rglob("*"), reverse=True):
        os.utime(p, (1_000_000, 1_000_000), follow_symlinks=False)
    os.utime(path, (1_000_000, 1_000_000))
    return path


def every_kind_of_placement(tmp_path):
    def build(r):
        (r / "file-to-dir").mkdir()
        (r / "file-to-dir/new").write_text("new")
        (r / "dir-to-file").write_text("now a file")
        (r / "merged").mkdir()
        os.setxattr(r / "merged", "user.new", b"2")
        (r / "merged/added").write_text("added")
        opaque_dir(r / "opaque")
        (r / "opaque/fresh").write_text("fresh")
        whiteout(r / "whited")
        (r / "replaced").write_text("new contents")
        os.link(r / "replaced", r / "hardlink")
        (r / "link").symlink_to("elsewhere")
        for name in ("d1", "d2", "d3"):
            (r / name / "sub").mkdir(parents=True)
            (r / name / "sub/f").write_text(name)
        os.mkfifo(r / "fifo")
    return layer(tmp_path, "archive", build)


def test_a_staged_unpack_failing_at_any_step_leaves_the_target_as_it_was(tmp_path,
                                                                          monkeypatch):
    data = every_kind_of_placement(tmp_path)
    expected = tmp_path / "expected"
    apply(data, used_target(expected))
    steps = 0
    while True:
        steps += 1
        target = used_target(tmp_path / f"target{steps}")
        before = strict_view(target)
        calls = [0]

        def failing(real):
            def call(*args, **kwargs):
                calls[0] += 1
                if calls[0] == steps:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(*args, **kwargs)
            return call
        with monkeypatch.context() as patch:
            for name in CHANGES:
                patch.setattr(os, name, failing(getattr(os, name)))
            try:
                apply(data, target)
                failed = None
            except ArchiveError as e:
                failed = str(e)
        if calls[0] < steps:   # done without meeting the failure: every step was tried
            assert failed is None
            break
        if failed is None:
            # The failure hit the removal of the staging area after the last entry was
            # placed (rmtree opens directories): the unpack is done, a leftover is harmless.
            shutil.rmtree(target / restore.STAGING, ignore_errors=True)
            assert full_view(target) == full_view(expected)
            continue
        assert strict_view(target) == before, f"failing change {steps}: {failed}"
        assert failed.endswith(f"{target} is as it was") or "entry" not in failed, failed
        assert not (target / restore.STAGING).exists(), failed
    assert steps > 60
    assert full_view(target) == full_view(expected)


def test_an_undo_that_fails_too_names_what_is_left_where(tmp_path, monkeypatch):
    data = every_kind_of_placement(tmp_path)
    target = used_target(tmp_path / "target")
    real_rename, aside = os.rename, []
    displaced = str(target / "dir-to-file")

    def rename(source, destination):
        # Once the directory at `dir-to-file` is moved aside, nothing can be renamed to that
        # name: neither the new file nor, undoing, the directory.
        if str(destination) == displaced and aside:
            raise OSError(errno.EIO, "Input/output error")
        if str(source) == displaced:
            aside.append(str(destination))
        return real_rename(source, destination)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(ArchiveError) as e:
        apply(data, target)
    monkeypatch.undo()
    message = str(e.value)
    assert message.startswith(f"cannot unpack 'dir-to-file' into {target}: Input/output error; "
                              f"undoing the entries placed so far failed, so {target} is not "
                              f"as it was: {displaced} (moved to {aside[0]}): Input/output "
                              f"error")
    assert (Path(aside[0]) / "inner").read_text() == "inner"   # kept where the message says
