"""Tier 2: a fleet of ten sandbox routers, each in its own network namespace with an address
on a veth pair into the test's bridge, its own dropbear (Debian's), its own simulated flash,
and the router's real usign and uci. A web server on the bridge serves the channel; a real
Ansible run (ansible-core) drives ansible/rollout.yml over SSH: it publishes a bundle made on
a reference router, rolls it out in two waves, and collects every unit's status. One canary
has a health check that fails: it rolls back, and the threshold stops the second wave.

The harness plays procd's part on each unit: after every boot it writes the board name
(/tmp/sysinfo/board_name, as board detection does), starts dropbear, and starts `snapshot
watch` (what /etc/init.d/snapshot starts); when the unit asks for a reboot it reboots it.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from openwrt_tools import tool
from router_sandbox import HOST, REPO, SANDBOX, Router, build_rootfs
from router_sandbox import sandbox_feeds  # noqa: F401  (the fixture)

BOARD = "sandbox,router-v1"
UNITS = 10
CANARY = ("u01", "u02")
SICK = "u02"
LAB_NET = "10.99.0"


def _need(*programs: str) -> None:
    from conftest import cannot_run
    for program in programs:
        if not shutil.which(program, path=f"{os.environ['PATH']}:/usr/sbin:/sbin"):
            cannot_run(f"the fleet test needs {program} (scripts/test.sh installs it)")


def sh(*argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if check and done.returncode:
        raise AssertionError(f"{argv}: {done.stderr}")
    return done


class Lab:
    """The bridge, in a network namespace of its own, and what runs on it."""

    def __init__(self, work: Path):
        self.name = f"snaplab{os.getpid()}"
        self.work = work
        sh("ip", "netns", "add", self.name)
        self.exec = ["ip", "netns", "exec", self.name]
        sh(*self.exec, "ip", "link", "set", "lo", "up")
        sh(*self.exec, "ip", "link", "add", "br0", "type", "bridge")
        sh(*self.exec, "ip", "addr", "add", f"{LAB_NET}.1/24", "dev", "br0")
        sh(*self.exec, "ip", "link", "set", "br0", "up")
        self.www = work / "www"
        (self.www / "fleet").mkdir(parents=True)
        self.server = subprocess.Popen(
            [*self.exec, sys.executable, "-m", "http.server", "--bind", f"{LAB_NET}.1",
             "--directory", self.www, "8080"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def plug(self, pid: int, index: int) -> str:
        """A veth pair from the bridge into the namespace of `pid`; the address there."""
        port, address = f"u{index}", f"{LAB_NET}.{10 + index}"
        sh(*self.exec, "ip", "link", "del", port, check=False)
        sh(*self.exec, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", str(pid))
        sh(*self.exec, "ip", "link", "set", port, "master", "br0", "up")
        inside = ["nsenter", "-t", str(pid), "-n"]
        sh(*inside, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        return address

    def close(self) -> None:
        self.server.kill()
        self.server.wait()
        sh("ip", "netns", "del", self.name, check=False)


class Unit:
    """One router of the fleet, kept running: rebooted when it asks, set up after each boot."""

    def __init__(self, name: str, index: int, router: Router, lab: Lab, sshd: bool = True):
        self.name, self.index, self.router, self.lab, self.sshd = name, index, router, lab, sshd
        self.boots = 0
        self.booted = None
        self.lock = threading.Lock()
        self.up()

    def up(self) -> None:
        self.booted = self.router.boot() if self.booted is None else self.router.reboot()
        assert self.booted.rc == 0, self.booted.log
        self.boots += 1
        self.address = self.lab.plug(self.booted.proc.pid, self.index)
        self.booted.run(f"mkdir -p /tmp/sysinfo && echo {BOARD} > /tmp/sysinfo/board_name")
        if self.sshd:
            done = self.booted.run(f"{HOST}/usr/sbin/dropbear -R -p 22 -P /var/run/dropbear.pid"
                                   f" >/tmp/dropbear.log 2>&1")
            assert done.rc == 0, done.output
            self.booted.run("/sbin/snapshot watch >/tmp/watch.log 2>&1 &")

    def tend(self) -> None:
        with self.lock:
            if self.booted.reboot_requested:
                time.sleep(2)       # let the command that asked finish and its SSH end
                self.up()


@pytest.fixture
def fleet(tmp_path, sandbox_feeds):  # noqa: F811
    _need("dropbear", "ssh", "nsenter")
    if shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None:
        from conftest import cannot_run
        cannot_run("ansible-core is not installed in the venv (scripts/install.sh)")
    usign = tool("usign")
    keys = tmp_path / "keys"
    keys.mkdir()
    sh(usign, "-G", "-s", keys / "fleet.sec", "-p", keys / "fleet.pub", "-c", "fleet key")
    fingerprint = sh(usign, "-F", "-p", keys / "fleet.pub").stdout.strip()
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "operator")
    rootfs = build_rootfs(tmp_path / "rootfs", "opkg", sandbox_feeds, files={
        f"etc/snapshot/keys/{fingerprint}": keys / "fleet.pub",
        "etc/shells": "/bin/ash\n/bin/sh\n",
        "etc/dropbear/README": "host keys are made at the first start (dropbear -R)\n",
        "root/.ssh/authorized_keys": (keys / "operator.pub").read_text(),
    })
    lab = Lab(tmp_path)
    units: dict[str, Unit] = {}
    stop = threading.Event()

    def tend() -> None:
        while not stop.wait(0.3):
            for unit in list(units.values()):
                try:
                    unit.tend()
                except Exception as e:      # the test sees it as an unreachable unit
                    print(f"fleet: {unit.name}: {e}", file=sys.stderr)
    try:
        reference = Unit("reference", 100, Router(tmp_path / "reference", rootfs,
                                                  sandbox_feeds), lab, sshd=False)
        for i in range(1, UNITS + 1):
            name = f"u{i:02d}"
            units[name] = Unit(name, i, Router(tmp_path / name, rootfs, sandbox_feeds), lab)
        tender = threading.Thread(target=tend, daemon=True)
        tender.start()
        yield lab, reference, units, keys
    finally:
        stop.set()
        for unit in [*units.values()]:
            unit.router.shutdown()
        if "reference" in locals():
            reference.router.shutdown()
        lab.close()


def enroll(unit: Unit, sick: bool) -> None:
    """What an operator's enrolment does, with the router's own uci: the channel, the group
    and a quick health watch, saved in the unit's volatile record (its own configuration)."""
    group = "canary" if unit.name in CANARY else "rest"
    commands = [
        "uci set snapshot.fleet=fleet",
        f"uci set snapshot.fleet.channel=http://{LAB_NET}.1:8080/fleet/channel.json",
        f"uci set snapshot.fleet.group={group}",
        "uci set snapshot.fleet.delay=0",
        "uci set snapshot.main.interval=1",
        "uci set snapshot.main.grace=0",
        "uci set snapshot.main.pass_rounds=2",
        "uci set snapshot.main.fail_rounds=2",
        "uci commit snapshot",
    ]
    if sick:
        commands += ["mkdir -p /etc/snapshot/health.d",
                     "printf '#!/bin/sh\\necho no mesh neighbours\\nexit 1\\n' "
                     "> /etc/snapshot/health.d/mesh",
                     "chmod 755 /etc/snapshot/health.d/mesh"]
    done = unit.booted.run(" && ".join(commands) + " && /sbin/snapshot save")
    assert done.rc == 0, done.output


