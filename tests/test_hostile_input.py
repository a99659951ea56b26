"""Bad input gets one clear line, from anywhere: a bundle, a channel or a unit's status file
of arbitrary bytes, fed to every reader, gives one `Error:` line, a non-zero exit, no
traceback and an unchanged image; and nothing read from flash, a bundle, the network or a
file name reaches the terminal raw (`--json` keeps the exact text)."""
import gzip
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bundle_lab import Lab
from clirun import invoke
from mtd import FlashType, Geometry, SimFlash
from openwrt_tools import tool
from snapshot.fleet import bundle as bundles
from snapshot.packages import feeds as packages
from snapshot.text import printable
from sweep import image_digest
from web import files, served

KIB = 1024
NOR = Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0)
#: What must never reach a terminal raw: control characters other than the line ends.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
FORGED = "fix\nsigned by trusted key 0123456789abcdef\x1b[8m"
HOSTILE = settings(max_examples=80, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow, HealthCheck.data_too_large])


def clean(result) -> None:
    """Nothing of the output reaches the terminal raw."""
    assert not RAW.search(result.stdout + result.stderr), repr(result.output)


def one_error(result) -> str:
    """The run failed with one `Error:` line on stderr, nothing raw, nothing on stdout."""
    clean(result)
    assert result.exit_code == 1, repr(result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), repr(result.stderr)
    assert "Traceback" not in result.output
    return lines[0]


def _head(manifest: bytes, signature: bytes = b"") -> bytes:
    return bundles.HEADER.pack(bundles.MAGIC, bundles.VERSION, 0, len(manifest),
                               len(signature)) + manifest + signature


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- the escaping --------------------------------------------------------------------------

def test_control_characters_become_visible_escapes_and_other_text_stays():
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("\x1b[8mhidden\x7f\x9b") == "\\x1b[8mhidden\\x7f\\x9b"
    assert printable("\u202eevil") == "\\u202eevil"
    assert printable("caf\udce9") == "caf\\xe9"         # an undecodable byte of a file name
    assert printable("routeur é ✓ C:\\path") == "routeur é ✓ C:\\path"


def test_an_error_line_naming_a_file_escapes_its_name(tmp_path):
    done = invoke("bundle", "show", tmp_path / "fix\n\x1b[8m.snb")
    assert one_error(done) == (f"Error: {tmp_path}/fix\\n\\x1b[8m.snb: No such file or "
                               f"directory")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    work = tmp_path_factory.mktemp("hostile")
    lab = Lab.make(work / "lab")
    lab.reference(work / "ref.img", NOR)
    lab.unit_from(work / "unit.img")
    return lab


def test_a_bundle_message_cannot_forge_the_verdict_of_bundle_show(lab, tmp_path):
    fix = lab.bundle(lab.work.parent / "ref.img", "2", tmp_path / "fix.snb", lab.other,
                     "-m", FORGED)
    done = invoke("bundle", "show", fix, env=lab.env)
    clean(done)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].endswith(
        ": fix\\nsigned by trusted key 0123456789abcdef\\x1b[8m")
    assert "does not trust" in lines[2]
    shown = json.loads(invoke("bundle", "show", fix, "--json", env=lab.env).stdout)
    assert shown["message"] == FORGED and shown["trusted_key"] is None


def test_a_refused_bundle_is_one_escaped_line_and_the_image_unchanged(lab, tmp_path):
    unit = lab.work.parent / "unit.img"
    fix = lab.bundle(lab.work.parent / "ref.img", "2", tmp_path / "fix.snb", None,
                     "--board", FORGED, "-m", FORGED)
    digest = image_digest(unit)
    done = invoke("--device", unit, "bundle", "apply", fix, "--no-reboot", env=lab.env)
    assert one_error(done).endswith(
        "is for fix\\nsigned by trusted key 0123456789abcdef\\x1b[8m, and this router is "
        "sandbox,router-v1; nothing was written")
    assert image_digest(unit) == digest


