"""Tier 2: `snapshot mount --root R --target T` on real squashfs, overlayfs and tmpfs, as
root in private mount namespaces. Each namespace is one "boot"; tearing it down is the
reboot, after which only the flash image remains."""
import json
import os
import random
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot import operations
from snapshot.store.chain import Chain
from test_overlayfs import namespaces  # noqa: F401  (the tier-2 availability fixture)

MIB = 1 << 20

# Runs inside the namespace: mount the squashfs, boot, look around, run extra commands.
BOOT = r"""
import json, os, subprocess, sys
from pathlib import Path
sqfs, image, work, extra = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
root, target = work / "squashfs", work / "root"
root.mkdir(exist_ok=True)
subprocess.run(["mount", "-o", "loop,ro", sqfs, str(root)], check=True)
cli = [sys.executable, "-m", "snapshot", "--device", image]
if extra.get("squat"):   # a file where the boot means to make a directory
    (work / extra["squat"]).parent.mkdir(parents=True, exist_ok=True)
    (work / extra["squat"]).write_text("")
mount = [*cli, "mount", "--root", str(root), "--target", str(target)]
if extra.get("noting_imports"):   # the mount as a router's Python starts it: no site
    mount = [sys.executable, "-S", "-c", extra["noting_imports"], *mount[3:]]
booted = subprocess.run(mount, capture_output=True, text=True,
                        env=dict(os.environ, **extra.get("env", {})))
result = {"rc": booted.returncode, "log": booted.stderr, "files": {}, "mounts": {}}
for name in ("rom", "overlay", "volatile"):
    result["mounts"][name] = os.path.ismount(target / name)
for directory, dirs, files in os.walk(target):
    if Path(directory).relative_to(target).parts[:1] in (("rom",), ("overlay",), ("volatile",)):
        continue
    for f in files:
        p = Path(directory) / f
        result["files"][str(p.relative_to(target))] = (p.read_text(errors="replace")
                                                     if p.is_file() else "?")
for rel, text in extra.get("write", {}).items():
    (target / rel).write_text(text)
result["volatile_upper"] = sorted(str(p.relative_to(target / "volatile/upper"))
                                  for p in (target / "volatile/upper").rglob("*"))
if extra.get("tree"):   # the merged root as tests/sweep.py's tree() lists it, mounts left out
    sys.path.insert(0, "tests")
    from sweep import tree
    result["tree"] = {k: v for k, v in tree(target).items()
                      if k.split("/")[0] not in ("rom", "overlay", "volatile")}
for args in extra.get("commands", []):
    args = [a.replace("$T", str(target)) for a in args]
    done = subprocess.run([*cli, *args], capture_output=True, text=True)
    result.setdefault("commands", []).append([done.returncode, done.stdout + done.stderr])
print(json.dumps(result))
"""


def make_rootfs(tmp_path: Path, mountpoints=("rom", "overlay", "tmp")) -> Path:
    """A small squashfs standing in for the router's root."""
    tree = tmp_path / "rootfs"
    for name, text in {"etc/config/system": "config system\n", "etc/banner": "OpenWrt\n",
                       "etc/config/network": "stock\n", "bin/tool": "#!/bin/sh\n"}.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    for name in mountpoints:
        (tree / name).mkdir()
    sqfs = tmp_path / "root.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(sqfs), "-quiet", "-noappend"], check=True,
                   capture_output=True)
    return sqfs


@pytest.fixture
def rootfs(tmp_path):
    return make_rootfs(tmp_path)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "flash.img"
    SimFlash.create(path, Geometry(FlashType.NAND, 16 * MIB, 128 * 1024, 2048, 64),
                    bad_blocks=[5])
    with SimFlash(path, writable=True) as flash:
        operations.format_device(flash)
    return path


