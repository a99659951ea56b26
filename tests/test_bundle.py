"""Bundles on the simulator, signed and verified by the real usign: create (the same input
gives the same bytes), apply as a trial on top of the base, every refusal with the image
unchanged, the resumable download, and the bundle named in status and in a rollback's note.
The power cuts of `bundle apply` are in the sweep (tests/sweep.py, scenario bundleapply)."""
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bundle_lab import Lab, cut_off
from mtd import FlashType, Geometry, SimFlash
from sweep import damage_payload, health_config, image_digest, visible
from web import self_signed, served

KIB = 1024
NOR = Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0)


@pytest.fixture
def lab(tmp_path) -> Lab:
    lab = Lab.make(tmp_path / "lab")
    lab.reference(tmp_path / "ref.img", NOR)
    return lab


def unit(lab: Lab, tmp_path: Path, name: str = "unit", volatile: bool = True) -> Path:
    image = tmp_path / f"{name}.img"
    lab.unit_from(image, volatile)
    return image


def status(lab: Lab, image: Path) -> dict:
    return json.loads(lab.cli(image, "status", "--json").stdout)


def unpacked(lab: Lab, image: Path, dest: Path) -> dict:
    from sweep import tree
    lab.cli(image, "unpack", "--to", dest)
    return tree(dest)


def test_the_same_snapshot_gives_the_same_bytes(lab, tmp_path):
    ref = tmp_path / "ref.img"
    one = lab.bundle(ref, "2", tmp_path / "one.snb")
    two = lab.bundle(ref, "2", tmp_path / "two.snb")
    assert one.read_bytes() == two.read_bytes()
    merged = [lab.bundle(ref, "2..3", tmp_path / f"m{i}.snb") for i in (1, 2)]
    assert merged[0].read_bytes() == merged[1].read_bytes()
    shown = json.loads(lab.cli(ref, "bundle", "show", one, "--json").stdout)
    assert shown["boards"] == ["sandbox,router-v1"] and len(shown["base"]) == 1
    assert shown["message"] == "fix 1" and shown["trusted_key"]


def test_apply_puts_the_bundle_on_trial_over_the_base_and_keeps_the_unsaved_config(lab,
                                                                                   tmp_path):
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    fix = lab.bundle(ref, "2", tmp_path / "fix.snb")
    before = visible(str(dev))
    done = json.loads(lab.cli(dev, "bundle", "apply", fix, "--no-reboot", "--json").stdout)
    assert done["snapshot"] == 2 and done["volatile_kept"]
    info = status(lab, dev)
    assert info["trial"]["kind"] == "snapshot" and info["trial"]["max_attempts"] == 3
    assert info["bundle"]["state"] == "trial" and info["bundle"]["id"] == done["applied"]
    # The unit now boots the reference's snapshots 1 and 2, with its own volatile on top.
    lab.cli(ref, "rollback", "--to", "2")
    assert unpacked(lab, dev, tmp_path / "u") == unpacked(lab, ref, tmp_path / "r")
    after = visible(str(dev))
    assert after[-1] == before[-1] and after[-1] is not None
    # Applying it again changes nothing; confirming it keeps the volatile.
    digest = image_digest(dev)
    assert "nothing to do" in lab.cli(dev, "bundle", "apply", fix, "--no-reboot").stdout
    assert image_digest(dev) == digest
    lab.cli(dev, "confirm")
    assert status(lab, dev)["bundle"]["state"] == "confirmed"
    assert visible(str(dev))[-1] == before[-1]


def test_a_merged_range_applies_as_one_trial(lab, tmp_path):
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path, volatile=False)
    fix = lab.bundle(ref, "2..3", tmp_path / "fix.snb")
    lab.cli(dev, "bundle", "apply", fix, "--no-reboot")
    assert status(lab, dev)["snapshots"] == 2
    assert unpacked(lab, dev, tmp_path / "u") == unpacked(lab, ref, tmp_path / "r")