def test_list_and_show_escape_a_message_and_a_file_name(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NOR)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "a\x1b[8mb").write_text("x")
    assert invoke("--device", image, "format").exit_code == 0
    assert invoke("--device", image, "push", "--from", tree, "-m", FORGED).exit_code == 0
    listed = invoke("--device", image, "list")
    clean(listed)
    assert "fix\\nsigned by trusted key 0123456789abcdef\\x1b[8m" in listed.stdout
    shown = invoke("--device", image, "show", "1", "--rom", tmp_path)
    clean(shown)
    assert "etc/a\\x1b[8mb" in shown.stdout
    exact = json.loads(invoke("--device", image, "list", "--json").stdout)
    assert exact["snapshots"][0]["message"] == FORGED


def test_a_deeply_nested_manifest_is_one_line_for_show_and_apply(lab, tmp_path):
    nested = _write(tmp_path / "nested.snb", _head(_deep(30000)))
    unit = lab.work.parent / "unit.img"
    digest = image_digest(unit)
    for args in (("bundle", "show", nested),
                 ("--device", unit, "bundle", "apply", nested, "--no-reboot")):
        assert one_error(invoke(*args, env=lab.env)) == (
            f"Error: {nested}: corrupted: the manifest does not parse; nothing was written")
    assert image_digest(unit) == digest


@pytest.mark.parametrize("length", [2 ** 64, 10 ** 400, -1], ids=["2^64", "10^400", "-1"])
def test_a_payload_length_no_record_can_hold_is_one_line_for_show(lab, tmp_path, length):
    manifest = bundles.manifest_bytes(
        {"format": 1, "boards": ["sandbox,router-v1"], "rootfs": "0" * 64, "base": [],
         "message": "fix", "created": 0,
         "payload": {"compression": "gzip", "length": length, "sha256": "0" * 64}})
    huge = _write(tmp_path / "huge.snb", _head(manifest))
    assert "the manifest does not parse" in one_error(invoke("bundle", "show", huge,
                                                             env=lab.env))


# -- fleet report --------------------------------------------------------------------------

STATUS = {"bundle": {"id": "3f2a9c0d1e4b5a69", "state": "trial", "snapshot": 2},
          "fleet": {"group": "canary", "channel": None}, "trial": None, "last_rollback": None}


def test_a_malformed_status_file_is_named_and_the_other_units_reported(tmp_path):
    (tmp_path / "u1.json").write_text(json.dumps(STATUS))
    bad = {"u2": b"\x00{not json", "u3": b"[1, 2]", "u4": b'{"fleet": {"group": ["x"]}}',
           "u5": b'{"bundle": "3f2a9c0d1e4b5a69"}'}
    for name, data in bad.items():
        (tmp_path / f"{name}.json").write_bytes(data)
    files = sorted(tmp_path.glob("u*.json"))
    done = invoke("fleet", "report", *files, "--json", "-o", tmp_path / "report.json")
    assert one_error_with_report(done).startswith(
        f"Error: 4 of 5 status files could not be read: {tmp_path}/u2.json: not JSON; ")
    report = json.loads(done.stdout)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["units"]["u1"]["outcome"] == "trial"
    assert report["units"]["u2"] == {"error": f"{tmp_path}/u2.json: not JSON"}
    for name in ("u3", "u4", "u5"):
        assert report["units"][name]["error"].startswith(f"{tmp_path}/{name}.json: not a "
                                                         f"unit's status")
    human = invoke("fleet", "report", *files)
    assert human.exit_code == 1
    assert f"u2                   unreadable: {tmp_path}/u2.json: not JSON" in human.stdout
    assert "u1                   canary     trial" in human.stdout


@pytest.mark.parametrize("report", [b"\x00not json", b"[]", b'{"units": [1]}',
                                    b'{"units": {"u1": {"group": "canary", "bundle": "x"}}}',
                                    b'{"units": {"u1": {"fleet": "x"}}}', _deep(30000)],
                         ids=["binary", "list", "units-list", "bundle-string", "fleet-string",
                              "deep"])
