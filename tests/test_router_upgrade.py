"""The real router (tests/router_vm.py) through power cuts during `snapshot upgrade` from an apk
feed (DESIGN.md §12): each next boot, through the real /etc/preinit, is exactly the state
before the upgrade or the upgrade (on trial, which the watch then confirms).

The router: converted from its first boot's jffs2, mesh-tool 1.0 installed from the sandbox
tier's feed v1 (tests/test_router.py's `feeds`, served over HTTP) and confirmed, 24 erase
blocks of incompressible data saved (the volatile record the upgrade's store copies), the
watch made fast and the feed switched to v2, all of it on flash; a copy of its flash image is
the start of each cut (an upgrade is refused while a trial is pending). Each cut boots that
image, runs the upgrade through tests/synced_cli.py (each flash operation on the
disk image when it returns, as on flash) and kills qemu:
- while apk runs its post-commit hooks: apk has written the whole upgrade into RAM and
  snapshot has stored nothing (a hook added for the cut holds it there);
- while the store writes (the change's record, then the copy of the volatile record), and
  around its commit.
Marked `router`, with the tier (`bash scripts/test.sh -m router`).
"""
import json
import shutil
import time

import pytest

from router_vm import Router, erased_flash
from test_router import (FAST_WATCH, SYNCED_CLI, copy_into, feeds, settled,  # noqa: F401
                         usable_root, use_feed)

pytestmark = pytest.mark.router

#: Erase blocks of the saved data the store copies.
BLOCKS = 24

#: A commit hook added for the cut: apk runs the hooks in name order, this one before
#: snapshot's; after the transaction it says what the running system holds and waits for the
#: power to go.
HOLD_HOOK = ("printf '#!/bin/sh\\n[ \"$1\" = post-commit ] || exit 0\\n"
             "echo \"hold: apk committed VERSION $(cat /srv/mesh-tool/VERSION)\" >/dev/console\\n"
             "exec sleep 600\\n' >/etc/apk/commit_hooks.d/hold && "
             "chmod +x /etc/apk/commit_hooks.d/hold")

#: Where the power is cut: None while apk holds its post-commit; else once the store has
#: reported `blocks` erase blocks written, then `delay` seconds.
CUTS = {"apk-commit": (None, 0.0), "blocks-3": (3, 0.0), "blocks-24+30ms": (BLOCKS, 0.03)}

#: What tells the state before the upgrade from the upgrade.
SHOW = "cat /srv/mesh-tool/VERSION; apk info -v 2>/dev/null | grep mesh-tool; sha256sum /root/data"


@pytest.fixture(scope="module")
def before_upgrade(feeds, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """The router of the module doc, ready for the upgrade: its root, work dir, the flash
    image's copy, its status and what SHOW showed."""
    root = usable_root()
    built, feed = feeds
    work = tmp_path_factory.mktemp("router-upgrade")
    erased_flash(work / "flash.img")
    with Router(root, work / "flash.img", work / "console-jffs2.log") as router:
        settled(router)
        router.wait_until("grep -q ' /overlay jffs2 ' /proc/mounts", 300)
        router.send("snapshot convert\n")
        router.expect("snapshot convert: converted; rebooting into the chain", 600)
        router.wait_exit(120)
    with Router(root, work / "flash.img", work / "console-chain.log") as router:
        settled(router)
        copy_into(router, built.apk_key, "/etc/apk/keys/snapshot-test.pem")
        use_feed(router, feed("v1"))
        router.check("apk add mesh-tool && snapshot confirm", 300)
        router.check(f"head -c {BLOCKS * 64 * 1024} /dev/urandom > /root/data && {FAST_WATCH}")
        use_feed(router, feed("v2"))
        router.check("snapshot save && sync", 180)
        status = json.loads(router.check("snapshot status --json", 180))
        shown = router.check(SHOW)
        # The save closed the device, which writes it back: the image is the state on flash.
        shutil.copyfile(work / "flash.img", work / "before.img")
    return root, work, status, shown


@pytest.mark.parametrize("cut", CUTS)
def test_a_power_cut_during_an_upgrade_boots_the_state_before_or_the_upgrade(
        before_upgrade, feeds, cut):  # noqa: F811
    root, work, before, shown = before_upgrade
    _, feed = feeds
    shutil.copyfile(work / "before.img", work / "flash.img")
    blocks, delay = CUTS[cut]
    with Router(root, work / "flash.img", work / f"console-{cut}.log") as router:
        settled(router)
        assert router.check(SHOW) == shown
        # apk's index is in RAM: fetch it again.
        use_feed(router, feed("v2"))
        copy_into(router, SYNCED_CLI, "/tmp/synced_cli.py")
        if blocks is None:
            router.check(HOLD_HOOK)
        router.send("python3 /tmp/synced_cli.py upgrade --no-reboot </dev/null\n")
        if blocks is None:
            router.expect("hold: apk committed VERSION 2", 600)
            # Nothing of the upgrade is on the flash: all of it is in RAM.
            assert (work / "flash.img").read_bytes() == (work / "before.img").read_bytes()
        else:
            for _ in range(blocks):
                router.expect(" written", 600)
        time.sleep(delay)
        router.kill()

    with Router(root, work / "flash.img", work / f"console-{cut}-after.log") as after:
        settled(after)
        status = json.loads(after.check("snapshot status --json", 180))
        got = after.check(SHOW)
        assert status["trial"] is None, status
        if status["snapshots"] == before["snapshots"]:
            outcome = "old"
            assert got == shown
        else:
            outcome = "new"
            assert status["snapshots"] == before["snapshots"] + 1, status
            assert got.startswith("2\nmesh-tool-2.0-r0\n") and \
                got.splitlines()[-1] == shown.splitlines()[-1], got
            assert "trying snapshot" in after.check("dmesg | grep 'snapshot: '")
        after.check("snapshot check", 300)
    if blocks is None:
        assert outcome == "old"
    print(f"power cut during an upgrade ({cut}): the next boot is {outcome}")
