"""Real SIGKILLs of real `snapshot` processes on the simulator, as users kill them: whatever
instant a writer dies at, the image and its sidecar stay usable by every later command, and
readers beside a writer never see a sidecar in the making."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import cannot_run
from mtd import FlashType, Geometry, SimFlash
from sweep import make_tree

KIB = 1024
NAND = Geometry(FlashType.NAND, 8192 * KIB, 128 * KIB, 2048, 64)
CLI = [sys.executable, "-m", "snapshot"]


def snapshot(image, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--device", str(image), *map(str, args)], capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_writers_killed_at_random_instants_leave_every_command_working(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND, bad_blocks=[9])
    assert snapshot(image, "format").returncode == 0
    rng = random.Random(16)
    trees = [make_tree(tmp_path / f"t{i}", i, 600) for i in range(3)]
    for kill in range(24):
        command = ["save", "--from", trees[kill % 3]] if kill % 4 else \
            ["push", "--from", trees[kill % 3], "-m", f"kill {kill}"]
        proc = subprocess.Popen([*CLI, "--device", str(image), *map(str, command)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.1, 0.6))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert "Traceback" not in err.decode(), err.decode()
        json.loads(Path(f"{image}.sim.json").read_text())   # never empty, never torn
        repaired = snapshot(image, "check", "--repair")
        assert repaired.returncode == 0, f"after kill {kill}: {repaired.stdout}{repaired.stderr}"
    for args in (["save", "--from", trees[0]], ["push", "--from", trees[1]], ["rollback"],
                 ["check"], ["list"], ["format", "--force"]):
        done = snapshot(image, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"


def test_readers_beside_a_writer_never_see_a_sidecar_being_written(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    assert snapshot(image, "format").returncode == 0
    source = make_tree(tmp_path / "v", 1, 50)
    loop = "; ".join(f"{' '.join(CLI)} --device {image} save --from {source} || exit 1"
                     for _ in range(15))
    writer = subprocess.Popen(["sh", "-c", loop], stderr=subprocess.PIPE)
    reads = 0
    while writer.poll() is None:
        listed = snapshot(image, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        reads += 1
    assert writer.returncode == 0, writer.stderr.read()
    assert reads > 3


def test_read_only_commands_leave_image_and_sidecar_untouched(tmp_path):
    image = tmp_path / "flash.img"
    SimFlash.create(image, NAND)
    assert snapshot(image, "format").returncode == 0
    assert snapshot(image, "push", "--from", make_tree(tmp_path / "a", 1, 20)).returncode == 0
    assert snapshot(image, "save", "--from", make_tree(tmp_path / "v", 2, 2)).returncode == 0
    files = [image, Path(f"{image}.sim.json")]
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    for args in (["list"], ["list", "--json"], ["check"], ["check", "--json"], ["probe"],
                 ["show", "1"], ["export", "1", "-o", tmp_path / "e.tgz"], ["flash", "info"],
                 ["unpack", "--to", tmp_path / "u", "--volatile-to", tmp_path / "uv"]):
        done = snapshot(image, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in files] == before


def test_read_only_commands_work_for_a_user_who_cannot_write_the_image(tmp_path):
    """As `nobody`, on an image and sidecar only root may write, in a directory only root
    may write to."""
    if os.geteuid() != 0:
        cannot_run("running a command as another user needs root")
    shared = Path(os.environ.get("TMPDIR", "/tmp")) / f"snapshot-nobody-{os.getpid()}"
    shared.mkdir(mode=0o755)
    try:
        image = shared / "flash.img"
        SimFlash.create(image, NAND)
        assert snapshot(image, "format").returncode == 0
        assert snapshot(image, "push", "--from", make_tree(tmp_path / "a", 1, 20)).returncode == 0
        for path in shared.iterdir():
            path.chmod(0o644)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        cwd = Path(__file__).resolve().parent.parent
        for args in (["list"], ["check"], ["probe"], ["show", "1"], ["flash", "info"]):
            done = subprocess.run([*as_nobody, *CLI, "--device", str(image), *args],
                                  capture_output=True, text=True, cwd=cwd, timeout=60,
                                  env=dict(os.environ, HOME="/"))
            assert done.returncode == 0, f"{args}: {done.stderr}"
        denied = subprocess.run([*as_nobody, *CLI, "--device", str(image), "rollback", "--to",
                                 "0"], capture_output=True, text=True, cwd=cwd, timeout=60)
        assert denied.returncode == 1 and denied.stderr.startswith("Error: ")
        assert "Traceback" not in denied.stderr
    finally:
        subprocess.run(["rm", "-rf", str(shared)])
