"""The router's own tools, as scripts/setup-openwrt-tools.sh builds them, each run here the way
../shared/reference/openwrt-tools.md says it runs: a broken build fails here, by name, before
the tests that drive these tools fail for reasons of their own. fstools' binaries need MTD, so
here they only have to exist and link; the kernel tier runs them."""
import os
import subprocess
import time

import pytest

from openwrt_tools import PREFIX, tool


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=30,
                          **kwargs)


def ok(*argv, **kwargs) -> str:
    done = run(*argv, **kwargs)
    assert done.returncode == 0, f"{argv}: rc {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def until(condition, what: str, seconds: float = 10):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.05)
    return result


def stop(daemon: subprocess.Popen) -> None:
    # SIGKILL: libubox's loop forgets a SIGTERM that comes before it starts running, so a
    # daemon stopped right after it registered could outlive the test.
    daemon.kill()
    daemon.wait(timeout=10)


@pytest.fixture
def ubusd(tmp_path):
    """A ubusd on a private socket, answering; returns the socket."""
    sock = tmp_path / "ubus.sock"
    daemon = subprocess.Popen([tool("ubusd"), "-s", sock], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        # The socket file exists from bind(), a moment before ubusd listens on it.
        until(lambda: run(tool("ubus"), "-s", sock, "list").returncode == 0, "ubusd answers")
        yield sock
    finally:
        stop(daemon)


def test_ubus_lists_an_empty_ubusd(ubusd):
    assert ok(tool("ubus"), "-s", ubusd, "list") == ""


def test_rpcd_registers_its_objects_on_ubus(ubusd):
    daemon = subprocess.Popen([tool("rpcd"), "-s", ubusd], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    def registered() -> bool:
        return {"session", "uci", "rc"} <= set(ok(tool("ubus"), "-s", ubusd, "list").split())
    try:
        until(registered, "rpcd registers session, uci and rc")
    finally:
        stop(daemon)


def test_rpcd_plugin_and_acl_directories_exist_to_mount_over():
    # rpcd has them compiled in; tests bind-mount their own plugins and ACLs over them.
    tool("rpcd")
    assert (PREFIX / "libexec/rpcd").is_dir() and (PREFIX / "share/rpcd/acl.d").is_dir()


def test_uci_shows_a_config_directory(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config/snapshot").write_text("config snapshot 'main'\n\toption keep '3'\n")
    shown = ok(tool("uci"), "-c", tmp_path / "config", "-t", tmp_path / "save", "show",
               "snapshot")
    assert shown == "snapshot.main=snapshot\nsnapshot.main.keep='3'\n"
    missing = run(tool("uci"), "-c", tmp_path / "config", "-t", tmp_path / "save", "get",
                  "snapshot.main.none")
    assert missing.returncode == 1 and "Entry not found" in missing.stderr


def test_usign_signs_and_verifies_and_refuses_a_changed_file(tmp_path):
    usign = tool("usign")
    message = tmp_path / "message"
    message.write_text("hello\n")
    ok(usign, "-G", "-s", tmp_path / "key.sec", "-p", tmp_path / "key.pub", "-c", "test key")
    ok(usign, "-S", "-m", message, "-s", tmp_path / "key.sec")
    assert (tmp_path / "message.sig").exists()
    ok(usign, "-V", "-m", message, "-p", tmp_path / "key.pub")
    message.write_text("hello, changed\n")
    refused = run(usign, "-V", "-m", message, "-p", tmp_path / "key.pub")
    assert refused.returncode == 1 and "verification failed" in refused.stderr


def test_apk_creates_a_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    ok(tool("apk"), "--root", root, "add", "--initdb")
    assert (root / "lib/apk/db/installed").exists()
    assert ok(tool("apk"), "--root", root, "list", "--installed") == ""


def test_opkg_lists_nothing_installed_in_an_empty_root(tmp_path):
    root = tmp_path / "root"
    (root / "var/lock").mkdir(parents=True)
    conf = tmp_path / "opkg.conf"
    conf.write_text("dest root /\narch all 1\n")
    assert ok(tool("opkg"), "-o", root, "-f", conf, "list-installed",
              env={**os.environ, "TMPDIR": str(tmp_path)}) == ""


@pytest.mark.parametrize("name", ["snapshot_tool", "factoryreset", "mount_root"])
def test_fstools_binary_is_built_and_links(name):
    binary = tool(name)
    assert os.access(binary, os.X_OK)
    # The dynamic loader lists what the binary links without running it (it needs MTD).
    linked = ok(binary, env={"LD_TRACE_LOADED_OBJECTS": "1"})
    assert "libfstools.so" in linked and "not found" not in linked, linked
