"""Tier 2: the network health checks against real daemons and real links, as root: two network
namespaces (two "routers") joined by a veth pair, `snapshot health` and `snapshot watch` run
inside the first. babeld (Debian's) runs in both; batman-adv needs a kernel module the host
lacks, so its check runs in the qemu guest (tests/test_kernel_mesh.py)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cannot_run
from mtd import FlashType, Geometry, SimFlash
from clirun import ok
from sweep import make_tree

ROOT = Path(__file__).resolve().parent.parent


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def routers(tmp_path):
    """Namespaces A and B, with vA (10.99.0.1) and vB (10.99.0.2) joined by a veth pair."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        cannot_run("network namespaces need root and iproute2")
    a, b = f"snapA{os.getpid()}", f"snapB{os.getpid()}"
    try:
        ip("netns", "add", a)
        ip("netns", "add", b)
    except subprocess.CalledProcessError as e:
        cannot_run(f"ip netns add failed: {e.stderr.strip()}")
    daemons = []
    try:
        ip("link", "add", "vA", "netns", a, "type", "veth", "peer", "name", "vB", "netns", b)
        for ns, dev, addr in ((a, "vA", "10.99.0.1/24"), (b, "vB", "10.99.0.2/24")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "addr", "add", addr, "dev", dev)
        yield a, b, daemons
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def config(tmp_path, check: str, **main) -> dict:
    conf = tmp_path / "snapshot.conf"
    settings = {"health_dir": tmp_path / "none", "rollback_dir": tmp_path / "none",
                "interval": 0, "grace": 0, "pass_rounds": 1,
                "fail_rounds": 2, **main}
    conf.write_text("config snapshot 'main'\n"
                    + "".join(f"\toption {k} '{v}'\n" for k, v in settings.items())
                    + check)
    return dict(os.environ, SNAPSHOT_CONFIG=str(conf))


def in_ns(ns: str, env: dict, *args: str, image=None) -> subprocess.CompletedProcess:
    device = ["--device", str(image)] if image else []
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "snapshot",
                           *device, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def until(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


PING = "config check 'uplink'\n\toption type 'ping'\n\toption host '10.99.0.2'\n\toption count '1'\n"


def test_the_ping_check_passes_while_the_peer_answers_and_fails_when_its_link_is_down(
        routers, tmp_path):
    a, b, _ = routers
    env = config(tmp_path, PING)
    up = in_ns(a, env, "health", "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    assert json.loads(up.stdout)["results"][0]["detail"].startswith("10.99.0.2 answers")
    ip("-n", b, "link", "set", "vB", "down")
    down = in_ns(a, env, "health", "--json")
    assert down.returncode == 5
    assert json.loads(down.stdout)["results"][0]["detail"].startswith("10.99.0.2 does not answer")


def start_babeld(ns: str, dev: str, tmp_path: Path) -> subprocess.Popen:
    socket_path = tmp_path / f"babeld-{dev}.sock"
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", ns, "babeld", "-I", str(tmp_path / f"babeld-{dev}.pid"),
         "-S", str(tmp_path / f"babeld-{dev}.state"), "-G", str(socket_path),
         "-C", f"interface {dev} hello-interval 0.5", dev],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return daemon


def babel_check(tmp_path) -> str:
    return (f"config check 'mesh'\n\toption type 'babel'\n"
            f"\toption socket '{tmp_path}/babeld-vA.sock'\n\toption min_neighbours '1'\n")


@pytest.fixture
def babel(routers, tmp_path):
    if not shutil.which("babeld"):
        cannot_run("babeld is not installed (scripts/test.sh installs it)")
    a, b, daemons = routers
    daemons += [start_babeld(a, "vA", tmp_path), start_babeld(b, "vB", tmp_path)]
    return a, b


def test_the_babel_check_passes_with_a_neighbour_and_fails_when_the_link_goes_down(
        babel, tmp_path):
    a, b = babel
    env = config(tmp_path, babel_check(tmp_path))
    assert until(lambda: in_ns(a, env, "health").returncode == 0), \
        in_ns(a, env, "health").stdout
    detail = json.loads(in_ns(a, env, "health", "--json").stdout)["results"][0]["detail"]
    assert detail.startswith("babeld hears 1 neighbours (fe80::")
    ip("-n", a, "link", "set", "vA", "down")
    assert until(lambda: in_ns(a, env, "health").returncode == 5)
    assert "babeld hears 0 neighbours, 1 wanted" in in_ns(a, env, "health").stdout


def test_a_trial_that_loses_the_babel_mesh_is_rolled_back_by_the_watch(babel, tmp_path):
    a, b = babel
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NAND, 8 << 20, 128 << 10, 2048, 64))
    ok(image, "format")
    ok(image, "push", "--from", str(make_tree(tmp_path / "s1", 1, 4)), "-m", "good")
    ok(image, "push", "--trial", "--from", str(make_tree(tmp_path / "t", 2, 4)),
       "-m", "breaks the mesh")
    # A neighbour that stops sending hellos fades from babeld's view within seconds
    # (hello interval 0.5 s): far fewer than the 60 good rounds a confirm needs here.
    env = config(tmp_path, babel_check(tmp_path), fail_rounds=3, pass_rounds=60, interval=1,
                 window=120)
    assert until(lambda: in_ns(a, env, "health").returncode == 0)
    ip("-n", b, "link", "set", "vB", "down")   # the change "broke" the mesh
    watched = in_ns(a, env, "watch", "--no-reboot", image=image)
    assert watched.returncode == 5, watched.stdout + watched.stderr
    assert "rolled back snapshot 2: mesh: babeld hears 0 neighbours" in watched.stdout
    listed = json.loads(ok(image, "list", "--json"))
    assert [s["state"] for s in listed["snapshots"]] == ["confirmed", "failed"]
