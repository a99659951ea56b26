"""Tier 2: real filesystems that refuse writes, as root in private mount namespaces: a staged
unpack into a used directory that runs out of inodes is all or nothing, and read-only
commands work on a simulated image on a read-only mount."""
import json
import subprocess
import sys
from pathlib import Path

from mtd import FlashType, Geometry, SimFlash
from clirun import ok
from sweep import make_tree
from test_overlayfs import namespaces  # noqa: F401  (the tier-2 availability fixture)

MIB = 1 << 20

# Runs inside the namespace: a tmpfs with few inodes at the target, which already holds a
# file, then `snapshot unpack` into it.
UNPACK = r"""
import json, os, subprocess, sys
image, target, inodes = sys.argv[1], sys.argv[2], sys.argv[3]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"nr_inodes={inodes}", "tmpfs", target], check=True)
with open(os.path.join(target, "already-there"), "w") as f:
    f.write("the user's file\n")
done = subprocess.run([sys.executable, "-m", "snapshot", "--device", image, "unpack", "--to",
                       target, "--force"], capture_output=True, text=True)
listing = sorted(os.path.relpath(os.path.join(d, n), target)
                 for d, dirs, files in os.walk(target) for n in dirs + files)
print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "listing": listing}))
"""


def test_an_unpack_that_runs_out_of_inodes_leaves_exactly_the_snapshots_it_names(
        namespaces, tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NAND, 16 * MIB, 128 * 1024, 2048, 64))
    ok(image, "format")
    first = tmp_path / "s1"
    (first / "etc/config").mkdir(parents=True)
    (first / "etc/config/network").write_text("lan\n")
    ok(image, "push", "--from", str(first))
    second = tmp_path / "s2"
    for n in range(1, 31):
        (second / f"d{n}").mkdir(parents=True)
        (second / f"d{n}/f").write_text(f"{n}\n")
    ok(image, "push", "--from", str(second))
    target = tmp_path / "target"
    target.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           UNPACK, str(image), str(target), "40"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["rc"] == 1
    assert "No space left on device" in result["stderr"]
    assert result["stderr"].rstrip().endswith("unpacked snapshots 1..1")
    assert result["listing"] == ["already-there", "etc", "etc/config", "etc/config/network"]


# Runs inside the namespace: the image's directory bound read-only over itself, then every
# read-only command.
READ_ONLY = r"""
import json, subprocess, sys
image, directory, out = sys.argv[1], sys.argv[2], sys.argv[3]
subprocess.run(["mount", "--bind", directory, directory], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
results = []
for args in (["list"], ["list", "--json"], ["check"], ["probe"], ["show", "1"], ["flash", "info"],
             ["export", "1", "-o", out + "/e.tgz"], ["unpack", "--to", out + "/u"],
             ["rollback", "--to", "0"]):
    done = subprocess.run([sys.executable, "-m", "snapshot", "--device", image, *args],
                          capture_output=True, text=True)
    results.append([args[0], done.returncode, done.stderr])
print(json.dumps(results))
"""


def test_read_only_commands_work_on_an_image_on_a_read_only_mount(namespaces, tmp_path):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    image = shelf / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NAND, 8 * MIB, 128 * 1024, 2048, 64))
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "a", 1, 4)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           READ_ONLY, str(image), str(shelf), str(out)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    *readers, writer = json.loads(proc.stdout.splitlines()[-1])
    assert all(rc == 0 for _, rc, _ in readers), readers
    # A write is refused with one line, and the read-only mount is why.
    assert writer[1] == 1 and writer[2].startswith("Error: ") and writer[2].count("\n") == 1
    assert "Read-only file system" in writer[2]
