"""Power-cut sweep machinery shared by the simulator sweep and the kernel-tier sweep.

A scenario builds a base state in-process, then one command runs in a subprocess with a power
cut after its 1st, 2nd, ... program or erase. After each cut the visible state (what list and
unpack show) must be exactly the state before the command or exactly the state after it.
"""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mtd import FlashType, Geometry, SimFlash, open_flash
from mtd.sim import CORRECTED
from snapshot import operations
from snapshot.errors import NoChain, RecordDamaged
from snapshot.packages import transaction
from snapshot.store.chain import Chain, commit
from snapshot.store.format import COMPRESSION_GZIP, TRIAL
from snapshot.tree import restore

KIB = 1024
GEOMETRIES = {
    "nor": (Geometry(FlashType.NOR, 1024 * KIB, 64 * KIB, 1, 0), []),
    # A factory bad block where the first snapshots go, so writes must skip it.
    "nand": (Geometry(FlashType.NAND, 4096 * KIB, 128 * KIB, 2048, 64), [5]),
}
#: Every write is swept on these: raw NOR and NAND, and a UBI volume on that NAND (32 LEBs of
#: a 128 KiB block less UBI's two 2 KiB header pages).
SWEPT = {**GEOMETRIES, "ubi": (Geometry(FlashType.UBI, 32 * 124 * KIB, 124 * KIB, 2048, 0), [])}
# Cut points checked in this process, by scenario, for the summary line.
CHECKED: dict[str, int] = {}


def make_tree(root: Path, seed: int, blob_kib: int) -> Path:
    """A small overlay-like tree; the blob is incompressible so records span blocks."""
    rng = random.Random(seed)
    (root / "etc/config").mkdir(parents=True, exist_ok=True)
    (root / "etc/config/network").write_text(f"config interface 'lan{seed}'\n")
    (root / "etc/rc.local").write_text(f"# {seed}\nexit 0\n")
    os.chmod(root / "etc/rc.local", 0o755)
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/blob").write_bytes(rng.randbytes(blob_kib * KIB))
    if not (root / "usr/lib/link").is_symlink():
        (root / "usr/lib/link").symlink_to("blob")
    return root