def _bad_signature(fix: Path) -> None:
    data = bytearray(fix.read_bytes())
    at = data.index(b'"message":"fix 1"') + len('"message":"fix ')
    data[at] = ord("9")
    fix.write_bytes(bytes(data))


def _flip_payload(fix: Path) -> None:
    data = bytearray(fix.read_bytes())
    data[-100] ^= 0xFF
    fix.write_bytes(bytes(data))


REFUSALS = {
    "unsigned": (lambda lab, ref, out: lab.cli(ref, "bundle", "create", "2", "-o", out),
                 "is not signed"),
    "untrusted": (lambda lab, ref, out: lab.bundle(ref, "2", out, lab.other),
                  "does not trust"),
    "bad-signature": (lambda lab, ref, out: _bad_signature(lab.bundle(ref, "2", out)),
                      "bad signature"),
    "board": (lambda lab, ref, out: lab.bundle(ref, "2", out, None, "--board", "other,board"),
              "is for other,board, and this router is sandbox,router-v1"),
    "firmware": (lambda lab, ref, out: (lab.rom / "etc/new").write_text("x")
                 and lab.bundle(ref, "2", out), "is for another firmware"),
    "base": (lambda lab, ref, out: lab.bundle(ref, "3", out),
             "applies on top of 2 snapshots"),
    "truncated": (lambda lab, ref, out: out.write_bytes(lab.bundle(ref, "2", out)
                                                        .read_bytes()[:-5000]),
                  "truncated"),
    "corrupted": (lambda lab, ref, out: _flip_payload(lab.bundle(ref, "2", out)),
                  "corrupted: the payload's SHA-256"),
    "not-a-bundle": (lambda lab, ref, out: out.write_bytes(b"\x1f\x8b" + bytes(100)),
                     "is not a snapshot bundle"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_bundle_is_refused_in_one_line_with_the_image_unchanged(lab, tmp_path, case):
    make, reason = REFUSALS[case]
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    out = tmp_path / "bad.snb"
    make(lab, ref, out)
    if case == "firmware":      # the bundle was made for a changed root; the unit's is not
        (lab.rom / "etc/new").unlink()
    digest = image_digest(dev)
    done = lab.cli(dev, "bundle", "apply", out, "--no-reboot", check=False)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and reason in lines[0], \
        done.stderr
    assert "nothing was" in lines[0]
    assert image_digest(dev) == digest


def test_the_base_refusal_names_the_base_needed(lab, tmp_path):
    ref = tmp_path / "ref.img"
    dev = tmp_path / "empty.img"
    SimFlash.create(dev, NOR)
    lab.cli(dev, "format")
    fix = lab.bundle(ref, "2", tmp_path / "fix.snb")
    done = lab.cli(dev, "bundle", "apply", fix, "--no-reboot", check=False)
    base = json.loads(lab.cli(ref, "bundle", "show", fix, "--json").stdout)["base"][0]
    assert f"applies on top of 1 snapshot [{base[:12]}]" in done.stderr
    assert "this router has 0 confirmed: []" in done.stderr


def test_a_base_of_the_same_count_but_other_content_is_refused_with_the_image_unchanged(
        lab, tmp_path):
    """The base is checked by its snapshots' content: a unit with one confirmed snapshot, as
    the bundle's base has, but another one, refuses it."""
    from mtd import open_flash
    from snapshot.fleet import bundle as bundles
    from snapshot.store.chain import Chain
    from sweep import make_tree
    ref, dev = tmp_path / "ref.img", tmp_path / "other.img"
    SimFlash.create(dev, NOR)
    lab.cli(dev, "format")
    lab.cli(dev, "push", "--from", make_tree(tmp_path / "other", 9, 60), "-m", "base")
    fix = lab.bundle(ref, "2", tmp_path / "fix.snb")
    shown = json.loads(lab.cli(ref, "bundle", "show", fix, "--json").stdout)
    need = shown["base"]
    with open_flash(str(dev)) as flash:
        have = bundles.base(Chain(flash))
    assert len(have) == len(need) == 1 and have != need
    digest = image_digest(dev)
    done = lab.cli(dev, "bundle", "apply", fix, "--no-reboot", check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: bundle {shown['id']} applies on top of 1 snapshot [{need[0][:12]}], "
        f"and this router has 1 confirmed: [{have[0][:12]}]; nothing was written")
    assert image_digest(dev) == digest


def test_a_failed_bundle_trial_names_the_bundle_in_the_rollback(lab, tmp_path):
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    fix = lab.bundle(ref, "2", tmp_path / "fix.snb")
    before = visible(str(dev))
    lab.cli(dev, "bundle", "apply", fix, "--no-reboot")
    bundle_id = status(lab, dev)["bundle"]["id"]
    conf = health_config(tmp_path / "h", healthy=False)["SNAPSHOT_CONFIG"]
    Path(conf).write_text(Path(conf).read_text() + lab.config.read_text().split("\n", 1)[1])
    import os
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "snapshot", "--device", str(dev), "watch",
                    "--no-reboot"], env={**os.environ, **lab.env, "SNAPSHOT_CONFIG": conf},
                   capture_output=True, check=False)
    info = status(lab, dev)
    assert info["trial"] is None and info["last_rollback"]["bundle"] == bundle_id
    assert info["bundle"]["state"] == "failed"
    lab.cli(dev, "rollback")
    assert visible(str(dev))[3:] == before[3:]


