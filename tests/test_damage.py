"""A damaged record costs its own content only (DESIGN.md §4): the user's newest save is never
lost to damage below it, writes never build silently on a record known to be damaged, check
says what a repair would lose, and list reports only what it checked."""
import json

from mtd import FlashType, Geometry, SimFlash
from snapshot.store.chain import scan_anchors
from clirun import ok, run
import sweep
from sweep import tree

KIB = 1024
NAND = Geometry(FlashType.NAND, 4096 * KIB, 128 * KIB, 2048, 64)


def layer(root, files: dict):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def three_snapshots(tmp_path):
    """Snapshot 1 the network, 2 a package's files, 3 the wireless settings and a new
    network, and a volatile record with the hostname."""
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    ok(image, "format")
    ok(image, "push", "--from", str(layer(tmp_path / "s1", {
        "etc/config/network": "lan 1\n", "etc/config/system": "host a\n"})), "-m", "network")
    ok(image, "push", "--from", str(layer(tmp_path / "s2", {
        "usr/lib/pkg/tool": "tool 1\n", "etc/config/network": "lan 2\n"})), "-m", "pkg")
    ok(image, "push", "--from", str(layer(tmp_path / "s3", {
        "etc/config/wireless": "wifi 3\n", "etc/config/network": "lan 3\n"})), "-m", "wifi")
    ok(image, "save", "--from", str(layer(tmp_path / "v", {"etc/config/system": "host v\n"})))
    return image


def damage_payload(image, index):
    sweep.damage_payload(str(image), lambda chain: chain.records[index])


def unpacked(image, tmp_path):
    """The files the snapshots and the volatile record hold, as boot would apply them."""
    ok(image, "unpack", "--to", str(tmp_path / "out/s"), "--volatile-to", str(tmp_path / "out/v"))
    return [{name: (tmp_path / "out" / part / name).read_text()
             for name, kind in tree(tmp_path / "out" / part).items() if kind[0] == "file"}
            for part in ("s", "v")]


def test_a_save_after_damage_below_it_survives_the_boot_repair(tmp_path):
    """The damage arises after boot verified the chain, so the save builds on it unknowing;
    the next boot's repair costs snapshot 2's files only, and keeps snapshot 3 and the new
    save, applied over what remains."""
    image = three_snapshots(tmp_path)
    assert "clean" in ok(image, "check")          # what every boot's repair reads
    damage_payload(image, 1)
    ok(image, "save", "--from", str(layer(tmp_path / "v2", {"etc/config/system": "new\n"})))
    out = ok(image, "check", "--repair")
    assert "repaired: emptied snapshot 2: its changes are lost" in out
    assert "lost: the changes of snapshot 2 ('pkg'), damaged (payload CRC mismatch)" in out
    assert "dropped" not in out
    snapshots, volatile = unpacked(image, tmp_path)
    assert snapshots == {"etc/config/network": "lan 3\n", "etc/config/system": "host a\n",
                         "etc/config/wireless": "wifi 3\n"}
    assert volatile == {"etc/config/system": "new\n"}
    listed = json.loads(ok(image, "list", "--json"))["snapshots"]
    assert [s["seq"] for s in listed] == [1, 2, 3]
    assert listed[1]["message"] == "emptied by a repair (payload CRC mismatch): pkg"


def test_a_push_over_a_snapshot_found_damaged_is_refused_with_nothing_written(tmp_path):
    image = three_snapshots(tmp_path)
    damage_payload(image, 1)
    assert run(image, "check").exit_code == 4       # found: the ledger knows it now
    before = image.read_bytes()
    result = run(image, "push", "--from", str(layer(tmp_path / "n", {"etc/x": "x\n"})))
    assert result.exit_code == 4
    assert result.output.count("\n") == 1
    assert "snapshot 2" in result.output and "payload CRC mismatch" in result.output
    assert "nothing was written" in result.output
    assert image.read_bytes() == before


def test_check_says_what_a_repair_would_lose_and_writes_nothing(tmp_path):
    image = three_snapshots(tmp_path)
    damage_payload(image, 1)
    before = image.read_bytes()
    result = run(image, "check")
    assert result.exit_code == 4
    assert ("a repair would lose: the changes of snapshot 2 ('pkg'), damaged (payload CRC "
            "mismatch): it becomes an empty record, and every record above it is kept"
            in result.output)
    report = json.loads(run(image, "check", "--json").output)
    assert report["nothing_lost"] is False and len(report["lost"]) == 1
    assert image.read_bytes() == before


def test_list_reports_only_what_it_checked(tmp_path):
    image = three_snapshots(tmp_path)
    damage_payload(image, 3)           # the volatile record, which no write has read
    info = json.loads(ok(image, "list", "--json"))
    # Each write read the snapshots below it; nothing has read the volatile's payload.
    assert [s["integrity"] for s in info["snapshots"]] == ["verified"] * 3
    assert info["volatile"]["integrity"] == "header ok"
    assert "payloads: 1 of 4 not read since boot" in ok(image, "list")
    run(image, "check")
    info = json.loads(ok(image, "list", "--json"))
    assert info["volatile"]["integrity"] == "damaged: payload CRC mismatch"
    assert "confirmed, damaged: payload CRC mismatch" in ok(image, "list")


