"""Tier 2: a fleet of sandbox routers, each in its own network namespace with an address on a
veth pair into the test's bridge, its own dropbear (Debian's), its own simulated flash, and
the router's real usign and uci. A web server on the bridge serves the channel; real Ansible
runs (ansible-core) drive the playbooks in ansible/ over SSH. ansible/enroll.yml enrols the
units (the fleet's key, the channel, the group, the cron line). Then:

- ten units, whose watch decides: ansible/rollout.yml publishes a bundle made on a reference
  router, rolls it out in two waves, and collects every unit's status. One canary has a
  health check that fails: it rolls back, and the threshold stops the second wave;
- four units enrolled with confirm=operator: the operator confirms the canary wave
  (ansible/decide.yml), the second wave rolls out, and the operator rolls it back.

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
BOOT_ID = "cat /tmp/sandbox-boot-id"


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
        # The units share the host's kernel, so its boot_id is no use to Ansible's reboot:
        # each boot gets one of its own (BOOT_ID below).
        self.booted.run(f"mkdir -p /tmp/sysinfo && echo {BOARD} > /tmp/sysinfo/board_name && "
                        f"cat /proc/sys/kernel/random/uuid > /tmp/sandbox-boot-id")
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
def fleet(request, tmp_path, sandbox_feeds):  # noqa: F811
    """The lab, a reference router and `request.param` units (default UNITS), kept running."""
    count = getattr(request, "param", UNITS)
    _need("dropbear", "ssh", "nsenter")
    if shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None:
        from conftest import cannot_run
        cannot_run("ansible-core is not installed in the venv (scripts/install.sh)")
    usign = tool("usign")
    keys = tmp_path / "keys"
    keys.mkdir()
    # The bundle key, and the channel key (one role each).
    sh(usign, "-G", "-s", keys / "fleet.sec", "-p", keys / "fleet.pub", "-c", "fleet key")
    sh(usign, "-G", "-s", keys / "channel.sec", "-p", keys / "channel.pub", "-c", "channel key")
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "operator")
    # No unit trusts the fleet's key until it is enrolled.
    rootfs = build_rootfs(tmp_path / "rootfs", "opkg", sandbox_feeds, files={
        "etc/shells": "/bin/ash\n/bin/sh\n",
        "etc/dropbear/README": "host keys are made at the first start (dropbear -R)\n",
        "root/.ssh/authorized_keys": (keys / "operator.pub").read_text(),
    })
    lab = Lab(tmp_path)
    units: dict[str, Unit] = {}
    stop = threading.Event()

    def tend(unit: Unit) -> None:
        while not stop.wait(0.3):
            try:
                unit.tend()
            except Exception as e:      # the test sees it as an unreachable unit
                print(f"fleet: {unit.name}: {e}", file=sys.stderr)
    try:
        reference = Unit("reference", 100, Router(tmp_path / "reference", rootfs,
                                                  sandbox_feeds), lab, sshd=False)
        for i in range(1, count + 1):
            name = f"u{i:02d}"
            units[name] = Unit(name, i, Router(tmp_path / name, rootfs, sandbox_feeds), lab)
        # Each unit reboots on its own, as routers do.
        for unit in units.values():
            threading.Thread(target=tend, args=(unit,), daemon=True).start()
        yield lab, reference, units, keys
    finally:
        stop.set()
        for unit in [*units.values()]:
            unit.router.shutdown()
        if "reference" in locals():
            reference.router.shutdown()
        lab.close()


def quick_watch(unit: Unit, sick: bool) -> None:
    """A health watch that decides in seconds, and on the sick unit a check that fails (made
    with the router's own uci; enroll.yml saves them with the enrolment)."""
    commands = ["uci set snapshot.main.interval=1", "uci set snapshot.main.grace=0",
                "uci set snapshot.main.pass_rounds=2", "uci set snapshot.main.fail_rounds=2",
                "uci commit snapshot"]
    if sick:
        commands += ["mkdir -p /etc/snapshot/health.d",
                     "printf '#!/bin/sh\\necho no mesh neighbours\\nexit 1\\n' "
                     "> /etc/snapshot/health.d/mesh",
                     "chmod 755 /etc/snapshot/health.d/mesh"]
    done = unit.booted.run(" && ".join(commands))
    assert done.rc == 0, done.output


class Operator:
    """The operator's machine: an inventory of the units (the waves are its groups) and
    ansible-playbook, run inside the lab's network namespace."""

    def __init__(self, lab: Lab, units: dict[str, Unit], keys: Path, work: Path):
        self.lab, self.keys, self.work = lab, keys, work
        self.inventory = work / "inventory.ini"
        self.inventory.write_text(
            "[canary]\n" + "".join(f"{n} ansible_host={units[n].address}\n" for n in CANARY)
            + "[rest]\n" + "".join(f"{n} ansible_host={u.address}\n" for n, u in units.items()
                                   if n not in CANARY)
            + f"[all:vars]\nansible_user=root\nansible_ssh_pipelining=true\n"
              f"ansible_python_interpreter={sys.executable}\n"
              f"ansible_ssh_private_key_file={keys}/operator\n")
        self.report_dir = work / "reports"
        self.vars = {"channel_dir": str(lab.www / "fleet"), "key": str(keys / "channel.sec"),
                     "waves": ["canary", "rest"], "report_dir": str(self.report_dir),
                     "max_failed": 0, "snapshot_cli": f"{sys.executable} -m snapshot",
                     "boot_id_command": BOOT_ID}
        bindir = self.bindir = Path(sys.executable).parent
        self.env = {**os.environ, "PATH": f"{tool('usign').parent}:{bindir}:{os.environ['PATH']}",
                    "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_FORKS": "10",
                    "ANSIBLE_SSH_ARGS": "-o UserKnownHostsFile=/dev/null -o ControlMaster=no",
                    "ANSIBLE_LOCAL_TEMP": str(work / "ansible-local"),
                    "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_NOCOLOR": "1"}

    def play(self, *playbooks: str, **extra) -> subprocess.CompletedProcess:
        started = time.monotonic()
        done = subprocess.run(
            [*self.lab.exec, self.bindir / "ansible-playbook", "-i", self.inventory,
             *[REPO / "ansible" / p for p in playbooks], "-e", json.dumps({**self.vars, **extra})],
            capture_output=True, text=True, env=self.env, cwd=self.work, timeout=900)
        print(done.stdout[-6000:])
        print(f"fleet: {' '.join(playbooks)} took {time.monotonic() - started:.0f} s")
        return done

    def enroll(self, **extra) -> None:
        done = self.play("enroll.yml", key_pub=str(self.keys / "fleet.pub"), delay=0,
                         channel_key_pub=str(self.keys / "channel.pub"),
                         channel_url=f"http://{LAB_NET}.1:8080/fleet/channel.json", **extra)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]

    def report(self) -> dict:
        return json.loads((self.report_dir / "report.json").read_text())


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return done