def test_a_damaged_bundle_trial_is_rolled_back_by_the_repair_and_stays_failed_here(lab,
                                                                                  tmp_path):
    """A trial whose own record is damaged has failed (DESIGN.md §4): the boot's repair
    rolls it back, and the bundle joins those no poll applies again."""
    from snapshot.store.chain import Chain
    from snapshot.store.format import Fleet
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    fix = lab.bundle(ref, "2", tmp_path / "fix.snb")
    lab.cli(dev, "bundle", "apply", fix, "--no-reboot")
    bundle_id = status(lab, dev)["bundle"]["id"]
    damage_payload(str(dev), lambda chain: chain.trial)
    lab.cli(dev, "check", "--repair")
    info = status(lab, dev)
    assert info["trial"] is None and info["last_rollback"]["bundle"] == bundle_id
    assert "is damaged (payload CRC mismatch): rolled back" in info["last_rollback"]["reason"]
    with SimFlash(dev) as flash:
        assert bundle_id in Fleet.of(Chain(flash).fleet).failed


# -- over HTTP ------------------------------------------------------------------------------

class Served(http.server.SimpleHTTPRequestHandler):
    """A quiet file server that notes each GET (path, first byte) and cuts after `cut`."""
    cut = 30000
    served: list = []

    def log_message(self, *args) -> None:
        pass