def test_a_damaged_trial_fails_and_the_state_before_it_comes_back(tmp_path):
    image = three_snapshots(tmp_path)
    ok(image, "push", "--trial", "--from", str(layer(tmp_path / "t", {"etc/t": "t\n"})),
       "-m", "trial")
    damage_payload(image, 3)
    out = ok(image, "check", "--repair")
    assert "dropped snapshot 4" in out
    status = json.loads(ok(image, "status", "--json"))
    assert status["trial"] is None and status["snapshots"] == 3
    assert "snapshot 4 is damaged (payload CRC mismatch): rolled back" in \
        status["last_rollback"]["reason"]
    snapshots, volatile = unpacked(image, tmp_path)
    assert "etc/t" not in snapshots and volatile == {"etc/config/system": "host v\n"}


def test_a_torn_anchor_entry_is_no_damage_and_nothing_is_lost(tmp_path):
    """What a power cut in the middle of a commit leaves: the start of an entry after the
    newest one. The old state stands whole."""
    image = three_snapshots(tmp_path)
    with SimFlash(image, writable=True) as flash:
        newest = scan_anchors(flash).newest
        torn = bytearray(b"\xff" * flash.geometry.writesize)
        torn[:8] = b"SnpA\x02\x00\x00\x00"
        flash.write(flash.geometry.block_offset(newest.block) + newest.end, bytes(torn))
    result = run(image, "check")
    assert result.exit_code == 0
    assert "torn anchor entry" in result.output and "nothing is lost" in result.output
    assert "nothing is lost" in ok(image, "check", "--repair")
    assert "clean" in ok(image, "check")


def booted(image):
    """A boot's writes, as `snapshot mount` makes them (tests/boot_decision.py); its log."""
    from boot_decision import boot_writes
    from snapshot import boot
    lines = []
    with SimFlash(image, writable=True) as flash:
        boot_writes(flash, lambda line, loud=False: lines.append(line), boot.BootReport())
    return "\n".join(lines)


def test_a_boot_that_finds_its_trial_damaged_fails_it_and_boots_the_state_before(tmp_path):
    """The trial is counted before it is read (DESIGN.md §10); unpacking finds it damaged,
    and the repair fails it before the state before it is applied."""
    image = three_snapshots(tmp_path)
    ok(image, "push", "--trial", "--from", str(layer(tmp_path / "t", {"etc/t": "t\n"})),
       "-m", "trial")
    damage_payload(image, 3)
    log = booted(image)
    assert "trying snapshot 4: boot 1 of 3" in log and "repaired: dropped snapshot 4" in log
    status = json.loads(ok(image, "status", "--json"))
    assert status["trial"] is None and status["snapshots"] == 3
    assert "snapshot 4 is damaged (payload CRC mismatch): rolled back" in \
        status["last_rollback"]["reason"]
    assert ok(image, "check").strip() == "clean"


def test_a_boot_that_finds_two_snapshots_damaged_empties_both_and_keeps_the_rest(tmp_path):
    image = three_snapshots(tmp_path)
    damage_payload(image, 0)
    damage_payload(image, 2)
    log = booted(image)
    assert log.count("lost: the changes of snapshot") == 2
    snapshots, volatile = unpacked(image, tmp_path)
    assert snapshots == {"usr/lib/pkg/tool": "tool 1\n", "etc/config/network": "lan 2\n"}
    assert volatile == {"etc/config/system": "host v\n"}
    assert ok(image, "check").strip() == "clean"



class _Image:
    """What the ledger asks of a flash: its name."""

    def __init__(self, path):
        path.write_bytes(b"")
        self.name = str(path)


def test_the_ledger_keeps_the_latest_devices_only(tmp_path, monkeypatch):
    """A PC that tries many images keeps a small ledger: every command reads it whole."""
    from snapshot.store import verified
    monkeypatch.setattr(verified, "LEDGER", str(tmp_path / "verified"))
    images = [_Image(tmp_path / f"flash{i}.img") for i in range(verified.MAX_DEVICES + 3)]
    for i, image in enumerate(images):
        verified.remember(image, {f"1:2:3:{i}": None})
    kept = verified._read()
    assert list(kept) == [verified.device_key(image) for image in images[-verified.MAX_DEVICES:]]
    assert verified.load(images[-1]) == {f"1:2:3:{len(images) - 1}": None}


def test_the_ledger_keeps_each_damage_reason_on_one_line(tmp_path, monkeypatch):
    """A reason is one field: a tab or a line break in it could forge another record's."""
    from snapshot.store import verified
    monkeypatch.setattr(verified, "LEDGER", str(tmp_path / "verified"))
    image = _Image(tmp_path / "flash.img")
    verified.remember(image, {"1:2:3:4": "payload CRC\tmismatch\n9:9:9:9\tok", "5:6:7:8": None})
    assert verified.load(image) == {"1:2:3:4": "payload CRC mismatch 9:9:9:9 ok", "5:6:7:8": None}