def write(image: Path, tmp_path: Path, kind: str, files: dict, whiteouts=()) -> None:
    source = tmp_path / f"src-{kind}-{len(list(tmp_path.iterdir()))}"
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    for name in whiteouts:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        os.mknod(source / name, 0o020000, os.makedev(0, 0))
    source.mkdir(exist_ok=True)
    with SimFlash(image, writable=True) as flash:
        getattr(operations, kind)(Chain(flash), source)


def boot(rootfs: Path, image: Path, tmp_path: Path, one_cpu: bool = False, **extra) -> dict:
    """One boot; `one_cpu`: on one CPU, where the boot reads every payload itself (elsewhere
    a child process reads them, and the simulator does not count what a child reads)."""
    work = tmp_path / f"boot{len(list(tmp_path.glob('boot*')))}"
    work.mkdir()
    pin = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if one_cpu else []
    proc = subprocess.run([*pin, "unshare", "-m", "--propagation", "private", sys.executable,
                           "-c", BOOT, str(rootfs), str(image), str(work), json.dumps(extra)],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_boot_gives_the_merged_view_of_squashfs_snapshots_and_volatile(namespaces, rootfs,
                                                                       image, tmp_path):
    write(image, tmp_path, "push", {"etc/config/network": "lan\n"})
    write(image, tmp_path, "push", {"etc/config/wireless": "wifi\n"}, whiteouts=["etc/banner"])
    write(image, tmp_path, "save", {"etc/config/system": "hostname rooftop\n"})
    result = boot(rootfs, image, tmp_path)
    assert result["rc"] == 0, result["log"]
    assert result["files"] == {"etc/config/system": "hostname rooftop\n",
                               "etc/config/network": "lan\n",
                               "etc/config/wireless": "wifi\n",
                               "bin/tool": "#!/bin/sh\n"}
    assert result["mounts"] == {"rom": True, "overlay": True, "volatile": True}
    assert "mounted 2 snapshots and the volatile record" in result["log"]


#: Runs `snapshot ARGS...`, then prints the modules it imported as stderr's last line.
NOTING_IMPORTS = """
import sys
from snapshot.__main__ import run
sys.argv = ["snapshot", *sys.argv[1:]]
try:
    run()
finally:
    print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""

#: What boot's mount must not import while it runs on a one-CPU router (most routers),
#: beyond test_startup's BOOT_HEAVY: pathlib (with re, enum, fnmatch, urllib.parse and
#: ipaddress), contextlib (with collections and functools), json and signal (which imports
#: enum). On a mipsel router's CPU, under qemu, pathlib's import alone took 830 ms, more
#: than twice Python's own start-up (bench/bench_router_boot.py measures the mount there).
BOOT_RUN_HEAVY = {"pathlib", "contextlib", "re", "enum", "json", "signal", "fnmatch",
                  "urllib.parse", "ipaddress", "collections", "functools", "dataclasses",
                  "typing", "tarfile", "shutil", "subprocess", "click", "snapshot.tree.capture"}


def test_a_boot_on_one_cpu_imports_no_pathlib_contextlib_re_enum_or_json(namespaces, rootfs,
                                                                          image, tmp_path):
    write(image, tmp_path, "push", {"etc/config/network": "lan\n"})
    write(image, tmp_path, "save", {"etc/config/system": "hostname rooftop\n"})
    path = os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                            *site.getsitepackages()])
    result = boot(rootfs, image, tmp_path, one_cpu=True, noting_imports=NOTING_IMPORTS,
                  env={"PYTHONPATH": path})
    assert result["rc"] == 0, result["log"]
    assert result["files"]["etc/config/system"] == "hostname rooftop\n"
    assert result["files"]["etc/config/network"] == "lan\n"
    modules = set(result["log"].splitlines()[-1].split())
    assert {"snapshot.boot", "snapshot.tree.restore", "mtd.mount"} <= modules
    assert not modules & BOOT_RUN_HEAVY, modules & BOOT_RUN_HEAVY


def test_writes_land_in_the_volatile_upper_dir(namespaces, rootfs, image, tmp_path):
    result = boot(rootfs, image, tmp_path, write={"etc/new": "x\n"})
    assert result["volatile_upper"] == ["etc", "etc/new"]


def test_save_survives_a_reboot(namespaces, rootfs, image, tmp_path):
    first = boot(rootfs, image, tmp_path, write={"etc/config/system": "saved\n"},
                 commands=[["save", "--from", "$T/volatile/upper"]])
    assert first["commands"][0][0] == 0, first["commands"]
    second = boot(rootfs, image, tmp_path)
    assert second["files"]["etc/config/system"] == "saved\n"
    assert second["volatile_upper"] == ["etc", "etc/config", "etc/config/system"]


def test_push_survives_a_reboot_as_a_snapshot(namespaces, rootfs, image, tmp_path):
    boot(rootfs, image, tmp_path, write={"etc/pushed": "yes\n"},
         commands=[["push", "--from", "$T/volatile/upper", "-m", "from the router"]])
    second = boot(rootfs, image, tmp_path)
    assert second["files"]["etc/pushed"] == "yes\n"
    assert second["volatile_upper"] == []
    assert "mounted 1 snapshots" in second["log"]


def test_a_damaged_snapshot_costs_only_its_changes_and_the_boot_says_what_was_lost(
        namespaces, rootfs, image, tmp_path):
    """Snapshot 2 of 3 is damaged: the boot's repair empties it and keeps snapshot 3 and the
    volatile record, applied over what remains, and logs loudly what was lost."""
    write(image, tmp_path, "push", {"etc/one": "1\n"})
    write(image, tmp_path, "push", {"etc/two": "2\n"})
    write(image, tmp_path, "push", {"etc/three": "3\n"})
    write(image, tmp_path, "save", {"etc/unsaved": "v\n"})
    with SimFlash(image) as flash:
        record = Chain(flash).snapshots[1]
        offset = flash.geometry.block_offset(record.blocks[0]) + record.layout.payload_offset
    with open(image, "r+b") as f:
        f.seek(offset + 20)
        f.write(b"\x00\x00\x00\x00")
    result = boot(rootfs, image, tmp_path)
    assert result["rc"] == 0
    assert {"etc/one", "etc/three", "etc/unsaved"} <= set(result["files"])
    assert "etc/two" not in result["files"]
    assert "chain damaged:" in result["log"] and "snapshot 2 (block" in result["log"]
    assert "lost: the changes of snapshot 2" in result["log"]
    assert "repaired: emptied snapshot 2: its changes are lost" in result["log"]
    # Boot is a write point: the repair is on flash now.
    with SimFlash(image) as flash:
        assert len(Chain(flash).snapshots) == 3
        assert operations.check(Chain(flash)).clean


def test_boot_reads_each_payload_once(namespaces, rootfs, image, tmp_path):
    """Unpacking is the check: no second read of a payload for the repair (DESIGN.md §8).
    What else a boot reads (the anchor, each record's header and commit marker) is a few
    hundred bytes."""
    rng = random.Random(7)
    for n in range(3):
        write(image, tmp_path, "push", {f"etc/blob{n}": rng.randbytes(200_000).hex()})
    write(image, tmp_path, "save", {"etc/unsaved": rng.randbytes(100_000).hex()})
    with SimFlash(image) as flash:
        payloads = sum(r.entry.payload_length for r in Chain(flash).records)
        before = flash.stats().bytes_read
    result = boot(rootfs, image, tmp_path, one_cpu=True)
    assert "mounted 3 snapshots and the volatile record" in result["log"], result["log"]
    with SimFlash(image) as flash:
        read = flash.stats().bytes_read - before
    assert payloads <= read <= payloads + 4096, (read, payloads)


def test_an_empty_chain_boots_the_squashfs(namespaces, rootfs, image, tmp_path):
    result = boot(rootfs, image, tmp_path, write={"etc/x": "1\n"})
    assert result["rc"] == 0
    assert set(result["files"]) == {"etc/config/system", "etc/banner", "etc/config/network",
                                    "bin/tool"}
    assert result["volatile_upper"] == ["etc", "etc/x"]


def test_a_device_without_a_chain_is_left_to_the_stock_boot(namespaces, rootfs, tmp_path):
    """What `snapshot probe` answers no for: exit 6, nothing mounted, and the preinit hook
    runs the stock mount_root."""
    missing = tmp_path / "no-such-flash.img"
    result = boot(rootfs, missing, tmp_path)
    assert result["rc"] == 6 and result["log"] == ""
    assert result["mounts"] == {"rom": False, "overlay": False, "volatile": False}


def test_a_failed_mount_falls_back_to_a_tmpfs_overlay_with_the_mountpoints(namespaces, image,
                                                                           tmp_path):
    """A squashfs lacking the mountpoints, and a mount of the layers that fails (a file
    where the snapshots' overlay goes)."""
    bare = make_rootfs(tmp_path, mountpoints=())
    write(image, tmp_path, "push", {"etc/one": "1\n"})
    result = boot(bare, image, tmp_path, squat=".root.snapshot/base", write={"etc/x": "1\n"})
    assert result["rc"] == 0, result["log"]
    assert "falling back to a tmpfs overlay" in result["log"]
    assert result["mounts"]["rom"] and result["mounts"]["overlay"]
    assert result["files"]["etc/banner"] == "OpenWrt\n" and "etc/one" not in result["files"]


def test_a_squashfs_without_mountpoints_boots_the_chain(namespaces, tmp_path, image):
    bare = make_rootfs(tmp_path, mountpoints=())
    write(image, tmp_path, "push", {"etc/one": "1\n"})
    result = boot(bare, image, tmp_path)
    assert result["rc"] == 0, result["log"]
    assert result["mounts"] == {"rom": True, "overlay": True, "volatile": True}
    assert result["files"]["etc/one"] == "1\n"


def test_push_then_save_from_the_running_system_keeps_both(namespaces, rootfs, image,
                                                           tmp_path):
    first = boot(rootfs, image, tmp_path, write={"etc/pushed": "p\n"},
                 commands=[["push", "--from", "$T/volatile/upper", "-m", "live"],
                           ["save", "--from", "$T/volatile/upper"]])
    assert [rc for rc, _ in first["commands"]] == [0, 0], first["commands"]
    second = boot(rootfs, image, tmp_path)
    assert second["files"]["etc/pushed"] == "p\n"
    assert "mounted 1 snapshots and the volatile record" in second["log"]


def test_storing_the_running_layer_after_a_rollback_is_refused(namespaces, rootfs, image,
                                                               tmp_path):
    """The rolled-back changes are still visible in the running system; saving its layer
    would bring them back."""
    write(image, tmp_path, "push", {"etc/one": "1\n"})
    write(image, tmp_path, "push", {"etc/two": "2\n"})
    result = boot(rootfs, image, tmp_path, write={"etc/x": "1\n"},
                  commands=[["rollback"], ["save", "--from", "$T/volatile/upper"],
                            ["push", "--from", "$T/volatile/upper"]])
    (_, _), (save_rc, save_out), (push_rc, push_out) = result["commands"]
    for rc, out in ((save_rc, save_out), (push_rc, push_out)):
        assert rc == 1 and out.count("\n") == 1, out
        assert out.startswith("Error: the chain changed under the running system") and (
            "reboot first" in out)
    with SimFlash(image) as flash:
        chain = Chain(flash)
        assert len(chain.snapshots) == 1 and chain.volatile is None
    second = boot(rootfs, image, tmp_path, commands=[["save", "--from", "$T/volatile/upper"]])
    assert "etc/two" not in second["files"] and second["commands"][0][0] == 0


def test_a_torn_anchor_entry_is_repaired_as_routine_not_as_damage(namespaces, rootfs, image,
                                                                  tmp_path):
    """A power cut during the anchor program is the normal case recovery exists for."""
    write(image, tmp_path, "push", {"etc/one": "1\n"})
    source = tmp_path / "src"
    (source / "etc").mkdir(parents=True)
    (source / "etc/two").write_text("2\n")
    trial = tmp_path / "trial.img"
    for suffix in ("", ".sim.json"):
        shutil.copy(f"{image}{suffix}", f"{trial}{suffix}")
    operations_of_push = _flash_operations(trial, ["push", "--from", str(source)])
    cut = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image), "push",
                          "--from", str(source)], capture_output=True, text=True,
                         env={**os.environ, "MTDSIM_POWERCUT_AFTER": str(operations_of_push)})
    assert cut.returncode == 99, cut.stderr
    result = boot(rootfs, image, tmp_path)
    assert "recovering: an interrupted write left a torn anchor entry" in result["log"]
    assert "chain damaged" not in result["log"]
    assert "mounted 1 snapshots" in result["log"] and "etc/two" not in result["files"]