class Flaky(Served):
    """Serves files with Range support; the first GET of each file stops after `cut` bytes."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start, status = 0, 200
        ranged = self.headers.get("Range")
        if ranged and self.headers.get("If-Range", etag) == etag:
            start, status = int(ranged.split("=")[1].rstrip("-")), 206
        self.served.append((self.path, start))
        body = data[start:]
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        first = sum(p == self.path for p, _ in self.served) == 1
        self.wfile.write(body[:self.cut] if first else body)
        if first:
            self.close_connection = True


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    Flaky.served = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Flaky, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_broken_download_resumes_with_range(lab, tmp_path, server):
    root, url = server
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    fix = lab.bundle(ref, "2", root / "fix.snb")
    assert fix.stat().st_size > Flaky.cut
    done = lab.cli(dev, "bundle", "apply", f"{url}/fix.snb", "--no-reboot")
    assert "on trial" in done.stdout
    assert [start for _, start in Flaky.served if _ == "/fix.snb"] == [0, Flaky.cut]
    assert status(lab, dev)["bundle"]["state"] == "trial"


@pytest.fixture
def tls_server(tmp_path):
    """The server of `server` over TLS, with a self-signed certificate for 127.0.0.1, and the
    environment in which the unit trusts it."""
    root = tmp_path / "www"
    root.mkdir()
    certificate = self_signed(tmp_path)
    Flaky.served = []
    with served(functools.partial(Flaky, directory=str(root)), certificate) as url:
        yield root, url, {"SSL_CERT_FILE": str(certificate[0])}


def test_a_broken_https_download_resumes_with_range(lab, tmp_path, tls_server):
    root, url, trust = tls_server
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    lab.bundle(ref, "2", root / "fix.snb")
    done = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(dev), "bundle",
                           "apply", f"{url}/fix.snb", "--no-reboot"],
                          env={**os.environ, **lab.env, **trust}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "on trial" in done.stdout, done.stderr
    assert [start for _, start in Flaky.served if _ == "/fix.snb"] == [0, Flaky.cut]


def test_an_https_server_the_router_does_not_trust_is_one_line_and_nothing_written(
        lab, tmp_path, tls_server):
    root, url, _ = tls_server
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    lab.bundle(ref, "2", root / "fix.snb")
    before = visible(str(dev))
    done = lab.cli(dev, "bundle", "apply", f"{url}/fix.snb", "--no-reboot", check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "the server's certificate does not verify (self-signed certificate)" in done.stderr
    assert visible(str(dev)) == before and Flaky.served == []


def test_a_download_corrupted_in_flight_commits_nothing(lab, tmp_path, server):
    root, url = server
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    _flip_payload(lab.bundle(ref, "2", root / "fix.snb"))
    before = visible(str(dev))
    done = lab.cli(dev, "bundle", "apply", f"{url}/fix.snb", "--no-reboot", check=False)
    assert done.returncode == 1 and "nothing was committed" in done.stderr
    assert visible(str(dev)) == before
    lab.bundle(ref, "2", root / "good.snb")
    lab.cli(dev, "bundle", "apply", f"{url}/good.snb", "--no-reboot")
    assert status(lab, dev)["bundle"]["state"] == "trial"


def test_a_missing_url_is_one_line(lab, tmp_path, server):
    _, url = server
    dev = unit(lab, tmp_path)
    done = lab.cli(dev, "bundle", "apply", f"{url}/nope.snb", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("Error: ") and "404" in done.stderr


def test_help_has_an_example_for_each_bundle_command(lab, tmp_path):
    for command in ("create", "sign", "show", "apply"):
        out = lab.cli(tmp_path / "ref.img", "bundle", command, "--help").stdout
        assert "Example:" in out


def test_sign_replaces_the_signature(lab, tmp_path):
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    out = tmp_path / "fix.snb"
    lab.bundle(ref, "2", out, lab.other)
    lab.cli(ref, "bundle", "sign", out, "--key", lab.secret)
    assert json.loads(lab.cli(ref, "bundle", "show", out, "--json").stdout)["trusted_key"]
    assert lab.bundle(ref, "2", tmp_path / "same.snb").read_bytes() == out.read_bytes()
    lab.cli(dev, "bundle", "apply", out, "--no-reboot")
    assert status(lab, dev)["bundle"]["state"] == "trial"


def unreaped() -> set[int]:
    """This process's children that ended and were not waited for."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if state == "Z" and int(ppid) == os.getpid():
            found.add(int(pid))
    return found