def tree(root: Path) -> dict:
    """Everything a user would see in a directory: types, modes, contents, link targets."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", st.st_mode & 0o7777)
        elif path.is_file():
            found[rel] = ("file", st.st_mode & 0o7777,
                          hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            found[rel] = ("special", st.st_mode, st.st_rdev)
    return found


def visible(device: str):
    """The state list and unpack show, read in-process without writing: what is wrong with
    the directory (two records sharing a block, say), every record's place in a trial (and
    the fleet entry) and the note of the last rollback, the snapshot list, the merged tree
    of the snapshots a boot applies, and the volatile tree."""
    with open_flash(device) as flash:
        try:
            chain = Chain(flash)
        except NoChain:
            return "no chain"
        snapshots, volatile_record = chain.view()
        trial = tuple((r.entry.type, r.entry.seq, r.entry.state, r.entry.fallback,
                       r.entry.attempts, r.entry.max_attempts) for r in chain.records)
        # The fleet entry (FORMAT.md §3) after the records, when there is one.
        if chain.fleet is not None:
            trial += (("fleet", chain.fleet.seq, chain.fleet.created, chain.fleet.message),)
        note = chain.note.message if chain.note else None
        with tempfile.TemporaryDirectory() as work:
            upper, snaps = Path(work) / "upper", []
            upper.mkdir()
            for record in snapshots:
                try:
                    restore.apply(chain.payload(record), record.entry.compression, upper)
                except RecordDamaged:
                    snaps.append("damaged")
                    break
                snaps.append((record.entry.seq, record.entry.message))
            volatile = None
            if volatile_record is not None and "damaged" not in snaps:
                try:
                    restore.apply(chain.payload(volatile_record),
                                  volatile_record.entry.compression, Path(work) / "volatile")
                    volatile = tree(Path(work) / "volatile")
                except RecordDamaged:
                    volatile = "damaged"
            return tuple(chain.problems), trial, note, tuple(snaps), tree(upper), volatile


def image_digest(image: Path) -> str:
    return hashlib.sha256(image.read_bytes()).hexdigest()


def run_cli(device: str, args: list[str], cut: int | None = None, seed: int = 1,
            runner: list[str] | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env or {}), MTDSIM_SEED=str(seed))
    env.pop("MTDSIM_POWERCUT_AFTER", None)
    if cut is not None:
        env["MTDSIM_POWERCUT_AFTER"] = str(cut)
    argv = runner or [sys.executable, "-m", "snapshot"]
    return subprocess.run([*argv, "--device", device, *args], env=env, capture_output=True,
                          text=True, timeout=300)


@dataclass
class Scenario:
    name: str
    build: Callable[[str, Path], None]      # (device, workdir) -> base state on device
    command: Callable[[Path], list[str]]    # workdir -> the CLI arguments under test
    changes: bool = True                    # the command changes what a reader sees
    runner: list[str] | None = None         # what runs the command (default: the CLI)
    env: Callable[[Path], dict] | None = None   # workdir -> extra environment of the command


def _formatted(device: str) -> None:
    with open_flash(device, writable=True) as flash:
        operations.format_device(flash, force=True)


def _write(device: str, op, *args) -> None:
    with open_flash(device, writable=True) as flash:
        op(Chain(flash), *args)


def base_one_snapshot_and_volatile(device: str, work: Path) -> None:
    _formatted(device)
    _write(device, operations.push, make_tree(work / "s1", 1, 100), "first")
    _write(device, operations.save, make_tree(work / "v1", 2, 20))


def base_two_snapshots_and_volatile(device: str, work: Path) -> None:
    base_one_snapshot_and_volatile(device, work)
    _write(device, operations.push, make_tree(work / "s2", 3, 60), "second")
    _write(device, operations.save, make_tree(work / "v2", 4, 10))


def damage_payload(device: str, pick) -> None:
    """Damage one payload byte of the record `pick(chain)` behind the flash layer's back, as
    a failing cell would."""
    with open_flash(device) as flash:
        record = pick(Chain(flash))
        offset = flash.geometry.block_offset(record.blocks[0]) + record.layout.payload_offset
    with open(device, "r+b") as f:
        f.seek(offset + 40)
        byte = f.read(1)
        f.seek(offset + 40)
        f.write(bytes([byte[0] ^ 0x5A]))


def base_damaged_volatile(device: str, work: Path) -> None:
    base_two_snapshots_and_volatile(device, work)
    damage_payload(device, lambda chain: chain.volatile)


def base_damaged_middle_snapshot(device: str, work: Path) -> None:
    """Two snapshots and a volatile record, the first snapshot's payload damaged: a repair
    writes an empty record in its place and keeps the rest (DESIGN.md §4)."""
    base_two_snapshots_and_volatile(device, work)
    damage_payload(device, lambda chain: chain.snapshots[0])


def flip_a_bit_in_every_record(device: str) -> None:
    """A corrected bit flip in each record's header: whatever writes next rewrites (scrubs)
    them all, in the same operation as its own record (writes read every header)."""
    with open_flash(device) as flash:
        chain = Chain(flash)
        offsets = [flash.geometry.block_offset(r.blocks[0]) + 10
                   for r in chain.records]
    SimFlash.add_faults(device, bitflips=dict.fromkeys(offsets, CORRECTED))


def base_flipped_records(device: str, work: Path) -> None:
    base_two_snapshots_and_volatile(device, work)
    flip_a_bit_in_every_record(device)


def base_snapshot_on_trial(device: str, work: Path, attempts: int = 0) -> None:
    base_one_snapshot_and_volatile(device, work)
    _write(device, operations.push, make_tree(work / "t1", 5, 60), "trial", None,
           COMPRESSION_GZIP, 3)
    if attempts:
        with open_flash(device, writable=True) as flash:
            chain = Chain(flash)
            commit(chain, [r.entry.marked(attempts=attempts) if r.entry.state == TRIAL
                           else r.entry for r in chain.records])


def base_trial_out_of_boots(device: str, work: Path) -> None:
    base_snapshot_on_trial(device, work, attempts=3)


BOOT = [sys.executable, str(Path(__file__).with_name("boot_decision.py"))]
STORE_CHANGE = [sys.executable, str(Path(__file__).with_name("store_change.py"))]


def base_package_transaction(device: str, work: Path) -> None:
    """A snapshot and a volatile record; the running upper dir holds the volatile record's
    files, then a package transaction adds files and rewrites one of them."""
    base_one_snapshot_and_volatile(device, work)
    upper = work / "upper"
    shutil.copytree(work / "v1", upper, symlinks=True)
    (work / "before.json").write_text(json.dumps(transaction.manifest(upper)))
    make_tree(upper / "srv" / "pkg", 6, 40)
    first = next(p for p in sorted(upper.rglob("*")) if p.is_file() and "srv" not in p.parts)
    first.write_bytes(b"rewritten by the package\n")


def base_overwritten_snapshots(device: str, work: Path) -> None:
    """Three snapshots that rewrite the same files, one deleting a file of the first (a
    whiteout), one replacing a directory (opaque), and a volatile record: what squash
    merges."""
    _formatted(device)
    for n in (1, 2, 3):
        root = make_tree(work / f"s{n}", n, 40)
        (root / "www").mkdir(exist_ok=True)
        if n == 1:
            (root / "etc/old").write_text("deleted by snapshot 2\n")
            (root / "www/index.html").write_text("hidden by snapshot 3\n")
        elif n == 2:
            os.mknod(root / "etc/old", 0o020000, os.makedev(0, 0))
        else:
            os.setxattr(root / "www", "trusted.overlay.opaque", b"y")
            (root / "www/new.html").write_text("snapshot 3\n")
        _write(device, operations.push, root, f"s{n}")
    _write(device, operations.save, make_tree(work / "v1", 4, 10))


def base_overwritten_snapshots_under_a_trial(device: str, work: Path) -> None:
    """The same, then a snapshot on trial (the volatile record kept for it) and a volatile
    record saved on top of the trial: squash rewrites those three under new numbers."""
    base_overwritten_snapshots(device, work)
    _write(device, operations.push, make_tree(work / "t1", 5, 40), "trial", None,
           COMPRESSION_GZIP, 3)
    _write(device, operations.save, make_tree(work / "v2", 6, 10))


def health_config(work: Path, healthy: bool) -> dict:
    """A configuration whose one required check passes or fails, deciding at once."""
    (work / "health.d").mkdir(parents=True, exist_ok=True)
    (work / "health.d" / "mesh").write_text("#!/bin/sh\n" + ("echo fine\n" if healthy else
                                                              "echo no neighbours; exit 1\n"))
    (work / "health.d" / "mesh").chmod(0o755)
    conf = work / "snapshot.conf"
    conf.write_text(f"config snapshot 'main'\n\toption health_dir '{work}/health.d'\n"
                    f"\toption rollback_dir '{work}/none'\n\toption interval '0'\n"
                    f"\toption grace '0'\n\toption pass_rounds '2'\n\toption fail_rounds '2'\n")
    return {"SNAPSHOT_CONFIG": str(conf)}


def base_unit_and_bundle(device: str, work: Path) -> None:
    """A unit (the reference's snapshot 1 and its own volatile record) and a signed bundle of
    the reference's snapshot 2 (tests/bundle_lab.py)."""
    from bundle_lab import Lab
    lab = Lab.make(work / "lab")
    reference = work / "reference.img"     # the same geometry and bad blocks
    shutil.copyfile(device, reference)
    shutil.copyfile(f"{device}.sim.json", f"{reference}.sim.json")
    lab.reference(reference)
    shutil.copyfile(work / "lab/base.img", device)
    shutil.copyfile(work / "lab/base.img.sim.json", f"{device}.sim.json")
    lab.unit_from(Path(device))
    lab.bundle(reference, "2", work / "fix.snb")


def base_unit_on_a_bundle_trial(device: str, work: Path) -> None:
    """The unit of base_unit_and_bundle with the bundle applied on trial, and another bundle
    that failed here before in its fleet entry (FORMAT.md §3); the bundle's id in
    work/bundle_id."""
    from snapshot.store.format import Fleet
    base_unit_and_bundle(device, work)
    done = run_cli(device, ["bundle", "apply", str(work / "fix.snb"), "--no-reboot", "--json"],
                   env=bundle_env(work))
    assert done.returncode == 0, done.stderr
    (work / "bundle_id").write_text(json.loads(done.stdout)["applied"])
    with open_flash(device, writable=True) as flash:
        chain = Chain(flash)
        commit(chain, [r.entry for r in chain.records],
               fleet=Fleet(4, 1700000000, 1800000000, ("0123456789abcdef",)).entry())


def _serve(root: Path) -> str:
    """An HTTP server for `root`, running in this process for the rest of the session (the
    sweep's cut commands poll it); its URL."""
    import http.server
    import threading
    from web import files
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), files(root))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def base_unit_polling(device: str, work: Path, group: str) -> None:
    """The unit of base_unit_and_bundle in wave `group` of a channel, served over HTTP, that
    promotes the bundle to the wave "canary" (work/unit.conf is the unit's configuration)."""
    base_unit_and_bundle(device, work)
    url = _serve(work / "www") + "/fleet/channel.json"
    done = run_cli(device, ["fleet", "publish", str(work / "fix.snb"), "--channel",
                            str(work / "www/fleet"), "--waves", "canary,rest", "--key",
                            str(work / "lab/keys/channel.sec")], env=bundle_env(work))
    assert done.returncode == 0, done.stderr
    (work / "unit.conf").write_text((work / "lab/snapshot.conf").read_text()
                                    + f"config fleet 'fleet'\n\toption channel '{url}'\n"
                                      f"\toption group '{group}'\n\toption delay '0'\n")