def has_fix(unit: Unit) -> bool:
    with unit.lock:
        return unit.booted.run("cat /etc/fix/version").out.strip() == "2"


def make_fix(reference: Unit, keys: Path) -> Path:
    """The change, made once on the reference router and pushed as its snapshot 1, and its
    signed bundle."""
    done = reference.booted.run(
        "mkdir -p /etc/fix && echo 2 > /etc/fix/version && /sbin/snapshot push -m 'fix 2' && "
        f"/sbin/snapshot bundle create 1 -o {SANDBOX}/fix.snb --key {HOST}{keys}/fleet.sec")
    assert done.rc == 0, done.output
    return reference.router.world / "fix.snb"


def test_ansible_rolls_a_bundle_out_in_two_waves_and_a_failed_canary_stops_the_second(
        fleet, tmp_path):
    lab, reference, units, keys = fleet
    bundle = make_fix(reference, keys)
    for unit in units.values():
        quick_watch(unit, unit.name == SICK)
    operator = Operator(lab, units, keys, tmp_path)
    operator.enroll()
    play = operator.play("rollout.yml", bundle=str(bundle))
    # The rollout stopped: the play fails at its end, saying why.
    assert play.returncode == 2, play.stdout[-6000:] + play.stderr[-3000:]
    assert "not promoting rest: 1 failed trial in canary (u02), more than the 0 allowed" \
        in play.stdout
    report = operator.report()
    outcomes = {name: unit["outcome"] for name, unit in report["units"].items()}
    assert outcomes == {"u01": "confirmed", "u02": "failed",
                        **{n: "not applied" for n in units if n not in CANARY}}
    assert "mesh" in report["units"]["u02"]["last_rollback"]["reason"]
    # Each unit runs what its state says: the fix on the confirmed canary only, and every
    # unit's own configuration (its enrolment) kept.
    for name, unit in units.items():
        with unit.lock:
            group = unit.booted.run("uci get snapshot.fleet.group").out.strip()
        assert has_fix(unit) == (name == "u01"), name
        assert group == ("canary" if name in CANARY else "rest"), name
    assert units["u01"].boots == 2 and units[SICK].boots == 3