def test_boots_that_scrub_every_record_keep_every_record(namespaces, rootfs, image, tmp_path):
    """Corrected bit flips in every record: the first boot rewrites them all in one repair;
    it and the next boot mount everything (they used to share a block, so the first boot
    booted no snapshot and the second dropped them all)."""
    write(image, tmp_path, "push", {"etc/one": "1\n"})
    write(image, tmp_path, "push", {"etc/two": "2\n"})
    write(image, tmp_path, "save", {"etc/three": "3\n"})
    with SimFlash(image) as flash:
        chain = Chain(flash)
        flips = {flash.geometry.block_offset(r.blocks[0]) + r.layout.payload_offset + 10:
                 "corrected" for r in chain.records}
    SimFlash.add_faults(image, bitflips=flips)
    logs = []
    for _ in range(2):
        result = boot(rootfs, image, tmp_path)
        assert "mounted 2 snapshots and the volatile record" in result["log"], result["log"]
        assert {"etc/one", "etc/two", "etc/three"} <= set(result["files"])
        assert "chain damaged" not in result["log"]
        logs.append(result["log"])
    for what in ("snapshot 1", "snapshot 2", "the volatile record"):
        assert f"repaired: rewrote {what}" in logs[0]
    assert "repaired" not in logs[1]


def _flash_operations(image: Path, args: list[str]) -> int:
    """How many programs and erases one command makes, run on a copy."""
    def count():
        with SimFlash(image) as flash:
            stats = flash.stats()
            return stats.programs + stats.erases
    before = count()
    subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image), *args],
                   check=True, capture_output=True)
    return count() - before