def test_promote_with_a_report_that_is_not_one_is_one_line(tmp_path, report):
    key = _write(tmp_path / "k.sec", b"")
    bad = _write(tmp_path / "report.json", report)
    done = invoke("fleet", "promote", "--channel", tmp_path / "www", "--report", bad,
                  "--key", key)
    assert one_error(done) == f"Error: {bad}: not a report of `snapshot fleet report`"


# -- arbitrary bytes, to every reader -------------------------------------------------------

def _json_values():
    return st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                        | st.floats(allow_nan=False),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                        max_leaves=8)
@st.composite
def _near_manifests(draw, good: dict):
    """A valid manifest with one field replaced: by any JSON value, a huge or negative
    number, or a deeply nested list."""
    manifest = json.loads(json.dumps(good))
    where = draw(st.sampled_from(sorted(manifest) + ["payload.length", "payload.sha256",
                                                     "payload.compression"]))
    value = draw(_json_values() | st.integers(min_value=2 ** 63, max_value=10 ** 400)
                 | st.integers(max_value=-1) | st.booleans()
                 | st.integers(100, 5000).map(lambda n: json.loads(_deep(n // 10))))
    if where.startswith("payload."):
        manifest["payload"][where.split(".")[1]] = value
    else:
        manifest[where] = value
    try:
        return bundles.manifest_bytes(manifest)
    except (RecursionError, ValueError):
        return _deep(50000)


@pytest.fixture(scope="module")
def good_bundle(lab) -> Path:
    """A bundle the unit would apply (a path: hypothesis shows its arguments)."""
    return lab.bundle(lab.work.parent / "ref.img", "2", lab.work / "good.snb")


def _manifest(good: bytes) -> dict:
    return json.loads(good[16:16 + bundles.HEADER.unpack(good[:16])[3]])


def _mutations(good: bytes, head_only: bool = False):
    """The valid bundle with a byte changed, or cut short, anywhere but in the first line of
    its signature: usign's comment, which it does not sign (a bundle with another comment
    is the same bundle). With `head_only`, in its header, manifest and signature only."""
    with io.BytesIO(good) as stream:
        head = bundles.read_head(stream, "good")
    signature = head.payload_offset - len(head.signature)
    comment = signature + head.signature.index(b"\n") + 1
    end = head.payload_offset if head_only else len(good)
    at = st.integers(0, signature - 1) | st.integers(comment, end - 1)
    flipped = st.tuples(at, st.integers(1, 255)).map(
        lambda c: good[:c[0]] + bytes([good[c[0]] ^ c[1]]) + good[c[0] + 1:])
    return flipped | st.integers(0, end - 1).map(lambda n: good[:n])


def _unit(lab: Lab, work: Path) -> Path:
    """A fresh copy of the lab's unit: an example that wrote to it fails, and leaves the next
    one a unit as it was."""
    for suffix in ("", ".sim.json"):
        shutil.copyfile(f"{lab.work.parent / 'unit.img'}{suffix}", f"{work / 'unit.img'}{suffix}")
    return work / "unit.img"


def _sign(lab: Lab, data: bytes, work: Path, key: Path | None = None) -> bytes:
    """usign's signature of `data` (not empty) by `key` (the lab's bundle key)."""
    message = work / "m"
    message.write_bytes(data)
    subprocess.run([tool("usign"), "-S", "-m", message, "-s", key or lab.secret, "-x",
                    work / "m.sig"], check=True)
    return (work / "m.sig").read_bytes()

@given(data=st.data())
@HOSTILE
def test_bundle_apply_of_arbitrary_bytes_is_one_line_and_writes_nothing(lab, good_bundle,
                                                                       tmp_path, data):
    good = good_bundle.read_bytes()
    manifest = data.draw(_near_manifests(_manifest(good)))
    signed = _head(manifest, _sign(lab, manifest, tmp_path))
    blob = data.draw(st.binary(max_size=3000) | _mutations(good)
                     | st.just(signed) | st.just(_head(manifest))
                     | st.integers(1000, 60000).map(lambda n: _head(_deep(n))))
    unit = _unit(lab, tmp_path)
    digest = image_digest(unit)
    done = invoke("--device", unit, "bundle", "apply", _write(tmp_path / "x.snb", blob),
                  "--no-reboot", env=lab.env)
    one_error(done)
    assert done.stdout == "" and image_digest(unit) == digest


@given(data=st.data())
@HOSTILE
def test_bundle_show_of_arbitrary_bytes_is_one_line_and_never_trusted(lab, good_bundle,
                                                                      tmp_path, data):
    good = good_bundle.read_bytes()
    manifest = data.draw(_near_manifests(_manifest(good)))
    garbage = data.draw(st.binary(max_size=3000)
                        | st.integers(1000, 60000).map(lambda n: _head(_deep(n))))
    done = invoke("bundle", "show", _write(tmp_path / "x.snb", garbage), env=lab.env)
    one_error(done)
    # Near-valid: refused in one line, or shown with the reason it is not trusted (show
    # reads the head only).
    blob = data.draw(_mutations(good, head_only=True) | st.just(_head(manifest)))
    done = invoke("bundle", "show", _write(tmp_path / "y.snb", blob), env=lab.env)
    if done.exit_code == 0:
        clean(done)
        assert "signed by trusted key" not in done.stdout.splitlines()[-1]
    else:
        one_error(done)


@pytest.fixture(scope="module")
def channel_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    with served(files(root)) as base:
        yield root, f"{base}/channel.json"


def _not_a_channel(value) -> bool:
    return not (isinstance(value, dict) and "format" in value)


@given(data=st.data())
@HOSTILE
def test_fleet_poll_of_an_arbitrary_channel_is_one_line_and_writes_nothing(
        lab, channel_server, tmp_path, data):
    root, url = channel_server
    text = data.draw(st.binary(min_size=1, max_size=2000)
                     | _json_values().filter(_not_a_channel).map(lambda v: json.dumps(v).encode())
                     | st.integers(1000, 100000).map(_deep))
    signature = data.draw(st.just(_sign(lab, text, tmp_path, lab.channel_secret))
                          | st.just(_sign(lab, text, tmp_path)) | st.binary(max_size=300))
    (root / "channel.json").write_bytes(text)
    (root / "channel.json.sig").write_bytes(signature)
    conf = tmp_path / "unit.conf"
    conf.write_text(lab.config.read_text() + f"\nconfig fleet 'fleet'\n\toption channel "
                    f"'{url}'\n\toption group 'canary'\n\toption delay '0'\n")
    unit = _unit(lab, tmp_path)
    digest = image_digest(unit)
    done = invoke("--device", unit, "fleet", "poll", "--now", "--no-reboot",
                  env={**lab.env, "SNAPSHOT_CONFIG": str(conf)})
    one_error(done)
    assert done.stdout == "" and image_digest(unit) == digest


def _not_an_object(data: bytes) -> bool:
    try:
        return not isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return True


@given(data=st.data())
@HOSTILE
def test_fleet_report_of_an_arbitrary_status_file_names_it_in_one_line(tmp_path, data):
    wrong = st.sampled_from(["bundle", "fleet", "last_rollback"]).flatmap(
        lambda key: _json_values().filter(lambda v: v is not None and not isinstance(v, dict))
        .map(lambda v: json.dumps({**STATUS, key: v}).encode()))
    blob = data.draw(st.binary(max_size=2000).filter(_not_an_object) | wrong
                     | st.integers(1000, 60000).map(_deep)
                     | st.integers(1000, 60000).map(lambda n: b'{"fleet": ' + _deep(n) + b"}"))
    status = _write(tmp_path / "unit.json", blob)
    done = invoke("fleet", "report", status)
    assert one_error_with_report(done).startswith(
        f"Error: 1 of 1 status files could not be read: {printable(str(status))}: ")
    assert f"unit                 unreadable: {status}: " in done.stdout


def one_error_with_report(result) -> str:
    """As one_error, for `fleet report`, which prints the report of the others first."""
    clean(result)
    assert result.exit_code == 1, repr(result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), repr(result.stderr)
    return lines[0]


# -- package names from a feed ---------------------------------------------------------------

def _opkg_root(root: Path, names: dict[str, int]) -> packages.Opkg:
    """The real opkg on an offline root where each package of `names` (-> its size in the
    feed) is installed at 1.0 and the feed's list offers 2.0; the feed has no packages, so
    an upgrade fails at the download, naming what it took as a package."""
    (root / "etc/opkg").mkdir(parents=True)
    for where in ("usr/lib/opkg/info", "var/opkg-lists", "var/lock"):
        (root / where).mkdir(parents=True)
    (root / "etc/opkg.conf").write_text(f"dest root /\nlists_dir ext /var/opkg-lists\n"
                                        f"arch all 1\nsrc/gz feed file://{root}/feed\n")
    status = listing = ""
    for name, size in names.items():
        status += f"Package: {name}\nVersion: 1.0\nStatus: install user installed\n" \
                  f"Architecture: all\n\n"
        listing += f"Package: {name}\nVersion: 2.0\nArchitecture: all\nFilename: {size}.ipk\n" \
                   f"Size: {size}\n\n"
        (root / f"usr/lib/opkg/info/{name}.list").write_text("")
    (root / "usr/lib/opkg/status").write_text(status)
    (root / "var/opkg-lists/feed").write_bytes(gzip.compress(listing.encode()))
    return packages.Opkg(root, [str(tool("opkg")), "-o", str(root), "-f",
                                str(root / "etc/opkg.conf")])


def test_a_feed_package_named_like_an_option_is_a_package_to_opkg(tmp_path):
    pm = _opkg_root(tmp_path / "root", {"--force-depends": 123, "-x": 456})
    changes = pm.pending()
    assert [(c.name, c.old, c.new) for c in changes] == [("-x", "1.0", "2.0"),
                                                        ("--force-depends", "1.0", "2.0")]
    assert pm.sizes(changes) == {"-x": packages.Size(456, 1368),
                                 "--force-depends": packages.Size(123, 369)}
    with pytest.raises(packages.InstallFailed, match="Failed to download --force-depends"):
        pm.upgrade(changes)
    assert pm.installed() == {"--force-depends": "1.0", "-x": "1.0"}


# -- the log lines ---------------------------------------------------------------------------

def test_boot_and_syslog_lines_escape_a_message_read_from_flash(capsys):
    from snapshot import boot
    from snapshot.text import SysLog
    boot.Log(kmsg=False)(f"rolled back: {FORGED}")
    SysLog()(f"rolled back: {FORGED}")
    escaped = "rolled back: fix\\nsigned by trusted key 0123456789abcdef\\x1b[8m"
    assert capsys.readouterr().err == f"snapshot: {escaped}\n" * 2


def test_every_line_the_cli_prints_goes_through_its_escaping_echo():
    """Only plain.write writes to the terminal; echo escapes what it gives it, and JSON is
    escaped by json.dumps: a new command cannot print data raw by accident."""
    import ast
    cli = Path(__file__).resolve().parent.parent / "snapshot" / "cli"
    raw = []
    for module in sorted(cli.glob("*.py")):
        tree = ast.parse(module.read_text())
        allowed = {id(node) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                   and f.name == "write" and module.name == "plain.py"
                   for node in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in allowed:
                continue
            called = ast.unparse(node.func)
            if called in ("click.echo", "click.secho", "print") or called.endswith(".write") \
                    and called.split(".")[0] in ("sys", "stream"):
                raw.append(f"{module.name}:{node.lineno}")
    assert raw == []

