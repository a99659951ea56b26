"""Tier 2: `ubus call snapshot ...` through the router's real ubusd and rpcd (built from the
pinned sources, tests/openwrt_tools.py), on a private socket.

rpcd finds its plugins and ACLs only at compiled-in paths, so each test starts it inside a
private mount namespace (`unshare -m`, root) where the package's two files are bind-mounted
there, /etc is an overlay holding /etc/config/rpcd (the logins) and /etc/config/snapshot (the
device: the plugin finds it as the CLI does), and /run and /tmp/snapshot (the job record) are
the namespace's own. rpcd runs the plugin with the environment a router gives it, but for
PATH, which leads to this checkout's interpreter and the built tools (uci among them). The
commands whose output a reply is compared with run in the same namespace.
"""
import ctypes
import ctypes.util
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import ok
from conftest import cannot_run
from mtd import FlashType, Geometry, SimFlash
from openwrt_tools import PREFIX, tool
from sweep import make_tree

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "initscripts/usr/libexec/rpcd/snapshot"
ACL = REPO / "initscripts/usr/share/rpcd/acl.d/snapshot.json"
NAND = Geometry(FlashType.NAND, 4 << 20, 128 << 10, 2048, 64)
READ = ["list", "check", "status", "show"]
WRITE = ["confirm", "rollback", "push", "save", "squash", "repair", "upgrade"]
#: The read methods that take no argument.
PLAIN = ["list", "check", "status"]
PASSWORD = "mesh-admin"
# As procd starts rpcd, with this checkout's `python3` and `snapshot` first.
ENV = {"PATH": f"{Path(sys.executable).parent}:{PREFIX}/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

NAMESPACE = r"""
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs "$SCRATCH"
mkdir -p "$SCRATCH/tools/libexec/rpcd" "$SCRATCH/tools/share/rpcd/acl.d" "$SCRATCH/tools.work" \
    "$SCRATCH/etc/config" "$SCRATCH/etc.work" "$SCRATCH/run" "$SCRATCH/jobs" /tmp/snapshot
cp "$CONFIG"/* "$SCRATCH/etc/config/"
mount -t overlay overlay \
    -o "lowerdir=$PREFIX,upperdir=$SCRATCH/tools,workdir=$SCRATCH/tools.work" "$PREFIX"
mount --bind "$PLUGINS" "$PREFIX/libexec/rpcd"
mount --bind "$ACLS" "$PREFIX/share/rpcd/acl.d"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$SCRATCH/etc,workdir=$SCRATCH/etc.work" /etc
mount --bind "$SCRATCH/run" /run
mount --bind "$SCRATCH/jobs" /tmp/snapshot
"$PREFIX/sbin/ubusd" -s "$SOCK" &
n=0
until [ -S "$SOCK" ]; do n=$((n + 1)); [ $n -lt 200 ] || exit 1; sleep 0.05; done
"$PREFIX/sbin/rpcd" -s "$SOCK" &
wait
"""


class Router:
    """ubusd and rpcd on `sock`, in their own mount namespace."""

    def __init__(self, work: Path, logins: str, device: Path):
        config = work / "config"
        config.mkdir()
        (config / "rpcd").write_text(logins)
        (config / "snapshot").write_text(f"config snapshot 'main'\n\toption device '{device}'\n")
        (work / "scratch").mkdir()
        self.sock = work / "ubus.sock"
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", NAMESPACE],
            env={**ENV, "SCRATCH": str(work / "scratch"), "CONFIG": str(config),
                 "PREFIX": str(PREFIX), "PLUGINS": str(PLUGIN.parent), "ACLS": str(ACL.parent),
                 "SOCK": str(self.sock)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 30
        while self.ubus("list", "snapshot").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ubusd and rpcd did not come up with the snapshot plugin: "
                            f"{self.proc.stdout.read()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)

    def ubus(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([tool("ubus"), "-s", self.sock, *args], capture_output=True,
                              text=True, timeout=60)

    def call(self, obj: str, method: str, arguments: dict | None = None) -> dict:
        done = self.ubus("call", obj, method, json.dumps(arguments or {}))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def inside(self, *argv, stdin: str | None = None) -> subprocess.CompletedProcess:
        """argv run in the namespace, in rpcd's environment."""
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "--", *argv],
                              input=stdin, capture_output=True, text=True, env=ENV,
                              timeout=60)

    def printed(self, *args) -> str:
        """What `snapshot ARGS` prints in the namespace (on the configured device)."""
        done = self.inside("snapshot", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def session(self, username: str) -> str:
        login = self.call("session", "login", {"username": username, "password": PASSWORD})
        return login["ubus_rpc_session"]

    def allowed(self, session: str, method: str) -> bool:
        return self.call("session", "access", {"ubus_rpc_session": session, "scope": "ubus",
                                               "object": "snapshot",
                                               "function": method})["access"]


def crypted(password: str) -> str:
    """The password as rpcd checks it: crypt(3), MD5 flavour, by the library rpcd uses."""
    libcrypt = ctypes.CDLL(ctypes.util.find_library("crypt"))
    libcrypt.crypt.restype = ctypes.c_char_p
    libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return libcrypt.crypt(password.encode(), b"$1$snapshot$").decode()


def logins() -> str:
    """/etc/config/rpcd: `reader` in the read group only, `admin` in both."""
    hashed = crypted(PASSWORD)
    return (f"config login\n\toption username 'reader'\n\toption password '{hashed}'\n"
            f"\tlist read 'snapshot-read'\n\n"
            f"config login\n\toption username 'admin'\n\toption password '{hashed}'\n"
            f"\tlist read 'snapshot-read'\n\tlist write 'snapshot-write'\n")


@pytest.fixture(scope="module")
def tools():
    if os.geteuid() != 0:
        cannot_run("tier 2 cannot run: rpcd's plugin directory is bind-mounted as root")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        cannot_run(f"tier 2 cannot run: unshare -m failed: {probe.stderr.strip()}")
    for name in ("ubusd", "rpcd", "ubus", "uci"):
        tool(name)


@pytest.fixture
def image(tmp_path):
    """A chain of two pushed snapshots."""
    path = tmp_path / "flash.img"
    SimFlash.create(path, NAND)
    ok(path, "format")
    for n in (1, 2):
        ok(path, "push", "--from", make_tree(tmp_path / f"tree{n}", n, 40), "-m", f"change {n}")
    return path


@pytest.fixture
def router(tools, tmp_path, image):
    work = tmp_path / "router"
    work.mkdir()
    started = Router(work, logins(), image)
    yield started
    started.stop()


def until_done(router: Router) -> dict:
    deadline = time.monotonic() + 60
    while (job := router.call("snapshot", "status")["job"])["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


# -- the plugin's methods -----------------------------------------------------------------------

def test_the_plugin_lists_every_method_with_its_arguments(router):
    listed = json.loads(router.inside(PLUGIN, "list", stdin="").stdout)
    assert sorted(listed) == sorted(READ + WRITE)
    assert listed["rollback"] == {"to": 32}
    assert listed["push"] == {"from": "str", "message": "str", "trial": True, "compression": "str"}
    # rpcd made a ubus object of it: `ubus -v list` shows each method's typed arguments.
    shown = router.ubus("-v", "list", "snapshot").stdout.splitlines()[1:]
    methods = json.loads("{" + ",".join(line.strip() for line in shown) + "}")
    assert sorted(methods) == sorted(READ + WRITE)
    assert methods["rollback"] == {"to": "Integer"}
    assert methods["save"] == {"from": "String", "trial": "Boolean", "compression": "String"}
    assert methods["upgrade"] == {"dry_run": "Boolean", "no_reboot": "Boolean"}


@pytest.mark.parametrize("method", PLAIN)
def test_a_read_method_replies_what_its_command_prints(router, method):
    printed = router.printed(method, "--json")
    assert router.call("snapshot", method) == json.loads(printed)
    # The plugin itself prints the command's bytes; ubus re-encodes them.
    assert router.inside(PLUGIN, "call", method, stdin="{}").stdout == printed


def test_list_through_ubus_shows_the_pushed_snapshots(router, image):
    listed = router.call("snapshot", "list")
    assert listed["device"] == str(image)
    assert [s["message"] for s in listed["snapshots"]] == ["change 1", "change 2"]


def test_show_through_ubus_takes_the_snapshot_number_and_uci(router):
    assert router.call("snapshot", "show", {"index": 2}) == json.loads(
        router.printed("show", "2", "--json"))
    shown = router.call("snapshot", "show", {"index": 1, "uci": True})
    assert shown == json.loads(router.printed("show", "1", "--uci", "--json"))
    assert shown["uci"][0]["config"] == "network"
    assert router.call("snapshot", "show", {"index": 9}) == {
        "error": "there is no snapshot 9 (the chain has 2)", "code": 1}


def test_rollback_through_ubus_drops_the_newest_snapshot(router):
    assert router.call("snapshot", "rollback") == {"dropped": ["snapshot 2"]}
    assert [s["index"] for s in json.loads(router.printed("list", "--json"))["snapshots"]] == [1]


def test_confirm_through_ubus_confirms_the_trial(router, tmp_path):
    router.printed("push", "--trial", "--from", make_tree(tmp_path / "tree3", 3, 4))
    assert router.call("snapshot", "confirm") == {"confirmed": "snapshot 3"}
    assert router.call("snapshot", "status")["trial"] is None
    assert router.call("snapshot", "list")["snapshots"][2]["state"] == "confirmed"


def test_an_error_is_a_reply_with_the_commands_message_and_status(router):
    reply = router.call("snapshot", "rollback", {"to": 7})
    refused = router.inside("snapshot", "rollback", "--to", "7")
    assert reply == {"error": refused.stderr.strip().removeprefix("Error: "),
                     "code": refused.returncode}
    assert reply == {"error": "--to 7 is not a snapshot number (0..2)", "code": 1}
    assert len(router.call("snapshot", "list")["snapshots"]) == 2


def test_an_unknown_argument_is_refused_as_bad_usage(router):
    assert router.call("snapshot", "rollback", {"upto": 1}) == {
        "error": "unknown argument 'upto' (arguments: to)", "code": 2}


# -- long operations ------------------------------------------------------------------------

def test_push_returns_at_once_and_status_reports_its_result(router, image, tmp_path):
    source = make_tree(tmp_path / "tree3", 3, 4)
    # The simulator serialises its writers' bookkeeping with a POSIX lock on the image: held
    # here, the push cannot write, so its reply can only have come before it finished.
    held = os.open(image, os.O_RDWR)
    fcntl.lockf(held, fcntl.LOCK_EX)
    try:
        reply = router.call("snapshot", "push", {"from": str(source), "message": "over ubus"})
        assert reply == {"started": "push", "job": 1}
        job = router.call("snapshot", "status")["job"]
        assert (job["id"], job["method"], job["state"], job["result"]) == (1, "push", "running",
                                                                           None)
    finally:
        os.close(held)
    job = until_done(router)
    assert job["result"] == {"snapshot": 3, "size": job["result"]["size"], "state": "confirmed",
                             "squashed": None, "exact": True, "warnings": []}
    assert router.call("snapshot", "list")["snapshots"][2]["message"] == "over ubus"
    assert router.call("snapshot", "status") == json.loads(router.printed("status", "--json"))


def test_a_second_long_operation_is_busy_while_one_runs(router, image, tmp_path):
    held = os.open(image, os.O_RDWR)
    fcntl.lockf(held, fcntl.LOCK_EX)
    try:
        router.call("snapshot", "push", {"from": str(make_tree(tmp_path / "tree3", 3, 4))})
        assert router.call("snapshot", "save", {"from": str(tmp_path / "tree1")}) == {
            "error": "push (job 1) is still running; see `snapshot status`", "code": 3}
    finally:
        os.close(held)
    assert until_done(router)["result"]["snapshot"] == 3


def test_squash_and_repair_run_as_jobs_and_status_reports_their_results(router):
    assert router.call("snapshot", "squash", {"upto": 2}) == {"started": "squash", "job": 1}
    assert until_done(router)["result"]["squashed"] == 2
    assert len(router.call("snapshot", "list")["snapshots"]) == 1
    assert router.call("snapshot", "repair") == {"started": "repair", "job": 2}
    assert until_done(router)["result"]["clean"] is True


def test_a_failed_long_operation_reports_its_error_in_status(router, tmp_path):
    missing = tmp_path / "missing"
    reply = router.call("snapshot", "save", {"from": str(missing), "trial": True})
    assert reply == {"started": "save", "job": 1}
    error = f"{missing}: no such directory"
    assert until_done(router)["result"] == {"error": error, "code": 1}
    assert f"background job 1 (save): done: {error}" in router.printed("status").splitlines()


# -- the ACL --------------------------------------------------------------------------------

def test_the_acl_puts_each_method_in_one_group():
    groups = json.loads(ACL.read_text())
    assert groups["snapshot-read"]["read"]["ubus"]["snapshot"] == READ
    assert groups["snapshot-write"]["write"]["ubus"]["snapshot"] == WRITE


def test_the_read_group_may_read_and_not_write(router):
    session = router.session("reader")
    assert [router.allowed(session, m) for m in READ] == [True] * len(READ)
    assert [router.allowed(session, m) for m in WRITE] == [False] * len(WRITE)


def test_a_call_carrying_its_session_as_the_http_gateway_sends_it_is_answered(router):
    # uhttpd's ubus handler checks `session access`, then adds the session to the arguments.
    session = router.session("reader")
    assert router.call("snapshot", "list", {"ubus_rpc_session": session}) == \
        json.loads(router.printed("list", "--json"))


def test_the_write_group_may_write(router):
    session = router.session("admin")
    assert [router.allowed(session, m) for m in READ + WRITE] == [True] * len(READ + WRITE)


def test_status_through_ubus_names_the_bundle_on_trial(router, tmp_path):
    # A snapshot stored from a bundle carries its id in its message (FORMAT.md §9).
    router.printed("push", "--trial", "-m", "bundle 0123456789abcdef: fix 2", "--from",
                   make_tree(tmp_path / "tree3", 3, 4))
    reply = router.call("snapshot", "status")
    assert reply["bundle"] == {"id": "0123456789abcdef", "snapshot": 3, "state": "trial",
                               "message": "fix 2"}
    assert reply["trial"]["what"] == "snapshot 3"
