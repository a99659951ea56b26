"""The batman-adv health check against the real kernel module, in the kernel tier's guest (the
host kernel has no batman-adv): two network namespaces, each with a bat0 over one end of a
veth pair, and Debian's batctl. The check passes while the neighbour's OGMs arrive and fails
once they have stopped for longer than `fresh`, although batman-adv still lists the lost
neighbour (for up to 200 s)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.kernel


def sh(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


@pytest.fixture
def mesh():
    a, b = "batA", "batB"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "link", "add", "vA", "netns", a, "type", "veth", "peer", "name", "vB",
           "netns", b)
        for ns, dev in ((a, "vA"), (b, "vB")):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "bat0", "type", "batadv")
            sh("ip", "-n", ns, "link", "set", dev, "master", "bat0")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "bat0", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def health(ns: str, conf: Path) -> tuple[int, dict]:
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "snapshot",
                           "health", "--json"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, SNAPSHOT_CONFIG=str(conf)), timeout=300)
    return done.returncode, json.loads(done.stdout)


def until(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


def test_the_batman_check_passes_with_a_live_neighbour_and_fails_once_it_is_lost(mesh,
                                                                             tmp_path):
    a, b = mesh
    conf = tmp_path / "snapshot.conf"
    conf.write_text(f"config snapshot 'main'\n\toption health_dir '{tmp_path}/none'\n"
                    "config check 'mesh'\n\toption type 'batman'\n\toption meshif 'bat0'\n"
                    "\toption min_neighbours '1'\n\toption fresh '5'\n")
    assert until(lambda: health(a, conf)[0] == 0, 120), health(a, conf)
    detail = health(a, conf)[1]["results"][0]["detail"]
    assert detail.startswith("bat0: 1 batman-adv neighbours (")
    sh("ip", "-n", b, "link", "set", "vB", "down")
    assert until(lambda: health(a, conf)[0] == 5, 120), health(a, conf)
    failure = health(a, conf)[1]["results"][0]["detail"]
    assert "0 batman-adv neighbours seen in the last 5 s, 1 wanted (1 listed)" in failure