def polling_env(work: Path) -> dict:
    return {**bundle_env(work), "SNAPSHOT_CONFIG": str(work / "unit.conf")}


def bundle_env(work: Path) -> dict:
    from bundle_lab import Lab
    lab = Lab(work / "lab", Path(), Path(), Path(), Path(), work / "lab/snapshot.conf")
    return lab.env


SCENARIOS = {
    "format": Scenario("format", base_one_snapshot_and_volatile, lambda w: ["format", "--force"]),
    "save": Scenario("save", base_one_snapshot_and_volatile,
                     lambda w: ["save", "--from", str(make_tree(w / "v9", 9, 70))]),
    "push": Scenario("push", base_one_snapshot_and_volatile,
                     lambda w: ["push", "--from", str(make_tree(w / "s9", 8, 150)), "-m", "new"]),
    "rollback": Scenario("rollback", base_two_snapshots_and_volatile, lambda w: ["rollback"]),
    "repair": Scenario("repair", base_damaged_volatile, lambda w: ["check", "--repair"]),
    "repairempty": Scenario("repairempty", base_damaged_middle_snapshot,
                            lambda w: ["check", "--repair"]),
    # Operations that write several records: scrubs of every flipped record, and the new one.
    "scrub": Scenario("scrub", base_flipped_records, lambda w: ["check", "--repair"],
                      changes=False),
    "pushscrub": Scenario("pushscrub", base_flipped_records,
                          lambda w: ["push", "--from", str(make_tree(w / "s9", 8, 150))]),
    "savescrub": Scenario("savescrub", base_flipped_records,
                          lambda w: ["save", "--from", str(make_tree(w / "v9", 9, 70))]),
    # Trials: starting one, deciding one, and a boot's count and failure.
    "pushtrial": Scenario("pushtrial", base_one_snapshot_and_volatile,
                          lambda w: ["push", "--trial", "--from",
                                     str(make_tree(w / "s9", 8, 150))]),
    "savetrial": Scenario("savetrial", base_one_snapshot_and_volatile,
                          lambda w: ["save", "--trial", "--from",
                                     str(make_tree(w / "v9", 9, 70))]),
    "confirm": Scenario("confirm", base_snapshot_on_trial, lambda w: ["confirm"]),
    "trialrollback": Scenario("trialrollback", base_snapshot_on_trial, lambda w: ["rollback"]),
    "bootcount": Scenario("bootcount", base_snapshot_on_trial, lambda w: [], runner=BOOT),
    "bootfail": Scenario("bootfail", base_trial_out_of_boots, lambda w: [], runner=BOOT),
    # A boot's repair of what unpacking found: a damaged snapshot emptied before the records
    # above it are applied again; corrected bit flips in every record, scrubbed at the end.
    "bootrepair": Scenario("bootrepair", base_damaged_middle_snapshot, lambda w: [],
                           runner=BOOT),
    "bootscrub": Scenario("bootscrub", base_flipped_records, lambda w: [], runner=BOOT,
                          changes=False),
    # The health watch's decisions: an automatic rollback, and a confirm.
    "watchrollback": Scenario("watchrollback", base_snapshot_on_trial,
                              lambda w: ["watch", "--no-reboot"],
                              env=lambda w: health_config(w, healthy=False)),
    "pkgstore": Scenario("pkgstore", base_package_transaction, lambda w: [str(w)],
                         runner=STORE_CHANGE),
    "watchconfirm": Scenario("watchconfirm", base_snapshot_on_trial,
                             lambda w: ["watch", "--no-reboot"],
                             env=lambda w: health_config(w, healthy=True)),
    # Squash: snapshots 1..3 merged, the volatile record renumbered; and with a trial on top.
    "squash": Scenario("squash", base_overwritten_snapshots, lambda w: ["squash"]),
    "squashtrial": Scenario("squashtrial", base_overwritten_snapshots_under_a_trial,
                            lambda w: ["squash"]),
    # A signed bundle applied as a trial on top of the base, the volatile record copied.
    "bundleapply": Scenario("bundleapply", base_unit_and_bundle,
                            lambda w: ["bundle", "apply", str(w / "fix.snb"), "--no-reboot"],
                            env=bundle_env),
    # A fleet poll: the bundle applied with the channel's version in the same commit; and a
    # poll with nothing to apply that records the newer version alone.
    "fleetpoll": Scenario("fleetpoll", lambda d, w: base_unit_polling(d, w, "canary"),
                          lambda w: ["fleet", "poll", "--now", "--no-reboot"], env=polling_env),
    "fleetaccept": Scenario("fleetaccept", lambda d, w: base_unit_polling(d, w, "rest"),
                            lambda w: ["fleet", "poll", "--now", "--no-reboot"],
                            env=polling_env),
    # The operator's rollback of a bundle's trial: the note and the fleet entry's failed
    # bundles, in one commit.
    "fleetrollback": Scenario("fleetrollback", base_unit_on_a_bundle_trial,
                              lambda w: ["fleet", "rollback", (w / "bundle_id").read_text(),
                                         "--no-reboot"], env=bundle_env),
}


