"""Tier 2: real overlayfs. As root in a private mount namespace, changes made in a stacked
overlay are pushed as snapshots, unpacked into a fresh upper dir and mounted again; the merged
view must be the same in full (tests/overlay_lab.py). Needs root and `unshare`; CI has both."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import cannot_run
from mtd import FlashType, Geometry, SimFlash
from snapshot import operations

LAB = Path(__file__).with_name("overlay_lab.py")
MIB = 1 << 20


def mounts_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "real-mount tests need root"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -m failed: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def namespaces():
    reason = mounts_unavailable()
    if reason:
        cannot_run(f"tier 2 cannot run: {reason}")


def run_lab(work: Path, steps: list, squash: bool = False) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    image = work / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NAND, 32 * MIB, 128 * 1024, 2048, 64),
                    bad_blocks=[6])
    with SimFlash(image, writable=True) as flash:
        operations.format_device(flash)
    spec = work / "spec.json"
    spec.write_text(json.dumps({"image": str(image), "work": str(work / "ns"), "steps": steps,
                                "squash": squash}))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                           str(LAB), str(spec)], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


EVERY_KIND_OF_CHANGE = [
    [   # snapshot 1
        ["write", "etc/config/wireless", "config wifi-device 'radio0'\n"],   # create
        ["append", "etc/config/network", "config interface 'wan'\n"],        # modify lower
        ["chmod", "etc/config/firewall", 0o600],
        ["chown", "etc/banner", 1000, 100],
        ["rm", "www/index.html"],                                            # whiteout
        ["rmtree", "usr/share/doc/pkg"],                                     # opaque dir
        ["mkdir", "usr/share/doc/pkg"],
        ["write", "usr/share/doc/pkg/CHANGES", "new\n"],
        ["rename", "usr/lib/lua/luci.lua", "usr/lib/lua/luci2.lua"],
        ["setxattr", "etc/config/system", "user.origin", "installer"],
        ["link", "etc/config/wireless", "etc/wireless.hardlink"],
        ["write", ".profile", "export PS1='# '\n"],           # top-level dotfile
        ["symlink", "etc/rc.d/S50uhttpd", "../init.d/uhttpd"],
        ["mkfifo", "etc/fifo"],
        ["write", "usr/bin/suid", "#!/bin/sh\n"],
        ["chmod", "usr/bin/suid", 0o4755],
        ["rename", "usr/share/doc", "usr/share/manual"],                     # a lower dir
    ],
    [   # snapshot 2: changes on top of snapshot 1
        ["write", "etc/config/wireless", "config wifi-device 'radio1'\n"],
        ["rm", "etc/fifo"],                                                  # whiteout over snapshot 1
        ["rmtree", "usr/share/manual"],
        ["write", "etc/banner", "replaced\n"],
        ["rm", "bin/tool"],
        ["mkdir", "bin/tool"],                                               # dir where a file was
        ["write", "bin/tool/inner", "x\n"],
        ["rmtree", "etc/rc.d"],
        ["write", "etc/rc.d", "now a file\n"],                               # file where a dir was
        ["rmtree", "usr/lib"],
    ],
    [   # snapshot 3
        ["write", "www/index.html", "<html>back</html>\n"],                  # file where a whiteout was
        ["mkdir", "usr/lib"],                        # a plain new dir where a whiteout was
        ["write", "usr/lib/new.so", "elf\n"],
        ["setxattr", "bin/tool", "user.kind", "dir"],
    ],
]


def test_every_kind_of_change_survives_push_and_unpack(namespaces, tmp_path):
    report = run_lab(tmp_path, EVERY_KIND_OF_CHANGE)
    assert report["ok"], report.get("difference")
    assert report["steps"] == 3


def test_a_directory_emptied_where_the_squashfs_has_none_lists_empty(namespaces, tmp_path):
    """Found by the property test: snapshot 2's whiteout for new/a, applied into one upper
    dir over a squashfs without new/, would be listed by overlayfs."""
    report = run_lab(tmp_path, [[["mkdir", "new/a"]], [["rmtree", "new/a"]]])
    assert report["ok"], report.get("difference")


PATHS = ["etc/config/network", "etc/banner", "www/index.html", "usr/share/doc/pkg",
         "usr/share/doc/pkg/README", "new", "new/a", "new/sub/b", ".dot", "bin/tool", "etc/rc.d"]
OPS = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), st.text("abc\n", max_size=20)),
    st.tuples(st.just("rm"), st.sampled_from(PATHS)),
    st.tuples(st.just("rmtree"), st.sampled_from(PATHS)),
    st.tuples(st.just("mkdir"), st.sampled_from(PATHS)),
    st.tuples(st.just("chmod"), st.sampled_from(PATHS), st.sampled_from([0o600, 0o755, 0o2750])),
    st.tuples(st.just("setxattr"), st.sampled_from(PATHS), st.just("user.k"),
              st.text("xyz", min_size=1, max_size=5)),
    st.tuples(st.just("link"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.just("symlink"), st.sampled_from(PATHS), st.sampled_from(["new", "../x"])),
).map(list)


@settings(max_examples=int(os.environ.get("SNAPSHOT_HYPOTHESIS_EXAMPLES", "12")),
          deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.lists(OPS, min_size=1, max_size=6), min_size=1, max_size=3))
def test_random_change_sequences_survive_push_and_unpack(namespaces, tmp_path_factory, steps):
    report = run_lab(tmp_path_factory.mktemp("lab"), steps)
    assert report["ok"], report.get("difference")