def test_usign_verifies_a_message_larger_than_a_pipe_without_leaking_a_descriptor(lab,
                                                                                 monkeypatch):
    # verify_bytes starts usign itself (posix_spawn): the message goes through its stdin, the
    # signature through a descriptor it inherits, and nothing stays open or unreaped after.
    from snapshot.errors import SnapshotError
    from snapshot.fleet import bundle as bundles
    monkeypatch.setenv("PATH", lab.env["PATH"])
    data = os.urandom(300 * 1024)        # several times what a pipe holds
    signature = bundles.sign_bytes(data, lab.secret)
    key = lab.keys_dir / bundles.fingerprint(signature)
    before, dead = sorted(os.listdir("/proc/self/fd")), unreaped()
    assert bundles.verify_bytes(data, signature, key)
    assert not bundles.verify_bytes(data[:-1] + bytes([data[-1] ^ 1]), signature, key)
    assert not bundles.verify_bytes(data, signature, lab.keys_dir / "no-such-key")
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert unreaped() == dead
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SnapshotError, match="usign is not installed"):
        bundles.verify_bytes(data, signature, key)
    assert sorted(os.listdir("/proc/self/fd")) == before


class Slow(Served):
    """Serves the whole file, slowly after the first `cut` bytes, so that a test can stop the
    unit mid-download."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        self.served.append((self.path, 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:self.cut])
        if self.cut >= len(data):
            return
        self.wfile.flush()
        for at in range(self.cut, len(data), 512):
            threading.Event().wait(0.1)
            self.wfile.write(data[at:at + 512])


@pytest.mark.parametrize("how", ["kill", "powercut"])
def test_a_download_cut_off_leaves_the_old_state_and_the_next_apply_completes(lab, tmp_path,
                                                                              how):
    import os
    import sys
    root = tmp_path / "www"
    root.mkdir()
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    # A fix of a few blocks, so that the cut comes after some of them are written.
    from sweep import make_tree
    lab.cli(ref, "rollback", "--to", "1")
    lab.cli(ref, "push", "--from", make_tree(tmp_path / "big", 7, 300), "-m", "big fix")
    lab.bundle(ref, "2", root / "fix.snb")
    Slow.cut = 200 * KIB
    Slow.served = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Slow, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/fix.snb"
    argv = [sys.executable, "-m", "snapshot", "--device", str(dev), "bundle", "apply", url,
            "--no-reboot"]
    try:
        cut_off(argv, {**os.environ, **lab.env}, how, dev)
        Slow.cut = 10 ** 9                          # the next download is quick
        lab.cli(dev, "bundle", "apply", url, "--no-reboot")
    finally:
        Slow.cut = 30000
        httpd.shutdown()
    assert status(lab, dev)["bundle"]["state"] == "trial"


def test_a_signify_key_signs_bundles_the_router_trusts(lab, tmp_path):
    """Operators on a PC may use Debian's signify-openbsd: its keys are usign's format."""
    import subprocess
    from conftest import cannot_run
    signify = shutil.which("signify-openbsd")
    if signify is None:
        cannot_run("signify-openbsd is not installed (scripts/test.sh installs it)")
    subprocess.run([signify, "-G", "-n", "-p", tmp_path / "pc.pub", "-s", tmp_path / "pc.sec"],
                   check=True)
    from openwrt_tools import tool
    fingerprint = subprocess.run([tool("usign"), "-F", "-p", tmp_path / "pc.pub"], check=True,
                                 capture_output=True, text=True).stdout.strip()
    shutil.copy(tmp_path / "pc.pub", lab.keys_dir / fingerprint)
    ref, dev = tmp_path / "ref.img", unit(lab, tmp_path)
    fix = lab.bundle(ref, "2", tmp_path / "fix.snb", tmp_path / "pc.sec")
    lab.cli(dev, "bundle", "apply", fix, "--no-reboot")
    assert status(lab, dev)["bundle"]["state"] == "trial"


# -- the firmware id (FORMAT.md §9, DESIGN.md §15) ------------------------------------------

def _squashfs(tree: Path, out: Path) -> Path:
    from conftest import cannot_run
    if not shutil.which("mksquashfs"):
        cannot_run("mksquashfs is not installed (squashfs-tools)")
    subprocess.run(["mksquashfs", tree, out, "-noappend", "-quiet", "-no-progress", "-all-root",
                    "-mkfs-time", "0"], check=True)
    return out


def _format(bundle: Path) -> int:
    return int.from_bytes(bundle.read_bytes()[4:6], "little")


def _rom_is(lab: Lab, rom: Path) -> None:
    lab.config.write_text(lab.config.read_text().replace(f"'{lab.rom}'", f"'{rom}'"))
    lab.rom = rom


def test_the_squashfs_id_is_the_image_and_changes_exactly_with_the_firmware(lab, tmp_path):
    from snapshot.fleet import firmware
    first = _squashfs(lab.rom, tmp_path / "a.sqfs")
    again = _squashfs(lab.rom, tmp_path / "again.sqfs")
    release = lab.rom / "etc/openwrt_release"
    release.write_text(release.read_text().replace("24.10.0", "24.10.1"))   # same size
    other = _squashfs(lab.rom, tmp_path / "b.sqfs")
    with open(first, "ab") as f:                # a partition goes on past the image
        f.write(b"\xff" * 4096)
    image = first.read_bytes()
    used = int.from_bytes(image[40:48], "little")
    ids = {p.name: firmware.identity(p, firmware.SQUASHFS) for p in (first, again, other)}
    assert ids["a.sqfs"] == hashlib.sha256(image[:used]).hexdigest() == ids["again.sqfs"]
    assert ids["b.sqfs"] != ids["a.sqfs"]


def test_a_bundle_made_before_squashfs_ids_still_applies(lab, tmp_path):
    """Format 1, whose rootfs is the tree id: what every bundle made before format 2 is, and
    what an unpacked root still gives."""
    from snapshot.fleet import firmware
    dev = unit(lab, tmp_path)
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb")
    shown = json.loads(lab.cli(dev, "bundle", "show", fix, "--json").stdout)
    assert _format(fix) == 1 and shown["rootfs"] == firmware.tree_id(lab.rom)
    lab.cli(dev, "bundle", "apply", fix, "--no-reboot")
    assert status(lab, dev)["snapshots"] == 2


def test_a_bundle_of_a_squashfs_applies_on_that_firmware_only(lab, tmp_path):
    mine = _squashfs(lab.rom, tmp_path / "mine.sqfs")
    (lab.rom / "etc/banner").write_text("another build\n")
    other = _squashfs(lab.rom, tmp_path / "other.sqfs")
    fix = lab.bundle(tmp_path / "ref.img", "2", tmp_path / "fix.snb", None, "--rom", mine)
    assert _format(fix) == 2
    unpacked = lab.rom
    for rom, refusal in ((other, "is for another firmware (squashfs "),
                         (unpacked, "names its firmware by its squashfs id, which this router "
                                    "cannot compute")):
        _rom_is(lab, rom)
        dev = unit(lab, tmp_path, f"unit-{rom.name}")
        digest = image_digest(dev)
        done = lab.cli(dev, "bundle", "apply", fix, "--no-reboot", check=False)
        assert done.returncode == 1 and refusal in done.stderr, done.stderr
        assert image_digest(dev) == digest
    _rom_is(lab, mine)
    dev = unit(lab, tmp_path, "unit-mine")
    lab.cli(dev, "bundle", "apply", fix, "--no-reboot")
    assert status(lab, dev)["snapshots"] == 2


MOUNTED = r"""
import json, subprocess, sys
from pathlib import Path
from snapshot.fleet import firmware
image, rom, cli = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
subprocess.run(["mount", "-o", "loop,ro", str(image), str(rom)], check=True)
Path(firmware.CACHE).unlink(missing_ok=True)
ids = [firmware.kind(rom), firmware.identity(rom, firmware.SQUASHFS)]
kept = json.loads(Path(firmware.CACHE).read_text())["sha256"]
ids += [kept, firmware.identity(rom, firmware.SQUASHFS), firmware.tree_id(rom)]
done = [subprocess.run(argv, capture_output=True, text=True) for argv in cli]
print(json.dumps({"ids": ids, "done": [(d.returncode, d.stderr) for d in done]}))
"""


HIDDEN_DEV = r"""
import subprocess, sys
from pathlib import Path
from snapshot.fleet import firmware
image, rom, firmware.CACHE = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
subprocess.run(["mount", "-o", "loop,ro", image, str(rom)], check=True)
# A private /dev without the loop device's node, as in a container or a sandbox.
subprocess.run(["mount", "-t", "tmpfs", "none", "/dev"], check=True)
print(firmware.identity(rom, firmware.SQUASHFS))
"""


def test_a_squashfs_whose_loop_device_is_not_in_dev_is_read_through_its_backing_file(lab,
                                                                                   tmp_path):
    from snapshot.fleet import firmware
    from test_overlayfs import mounts_unavailable
    from conftest import cannot_run
    reason = mounts_unavailable()
    if reason:
        cannot_run(f"tier 2 cannot run: {reason}")
    image = _squashfs(lab.rom, tmp_path / "rom.sqfs")
    rom = tmp_path / "rom"
    rom.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           HIDDEN_DEV, str(image), str(rom), str(tmp_path / "rootfs.json")],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == firmware.identity(image, firmware.SQUASHFS)


def test_on_a_mounted_squashfs_both_formats_apply_and_the_id_is_kept_for_the_boot(lab,
                                                                                  tmp_path):
    """As on a router: /rom is the squashfs mounted from its block device (a loop device
    here, in a private mount namespace)."""
    from snapshot.fleet import firmware
    from test_overlayfs import mounts_unavailable
    from conftest import cannot_run
    reason = mounts_unavailable()
    if reason:
        cannot_run(f"tier 2 cannot run: {reason}")
    image = _squashfs(lab.rom, tmp_path / "rom.sqfs")
    ref = tmp_path / "ref.img"
    old = lab.bundle(ref, "2", tmp_path / "old.snb")                  # the unpacked root
    new = lab.bundle(ref, "2", tmp_path / "new.snb", None, "--rom", image)
    unpacked = lab.rom
    rom = tmp_path / "rom"
    rom.mkdir()
    _rom_is(lab, rom)
    units = [unit(lab, tmp_path, name) for name in ("old", "new")]
    cli = [[sys.executable, "-m", "snapshot", "--device", str(dev), "bundle", "apply", str(b),
            "--no-reboot"] for dev, b in zip(units, (old, new))]
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           MOUNTED, str(image), str(rom), json.dumps(cli)],
                          env={**os.environ, **lab.env}, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    squashfs_id = firmware.identity(image, firmware.SQUASHFS)
    assert found["ids"] == ["squashfs", squashfs_id, squashfs_id, squashfs_id,
                            firmware.tree_id(unpacked)]
    assert [code for code, _ in found["done"]] == [0, 0], found["done"]
    assert [status(lab, dev)["snapshots"] for dev in units] == [2, 2]


def test_a_kept_firmware_id_that_is_not_a_digest_is_read_again(lab, tmp_path, monkeypatch):
    # /tmp/snapshot/rootfs.json is advice (snapshot/kept.py): a record whose key is this
    # boot's but whose id is no string is not taken, and the image is hashed again.
    from snapshot import kept
    from snapshot.fleet import firmware
    image = _squashfs(lab.rom, tmp_path / "rom.sqfs")
    monkeypatch.setattr(firmware, "CACHE", str(tmp_path / "rootfs.json"))
    digest = firmware.identity(image, firmware.SQUASHFS)
    assert firmware._cached_image_id(str(image), "") == digest
    record = kept.read(firmware.CACHE)
    assert record["sha256"] == digest
    kept.write(firmware.CACHE, {**record, "sha256": 5})
    assert firmware._cached_image_id(str(image), "") == digest
    assert kept.read(firmware.CACHE)["sha256"] == digest