class SimCase:
    """A scenario on a simulated image: the base image is built once and copied per cut."""

    def __init__(self, scenario: Scenario, geometry: str, root: Path):
        self.scenario = scenario
        self.work = root / f"{scenario.name}-{geometry}"
        self.work.mkdir(parents=True)
        self.base = self.work / "base.img"
        g, bad = SWEPT[geometry]
        SimFlash.create(self.base, g, bad_blocks=bad)
        scenario.build(str(self.base), self.work)
        self.args = scenario.command(self.work)
        self.env = scenario.env(self.work) if scenario.env else None
        self.old = visible(str(self.base))
        done = self.copy("done.img")
        result = run_cli(str(done), self.args, runner=scenario.runner, env=self.env)
        assert result.returncode in (0, 5), result.stderr
        self.new = visible(str(done))
        if scenario.changes:
            assert self.new != self.old, "the command must change the visible state"
        with SimFlash(self.base) as before, SimFlash(done) as after:
            self.operations = ((after.stats().programs + after.stats().erases)
                               - (before.stats().programs + before.stats().erases))

    def copy(self, name: str) -> Path:
        image = self.work / name
        shutil.copyfile(self.base, image)
        shutil.copyfile(f"{self.base}.sim.json", f"{image}.sim.json")
        return image


def assert_old_or_new(case, image: Path, label: str) -> None:
    """The visible state is exactly the old or the new one, and reading it wrote nothing."""
    digest = image_digest(image)
    state = visible(str(image))
    assert image_digest(image) == digest, f"{label}: reading the state wrote to flash"
    assert state in (case.old, case.new), f"{label}: state is neither old nor new: {state}"
    CHECKED[case.scenario.name] = CHECKED.get(case.scenario.name, 0) + 1
