"""LuCI's System -> Snapshots page (openwrt-package/luci-app-snapshot) in a real browser,
against the real router: Debian's chromium, driven by Selenium through Debian's
chromedriver, on the router guest of the router tier (tests/router_vm.py) with LuCI built
from its sources by scripts/build-router.sh, uhttpd's port 80 forwarded to the host.

One boot of the converted chain serves the tests in order, as a user would go through the
page; rolling back reboots it. Marked `browser`: `bash scripts/test.sh -m browser` runs
this tier alone. The screenshots are saved in the test's output directory (the path is
printed); docs/ holds copies for the README.
"""
import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import cannot_run
from router_vm import Router, RouterUnavailable, build_root, erased_flash
# The router tier's served apk feeds and its console helpers.
from test_router import copy_into, feeds, use_feed  # noqa: F401 (feeds: a fixture)

pytestmark = pytest.mark.browser

BOOT_TIMEOUT = 400
SETTLE_TIMEOUT = 300
#: Seconds the page may take for a step: every ubus call of the page runs the plugin under
#: the router's Python, under TCG.
PAGE_TIMEOUT = 240
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAGE = "/cgi-bin/luci/admin/system/snapshot"

#: Two LuCI logins besides root (/etc/config/rpcd): an administrator, and a viewer whose
#: ACL grants the page's read group only.
ADMIN, ADMIN_PASSWORD = "admin", "correct horse"
VIEWER, VIEWER_PASSWORD = "viewer", "battery staple"


def _crypt(password: str) -> str:
    """A SHA-256 crypt(3) hash, which rpcd checks with the router's (musl's) crypt."""
    return subprocess.run(["openssl", "passwd", "-5", password], capture_output=True,
                          text=True, check=True).stdout.strip()