# -- changes on trial, booted for real -----------------------------------------------------------

def push_trial(image: Path, tmp_path: Path, files: dict) -> None:
    source = tmp_path / f"trial-{len(list(tmp_path.iterdir()))}"
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    with SimFlash(image, writable=True) as flash:
        operations.push(Chain(flash), source, "on trial", trial=3)


def test_a_confirmed_trial_boots_ever_after_and_those_boots_write_nothing(namespaces, rootfs,
                                                                         image, tmp_path):
    write(image, tmp_path, "push", {"etc/config/network": "lan\n"})
    push_trial(image, tmp_path, {"etc/config/wireless": "mesh\n"})
    result = boot(rootfs, image, tmp_path, commands=[["confirm"]])
    assert "trying snapshot 2: boot 1 of 3" in result["log"]
    assert result["files"]["etc/config/wireless"] == "mesh\n"
    assert result["commands"][0] == [0, "confirmed snapshot 2\n"]
    before = image.read_bytes()
    for _ in range(5):
        result = boot(rootfs, image, tmp_path)
        assert result["files"]["etc/config/wireless"] == "mesh\n"
        assert "trying" not in result["log"]
    assert image.read_bytes() == before


def test_a_trial_that_crash_loops_gives_way_to_the_state_before_it(namespaces, rootfs, image,
                                                                  tmp_path):
    write(image, tmp_path, "push", {"etc/config/network": "lan\n"})
    write(image, tmp_path, "save", {"etc/config/system": "hostname before\n"})
    push_trial(image, tmp_path, {"etc/config/network": "broken\n"})
    for attempt in range(1, 4):   # each boot "crashes": no confirm
        result = boot(rootfs, image, tmp_path)
        assert f"trying snapshot 2: boot {attempt} of 3" in result["log"]
        assert result["files"]["etc/config/network"] == "broken\n"
    result = boot(rootfs, image, tmp_path, commands=[["list", "--json"]])
    assert "rolled back: snapshot 2 was not confirmed in 3 boots" in result["log"]
    assert result["files"]["etc/config/network"] == "lan\n"
    assert result["files"]["etc/config/system"] == "hostname before\n"
    listed = json.loads(result["commands"][0][1])
    assert [s["state"] for s in listed["snapshots"]] == ["confirmed", "failed"]
    # The fallen-back state boots from then on, and those boots write nothing.
    before = image.read_bytes()
    assert boot(rootfs, image, tmp_path)["files"]["etc/config/network"] == "lan\n"
    assert image.read_bytes() == before