def test_ansible_rolls_a_bundle_out_in_two_waves_and_a_failed_canary_stops_the_second(
        fleet, tmp_path):
    lab, reference, units, keys = fleet
    # The change, made once on the reference router and pushed as its snapshot 1.
    done = reference.booted.run(
        "mkdir -p /etc/fix && echo 2 > /etc/fix/version && /sbin/snapshot push -m 'fix 2' && "
        f"/sbin/snapshot bundle create 1 -o {SANDBOX}/fix.snb --key {HOST}{keys}/fleet.sec")
    assert done.rc == 0, done.output
    bundle = reference.router.world / "fix.snb"
    for unit in units.values():
        enroll(unit, unit.name == SICK)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[canary]\n" + "".join(f"{n} ansible_host={units[n].address}\n" for n in CANARY)
        + "[rest]\n" + "".join(f"{n} ansible_host={u.address}\n" for n, u in units.items()
                               if n not in CANARY)
        + f"[all:vars]\nansible_user=root\nansible_ssh_pipelining=true\n"
          f"ansible_python_interpreter={sys.executable}\n"
          f"ansible_ssh_private_key_file={keys}/operator\n")
    report_dir = tmp_path / "reports"
    extra = {"bundle": str(bundle), "channel_dir": str(lab.www / "fleet"),
             "key": str(keys / "fleet.sec"), "waves": ["canary", "rest"],
             "report_dir": str(report_dir), "max_failed": 0,
             "snapshot_cli": f"{sys.executable} -m snapshot"}
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{tool('usign').parent}:{bindir}:{os.environ['PATH']}",
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_FORKS": "10",
           "ANSIBLE_SSH_ARGS": "-o UserKnownHostsFile=/dev/null -o ControlMaster=no",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
           "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_NOCOLOR": "1"}
    play = subprocess.run([*lab.exec, bindir / "ansible-playbook", "-i", inventory,
                           REPO / "ansible/rollout.yml", "-e", json.dumps(extra)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    print(play.stdout[-6000:])
    # The rollout stopped: the play fails at its end, saying why.
    assert play.returncode == 2, play.stdout[-6000:] + play.stderr[-3000:]
    assert "not promoting rest: 1 failed trial in canary (u02), more than the 0 allowed" \
        in play.stdout
    report = json.loads((report_dir / "report.json").read_text())
    outcomes = {name: unit["outcome"] for name, unit in report["units"].items()}
    assert outcomes == {"u01": "confirmed", "u02": "failed",
                        **{n: "not applied" for n in units if n not in CANARY}}
    assert "mesh" in report["units"]["u02"]["last_rollback"]["reason"]
    # Each unit runs what its state says: the fix on the confirmed canary only, and every
    # unit's own configuration kept.
    for name, unit in units.items():
        with unit.lock:
            has_fix = unit.booted.run("cat /etc/fix/version").out.strip() == "2"
            group = unit.booted.run("uci get snapshot.fleet.group").out.strip()
        assert has_fix == (name == "u01"), name
        assert group == ("canary" if name in CANARY else "rest"), name
    assert units["u01"].boots == 2 and units[SICK].boots == 3