def _logins() -> list[str]:
    """The shell commands that add the two logins to /etc/config/rpcd, one a line: the serial
    console loses the end of a long line."""
    commands = []
    for user, password, groups in ((ADMIN, ADMIN_PASSWORD, {"read": "*", "write": "*"}),
                                   (VIEWER, VIEWER_PASSWORD, {"read": "luci-app-snapshot"})):
        commands += ["uci add rpcd login >/dev/null",
                     f"uci set rpcd.@login[-1].username={user}",
                     f"uci set rpcd.@login[-1].password='{_crypt(password)}'"]
        commands += [f"uci add_list rpcd.@login[-1].{kind}={group}"
                     for kind, group in groups.items()]
    return commands + ["uci commit rpcd"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """The router on its flash, booted again where a test reboots it."""

    def __init__(self, root: Path, work: Path):
        self.root, self.work = root, work
        self.flash = erased_flash(work / "flash.img")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.boots = 0
        self.router = None

    def boot(self) -> Router:
        self.boots += 1
        self.router = Router(self.root, self.flash, self.work / f"console-{self.boots}.log",
                             http_port=self.port)
        self.router.login(BOOT_TIMEOUT)
        return self.router

    def settle(self) -> None:
        """rc.d is done: the snapshot service's watch has run and uhttpd answers."""
        self.router.wait_until("ubus call service list '{\"name\": \"snapshot\"}' "
                               "| grep -q exit_code", SETTLE_TIMEOUT)
        self.router.wait_until("ubus call service list '{\"name\": \"uhttpd\"}' "
                               "| grep -q '\"running\": true'", SETTLE_TIMEOUT)

    def snapshot_list(self) -> dict:
        return json.loads(self.router.check("snapshot list --json", 180))

    def shutdown(self) -> None:
        if self.router is not None:
            self.router.__exit__(None, None, None)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    for program in (CHROMIUM, CHROMEDRIVER):
        if not Path(program).exists():
            cannot_run(f"browser tier: no {program} (apt-get install chromium chromium-driver)")
    try:
        root = build_root()
    except RouterUnavailable as e:
        cannot_run(f"real-router tier unavailable: {e}")
    lab = Lab(root, tmp_path_factory.mktemp("browser"))
    try:
        # First boot on erased flash: the logins and a file on jffs2, then the conversion
        # (which reboots), then the chain's first boot.
        router = lab.boot()
        router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", SETTLE_TIMEOUT)
        for command in _logins() + ["mkdir /etc/added && echo kept > /etc/added/file && sync"]:
            router.check(command)
        router.send("snapshot convert\n")
        router.expect("snapshot convert: converted; rebooting into the chain", 600)
        router.wait_exit(120)
        lab.shutdown()
        lab.boot()
        lab.settle()
        yield lab
    finally:
        lab.shutdown()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    path = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {path}")
    return path


def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1024"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _chromium()
    yield driver
    driver.quit()


def wait(driver, condition, timeout=PAGE_TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)


def css(selector):
    """A wait condition: the first displayed element the selector finds."""
    from selenium.webdriver.common.by import By

    def found(driver):
        shown = [e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]
        return shown[0] if shown else False
    return found


def find_all(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def log_in(driver, lab: Lab, user: str, password: str) -> None:
    """Open the page logged out and log in through LuCI's form as a user does: the
    bootstrap theme shows it in its modal dialog (#modal_overlay) once its view is loaded;
    the password is typed, then Enter. The page is shown once LuCI has rendered it."""
    driver.delete_all_cookies()
    driver.get(lab.url + PAGE)
    name = wait(driver, css("#modal_overlay #luci_username"))
    name.clear()
    name.send_keys(user)
    wait(driver, css("#modal_overlay #luci_password")).send_keys(password + "\n")
    wait(driver, css("#snapshot-page"))


def open_page(driver, lab: Lab) -> None:
    driver.get(lab.url + PAGE)
    wait(driver, css("#snapshot-page"))


def page_chain(driver) -> list[dict]:
    """The chain table's rows: number, message and state."""
    rows = []
    for row in find_all(driver, "#snapshot-chain tr[data-index]"):
        cells = row.find_elements("css selector", "td")
        rows.append({"index": int(cells[0].text), "message": cells[1].text,
                     "state": cells[4].text})
    return rows


def listed_chain(lab: Lab) -> list[dict]:
    """`snapshot list --json` in the guest, as the page words each row's state."""
    rows = []
    for s in lab.snapshot_list()["snapshots"]:
        state = {"trial": f"on trial, boot {s.get('attempts')} of {s.get('max_attempts')}",
                 "failed": "failed"}.get(s["state"], "confirmed")
        rows.append({"index": s["index"], "message": s["message"], "state": state})
    return rows


def run_job(driver, button_selector: str) -> None:
    """Click a button that starts a background job and wait until the page, reloaded
    after the job, is back (the job's dialog gone)."""
    old = driver.find_element("css selector", "#snapshot-page")
    wait(driver, css(button_selector)).click()
    wait(driver, lambda d: _stale(old))
    wait(driver, css("#snapshot-page"))


def rebooted(lab: Lab, browser) -> None:
    """Once the page has made the router reboot (which ends qemu: -no-reboot): the next
    boot, settled, and the page logged in again."""
    lab.router.wait_exit(300)
    lab.shutdown()
    lab.boot()
    lab.settle()
    log_in(browser, lab, ADMIN, ADMIN_PASSWORD)


def _stale(element) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException
    try:
        element.is_displayed()
        return False
    except StaleElementReferenceException:
        return True


def ubus_call(lab: Lab, session: str, obj: str, method: str, args: dict) -> dict:
    """A JSON-RPC call to uhttpd's /ubus with a session, as the page's rpc.js sends it."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                       "params": [session, obj, method, args]}).encode()
    request = urllib.request.Request(lab.url + "/ubus/", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=PAGE_TIMEOUT) as reply:
        return json.loads(reply.read())


# -- the tests, in the order a user goes through the page ------------------------------------

def test_log_in_through_the_login_form(lab, browser):
    log_in(browser, lab, ADMIN, ADMIN_PASSWORD)
    assert any(c["name"] == "sysauth_http" for c in browser.get_cookies())
    assert browser.find_element("css selector", "#snapshot-page h2").text == "Snapshots"


def test_the_table_matches_snapshot_list(lab, browser):
    open_page(browser, lab)
    assert page_chain(browser) == listed_chain(lab)
    listed = lab.snapshot_list()
    assert [r["index"] for r in page_chain(browser)] == [1]
    assert browser.find_element("css selector", "#snapshot-volatile").text.endswith("none") \
        == (listed["volatile"] is None)


def test_save_then_snapshot_on_trial_then_confirm_from_the_page(lab, browser, shots):
    lab.router.check("echo from-the-page > /etc/added/page")
    open_page(browser, lab)
    run_job(browser, "#snapshot-save")
    assert lab.snapshot_list()["volatile"] is not None
    assert "Saved configuration" in browser.find_element("css selector",
                                                          "#snapshot-volatile").text

    lab.router.check("echo on-trial > /etc/added/trial")
    wait(browser, css("#snapshot-push")).click()
    wait(browser, css("#snapshot-message")).send_keys("tried from the page")
    browser.find_element("css selector", "#snapshot-trial").click()
    run_job(browser, "#snapshot-take")
    tried = page_chain(browser)[-1]
    assert tried["index"] == 2 and tried["message"] == "tried from the page"
    assert tried["state"].startswith("on trial, boot 0 of ")
    assert page_chain(browser) == listed_chain(lab)

    # A second snapshot while one is on trial: the tool refuses, and the page shows its one
    # line, as the command line would print it, and nothing else.
    wait(browser, css("#snapshot-push")).click()
    wait(browser, css("#snapshot-message")).send_keys("one too many")
    browser.find_element("css selector", "#snapshot-take").click()
    refused = wait(browser, css(".snapshot-error")).text
    assert refused == ("snapshot 2 is on trial; confirm it (`snapshot confirm`) or roll it back "
                       "(`snapshot rollback`) before pushing")
    assert "Traceback" not in browser.page_source
    assert page_chain(browser) == listed_chain(lab) and len(page_chain(browser)) == 2
    open_page(browser, lab)

    run_job(browser, "#snapshot-confirm")
    assert page_chain(browser)[-1]["state"] == "confirmed"
    assert page_chain(browser) == listed_chain(lab)
    assert json.loads(lab.router.check("snapshot status --json", 180))["trial"] is None
    browser.save_screenshot(str(shots / "luci-status.png"))


def test_upgrade_from_the_page_against_a_local_feed(lab, browser, feeds):
    """mesh-tool 1 from the router tier's served feed v1; with feed v2, Upgrade on the page:
    its dialog shows the job's progress lines, then the upgrade stored on trial, and the
    page reboots the router into it. After the boot the page shows the chain `list` shows,
    the upgrade's snapshot last, and mesh-tool 2 runs."""
    built, feed = feeds
    copy_into(lab.router, built.apk_key, "/etc/apk/keys/snapshot-test.pem")
    use_feed(lab.router, feed("v1"))
    lab.router.check("apk add mesh-tool && snapshot confirm", 300)
    use_feed(lab.router, feed("v2"))
    before = lab.snapshot_list()["snapshots"]
    log_in(browser, lab, ADMIN, ADMIN_PASSWORD)
    wait(browser, css("#snapshot-upgrade")).click()
    progress = []

    def rebooting(driver):
        from selenium.common.exceptions import StaleElementReferenceException
        try:
            for line in find_all(driver, ".snapshot-progress"):
                if line.text not in progress:
                    progress.append(line.text)
            return next((d.text for d in find_all(driver, "#modal_overlay .modal")
                         if d.text.startswith("Rebooting")), False)
        except StaleElementReferenceException:
            return False
    dialog = wait(browser, rebooting, 600)
    index = len(before) + 1
    assert f"Snapshot {index} holds the upgrade, on trial" in dialog
    # A line of the tool's own, beyond the page's "Starting…" and "Running…".
    assert set(progress) - {"Starting…", "Running…"}, progress
    rebooted(lab, browser)
    assert page_chain(browser) == listed_chain(lab)
    assert [r["index"] for r in page_chain(browser)] == [*range(1, index + 1)]
    assert lab.router.check("cat /srv/mesh-tool/VERSION") == "2\n"


#: The LAN address the router booted with (OpenWrt's config_generate), and the one a
#: snapshot changes it to; uhttpd keeps the old one until the network is reloaded. A boot
#: into that snapshot would be out of the host's reach (its port is forwarded to the old
#: one): the upgrade, which reboots, comes before, and the rollback after.
LAN_ADDRESS, NEW_LAN_ADDRESS = "192.168.1.1/24", "192.168.1.254/24"


def test_a_row_shows_the_uci_options_its_snapshot_changed(lab, browser):
    assert lab.router.check("uci get network.lan.ipaddr") == LAN_ADDRESS + "\n"
    lab.router.check(f"uci set network.lan.ipaddr={NEW_LAN_ADDRESS} && uci commit network")
    open_page(browser, lab)
    wait(browser, css("#snapshot-push")).click()
    wait(browser, css("#snapshot-message")).send_keys("new LAN address")
    run_job(browser, "#snapshot-take")
    index = page_chain(browser)[-1]["index"]
    assert page_chain(browser)[-1]["message"] == "new LAN address"
    wait(browser, css(f'tr[data-index="{index}"] button[data-action="changes"]')).click()
    option = wait(browser, css(f'#snapshot-changes-{index} tr[data-option="network.lan.ipaddr"]'))
    assert option.text == f"network.lan.ipaddr '{LAN_ADDRESS}' → '{NEW_LAN_ADDRESS}'"
    assert "/etc/config/network" in browser.find_element(
        "css selector", f"#snapshot-changes-{index} .snapshot-files").text


def test_read_only_user_sees_no_buttons_and_a_forged_write_is_refused(lab, browser):
    before = lab.snapshot_list()["snapshots"]
    log_in(browser, lab, VIEWER, VIEWER_PASSWORD)
    assert page_chain(browser) == listed_chain(lab)
    assert find_all(browser, '[data-action="rollback"]') == []
    assert find_all(browser, "#snapshot-actions") == []
    session = next(c["value"] for c in browser.get_cookies() if c["name"] == "sysauth_http")
    # A read works with the session; a write is refused by rpcd, whatever the page shows.
    assert "snapshots" in ubus_call(lab, session, "snapshot", "list", {})["result"][1]
    forged = ubus_call(lab, session, "snapshot", "rollback", {"to": 1})
    assert forged.get("error", {}).get("message") == "Access denied", forged
    assert lab.snapshot_list()["snapshots"] == before


def test_roll_back_from_the_page_to_snapshot_1(lab, browser, shots):
    log_in(browser, lab, ADMIN, ADMIN_PASSWORD)
    wait(browser, css('tr[data-index="1"] button[data-action="rollback"]')).click()
    dialog = wait(browser, css("#modal_overlay .modal"))
    lost = [f"snapshot {s['index']}: {s['message']}" for s in lab.snapshot_list()["snapshots"][1:]]
    assert lost and all(line in dialog.text.splitlines() for line in lost), dialog.text
    browser.save_screenshot(str(shots / "luci-rollback.png"))
    wait(browser, css("#snapshot-rollback-confirm")).click()
    # The page rolls back, then asks procd to reboot, which ends qemu (-no-reboot).
    rebooted(lab, browser)
    assert page_chain(browser) == listed_chain(lab)
    assert [r["index"] for r in page_chain(browser)] == [1]
    assert lab.router.check("cat /etc/added/file") == "kept\n"
    assert lab.router.sh("test -e /etc/added/page")[0] == 1
    assert lab.router.check("uci get network.lan.ipaddr") == LAN_ADDRESS + "\n"