@pytest.mark.parametrize("fleet", [4], indirect=True)
def test_the_operator_confirms_one_wave_and_rolls_the_next_back(fleet, tmp_path):
    lab, reference, units, keys = fleet
    bundle = make_fix(reference, keys)
    for unit in units.values():
        quick_watch(unit, sick=False)
    operator = Operator(lab, units, keys, tmp_path)
    # u04 was enrolled before keys had roles: its one key, the channel's, is a bundle key.
    channel_key = (keys / "channel.pub").read_text()
    fingerprint = sh(tool("usign"), "-F", "-p", keys / "channel.pub").stdout.strip()
    with units["u04"].lock:
        done = units["u04"].booted.run(f"mkdir -p /etc/snapshot/keys && printf '%s' "
                                       f"'{channel_key}' > /etc/snapshot/keys/{fingerprint}")
    assert done.rc == 0, done.output
    operator.enroll(confirm="operator")
    # The enrolment moved it to the channel keys.
    with units["u04"].lock:
        moved = units["u04"].booted.run("ls /etc/snapshot/channel-keys /etc/snapshot/keys")
    assert moved.out.split() == ["/etc/snapshot/channel-keys:", fingerprint,
                                 "/etc/snapshot/keys:",
                                 sh(tool("usign"), "-F", "-p", keys / "fleet.pub").stdout.strip()]
    # The enrolment: the unit polls from cron, hourly at a minute of its own, one poll at a
    # time, and the line cron runs works (nothing is published yet for the rest wave).
    with units["u03"].lock:
        line = units["u03"].booted.run("cat /etc/crontabs/root").out.strip()
    minute, *when, command = line.split(maxsplit=5)
    assert 0 <= int(minute) <= 59 and when == ["*"] * 4
    assert command == "flock -n /var/lock/snapshot-fleet.lock /sbin/snapshot fleet poll " \
                      ">/dev/null 2>&1"
    # Enrolling again changes nothing.
    again = operator.play("enroll.yml", key_pub=str(keys / "fleet.pub"), delay=0,
                          channel_key_pub=str(keys / "channel.pub"), confirm="operator",
                          channel_url=f"http://{LAB_NET}.1:8080/fleet/channel.json")
    assert "changed=0" in ok(again).stdout and "changed=1" not in again.stdout
    first = ok(operator.play("publish.yml", "wave.yml", bundle=str(bundle), wave="canary",
                             first=True, confirm="operator"))
    bundle_id = json.loads((lab.www / "fleet/channel.json").read_text())["rollouts"][0]["id"]
    assert {n: u["outcome"] for n, u in operator.report()["units"].items()} == \
        {"u01": "trial", "u02": "trial", "u03": "not applied", "u04": "not applied"}, \
        first.stdout[-3000:]
    # The watch does not confirm them: the operator does.
    ok(operator.play("decide.yml", wave="canary", decision="confirm", bundle_id=bundle_id))
    assert {n: u["outcome"] for n, u in operator.report()["units"].items()} == \
        {"u01": "confirmed", "u02": "confirmed", "u03": "not applied", "u04": "not applied"}
    ok(operator.play("wave.yml", wave="rest", first=False, confirm="operator",
                     bundle_id=bundle_id))
    assert [u["outcome"] for u in operator.report()["units"].values()] == \
        ["confirmed", "confirmed", "trial", "trial"]
    # The operator rolls the second wave back: the channel no longer names the bundle, the
    # units boot the state before it, with their enrolment, and take it no more.
    ok(operator.play("decide.yml", wave="rest", decision="rollback", bundle_id=bundle_id))
    assert json.loads((lab.www / "fleet/channel.json").read_text())["rollouts"] == []
    report = operator.report()
    assert [u["outcome"] for u in report["units"].values()] == \
        ["confirmed", "confirmed", "failed", "failed"]
    assert report["units"]["u03"]["last_rollback"]["reason"] == \
        f"bundle {bundle_id}: snapshot 1: rolled back by the operator"
    for name, unit in units.items():
        assert has_fix(unit) == (name in CANARY), name
        with unit.lock:
            assert unit.booted.run("uci get snapshot.fleet.confirm").out.strip() == "operator"
    assert [units[n].boots for n in sorted(units)] == [2, 2, 3, 3]