def test_a_broken_configuration_saved_on_trial_gives_back_the_previous_one(namespaces, rootfs,
                                                                           image, tmp_path):
    write(image, tmp_path, "push", {"etc/config/network": "lan\n"})
    write(image, tmp_path, "save", {"etc/config/system": "hostname good\n"})
    source = tmp_path / "broken"
    (source / "etc/config").mkdir(parents=True)
    (source / "etc/config/system").write_text("hostname broken\n")
    with SimFlash(image, writable=True) as flash:
        operations.save(Chain(flash), source, trial=2)
    for _ in range(2):
        assert boot(rootfs, image, tmp_path)["files"]["etc/config/system"] == "hostname broken\n"
    result = boot(rootfs, image, tmp_path)
    assert "rolled back: the volatile record on trial was not confirmed in 2 boots" in \
        result["log"]
    assert result["files"]["etc/config/system"] == "hostname good\n"


def test_a_trial_whose_required_check_fails_is_rolled_back_and_the_next_boot_is_the_old_one(
        namespaces, rootfs, image, tmp_path, monkeypatch):
    write(image, tmp_path, "push", {"etc/config/network": "lan\n"})
    push_trial(image, tmp_path, {"etc/config/network": "broken\n"})
    health_dir = tmp_path / "health.d"
    health_dir.mkdir()
    check = health_dir / "mesh"
    check.write_text("#!/bin/sh\necho no neighbours on bat0; exit 1\n")
    check.chmod(0o755)
    conf = tmp_path / "snapshot.conf"
    conf.write_text(f"config snapshot 'main'\n\toption health_dir '{health_dir}'\n"
                    f"\toption rollback_dir '{tmp_path}/none'\n\toption interval '0'\n"
                    f"\toption grace '0'\n\toption fail_rounds '2'\n")
    monkeypatch.setenv("SNAPSHOT_CONFIG", str(conf))
    tried = boot(rootfs, image, tmp_path, commands=[["watch", "--no-reboot"]])
    assert tried["files"]["etc/config/network"] == "broken\n"
    assert tried["commands"][0][0] == 5
    assert "rolled back snapshot 2: mesh: exit 1: no neighbours on bat0" in \
        tried["commands"][0][1]
    after = boot(rootfs, image, tmp_path, commands=[["status"]])
    assert after["files"]["etc/config/network"] == "lan\n"
    assert "last rollback: " in after["commands"][0][1]
    assert "snapshot 2: mesh: exit 1: no neighbours on bat0" in after["commands"][0][1]
