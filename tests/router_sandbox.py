"""Tier 2: a booted sandbox router that runs the real apk v3 or opkg in its own root.

    def test_upgrade(apk_router):                  # fixtures below; opkg_router likewise
        booted = apk_router.boot()                 # `snapshot mount`, in a fresh namespace
        assert booted.run("apk add mesh-tool").rc == 0
        apk_router.use_feeds("v2")                 # the feeds now offer version 2
        booted.run("apk update && apk upgrade")    # Done(rc, out, err)
        booted.snapshot("push", "-m", "upgrade")   # the router's /sbin/snapshot
        booted = apk_router.reboot()               # RAM is gone, the flash image stays
        assert booted.read("/srv/mesh-tool/VERSION") == "2\n"

What it is, mapped onto a router:

    router                                sandbox
    squashfs (the firmware)               a real squashfs (mksquashfs) built by build_rootfs(),
                                          once per test module (apk_rootfs, opkg_rootfs)
    rootfs_data (raw flash)               a simulator image (mtd/sim.py), formatted with the
                                          CLI; Router.image, kept across boots
    preinit's `snapshot mount` + pivot    `snapshot mount --root SQUASHFS --target T` in a
                                          private mount, PID and network namespace, one per
                                          boot; leaving it is the power-off
    the running system                    T, entered with chroot(T) by Booted.run(), as root,
                                          with OpenWrt's PATH and HOME=/root, cwd /
    /rom /overlay /volatile               what `snapshot mount` made (T/rom is a bind);
                                          Router.boot(ram=N) caps the /volatile tmpfs
    init (procd), PID 1                   the harness's driver: busybox reboot, halt and
                                          poweroff signal it as they signal procd, and it
                                          records the request (Booted.reboot_requested); the
                                          test then calls Router.reboot()
    /tmp (/var -> /tmp)                   a fresh tmpfs per boot with the directories
                                          OpenWrt's /etc/init.d/boot makes, and the note of
                                          the booted device preinit's mount leaves there
    /dev /proc /sys                       a small tmpfs /dev (null, zero, full, random,
                                          urandom, tty, pts, and a /dev/log the harness reads:
                                          Booted.syslog()), the namespace's own proc, sysfs
    busybox userland                      the host's busybox: /bin/busybox with its applets
                                          linked in /bin, /sbin, /usr/bin and /usr/sbin
    /usr/bin/apk or /bin/opkg             links to the binaries scripts/setup-openwrt-tools.sh
                                          built (tests/openwrt_tools.py), as are /sbin/uci and
                                          /usr/bin/usign; /usr/sbin/opkg-key verifies a list's
                                          usign signature against /etc/opkg/keys, as OpenWrt's
    /lib/apk/db, /usr/lib/opkg            real directories of the squashfs, the database
                                          empty (apk --initdb; an empty opkg status), so every
                                          change to it lands in /volatile/upper (RAM)
    /etc/opkg.conf                        OpenWrt's lines: dest root and ram, lists in
                                          /var/opkg-lists, overlay_root /overlay,
                                          check_signature
    /sbin/snapshot                        a sh launcher running the host venv's Python with
                                          `-m snapshot`; /etc/config/snapshot is the
                                          checkout's with `option device` set to the flash
                                          image as the router sees it (/.sandbox/flash.img)
    the feeds (downloads.openwrt.org)     Feeds.build(): repositories made with the real
                                          tools (sandbox_feeds, once per module), served over
                                          HTTP on the namespace's loopback; the router's feed
                                          list (/etc/apk/repositories.d/distfeeds.list,
                                          /etc/opkg/distfeeds.conf) links into /.sandbox,
                                          where Router.use_feeds() rewrites it, so switching
                                          feeds never touches the router's layers
    an unreachable feed                   http://127.0.0.1:9/: nothing listens there

The router has no libc or Python of its own: it borrows the host's through /.host, the host
root bound read-only. The squashfs links the few host paths it needs there: the dynamic
loader and libc (/lib64, /lib/<multiarch>, /usr/lib/<multiarch>, /etc/ld.so.cache), and the
checkout, the venv and the interpreter (e.g. /work -> /.host/work, /root/.pyenv ->
/.host/root/.pyenv), which keep their host paths. A checkout under /tmp is linked from the
router's /tmp at each boot. apk and opkg are reached by their /.host path (their RUNPATH is
$ORIGIN/../lib). Booted.path() reaches the router's files from the host, through the
namespace's root.

What it does not cover:
- Nothing starts after the mount: no procd, ubus, rpcd or init scripts. A test runs what the
  router's init would (`snapshot watch`) through run().
- No kernel and no kernel MTD: the flash is the simulator's (the kernel tier has real MTD and
  qemu kills). Power cuts are the simulator's (MTDSIM_POWERCUT_AFTER); a reboot is leaving
  the namespace. `reboot -f` ends the namespace at once (the next run() says so).
- The host's busybox is Debian's static build, which runs its own applet for a command of
  that name before searching PATH (ash, env, xargs); OpenWrt's busybox searches PATH. So a
  router file shadowing a busybox applet (a wrapper named like one) is not reached here by
  name; opkg and apk are not applets.
- The packages (catalogue()) install under /srv/<pkg> and /etc/<pkg>. A package must not
  install into the borrowed paths: they are read-only links into the host.
- /.host and /.sandbox exist only in the sandbox; they are squashfs directories, so nothing
  of them reaches /volatile/upper.
- The feeds are signed with test keys: the apk index with an EC P-256 key whose public half
  is in /etc/apk/keys (the .apk files are unsigned, as OpenWrt's are); the opkg list
  (Packages.gz: a src/gz feed's list is the file opkg checks) with a usign key in
  /etc/opkg/keys. The ROM has no packages installed.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pytest

from mtd import FlashType, Geometry, SimFlash
from snapshot import reboot
from openwrt_tools import tool

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20

#: OpenWrt's PATH (/etc/profile), the only variable apk gives its commit hooks.
ROUTER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ROUTER_ENV = {"PATH": ROUTER_PATH, "HOME": "/root"}
#: Where the router sees the harness's own directories (see the module doc).
HOST, SANDBOX = "/.host", "/.sandbox"
#: Nothing listens on it in the namespace's loopback: a feed there cannot be reached.
UNREACHABLE_PORT = 9
#: Where the namespace serves the feeds.
FEED_PORT = 80
#: Directories the squashfs makes for itself; the host tree is borrowed below them only.
ROUTER_DIRS = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "usr/lib", "usr/share", "lib",
               "etc", "root", "dev", "proc", "sys", "tmp", "var", "rom", "overlay", "mnt",
               "volatile", HOST[1:], SANDBOX[1:]}
#: What OpenWrt's /etc/init.d/boot makes in /tmp (/var is a link to it).
BOOT_DIRS = ("lock", "log", "run", "state", "tmp", ".uci")
MULTIARCH = "x86_64-linux-gnu"
#: The router's flash unless a test gives another: 16 MiB of NAND, 128 KiB erase blocks.
FLASH = Geometry(FlashType.NAND, 16 * MIB, 128 * 1024, 2048, 64)


# -- the packages -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Package:
    """One version of a package, in both package managers' terms. `postinst` is a shell body
    run after install and after upgrade (OpenWrt builds both apk scripts from it)."""
    name: str
    release: int                                  # 1 or 2
    files: Mapping[str, str]                      # absolute path -> content
    depends: tuple[str, ...] = ()
    postinst: str | None = None

    @property
    def apk_version(self) -> str:
        return f"{self.release}.0-r0"

    @property
    def opkg_version(self) -> str:
        return f"{self.release}.0"


def catalogue(release: int) -> list[Package]:
    """Every package at version `release` (1 or 2):
    - mesh-tool: /srv/mesh-tool/bin/mesh-tool and VERSION; its postinst writes
      /srv/mesh-tool/configured (proof that scripts run, and where);
    - mesh-conf: a configuration file /etc/mesh-conf/mesh.conf; depends on lib-extra;
    - lib-extra: /srv/lib-extra/lib.txt;
    - mesh-agent: /srv/mesh-agent/VERSION; its version 2 postinst exits 3."""
    r = release
    return [
        Package("mesh-tool", r, {"/srv/mesh-tool/bin/mesh-tool": f"#!/bin/sh\necho mesh-tool {r}\n",
                                 "/srv/mesh-tool/VERSION": f"{r}\n"},
                postinst=f'echo "release {r} upgrade=${{PKG_UPGRADE:-0}}" '
                         f'> /srv/mesh-tool/configured'),
        Package("mesh-conf", r, {"/etc/mesh-conf/mesh.conf": f"option release '{r}'\n"},
                depends=("lib-extra",)),
        Package("lib-extra", r, {"/srv/lib-extra/lib.txt": f"lib-extra {r}\n"}),
        Package("mesh-agent", r, {"/srv/mesh-agent/VERSION": f"{r}\n"},
                postinst="exit 3" if r == 2 else "true"),
    ]


def _script(body: str, upgrade: bool) -> str:
    """A maintainer script as OpenWrt's packaging wraps one: skipped under IPKG_NO_SCRIPT,
    PKG_UPGRADE=1 in the apk post-upgrade form."""
    return ("#!/bin/sh\n[ \"${IPKG_NO_SCRIPT}\" = \"1\" ] && exit 0\n"
            + ("export PKG_UPGRADE=1\n" if upgrade else "") + body + "\n")


def _tree(dest: Path, files: Mapping[str, str]) -> Path:
    for path, text in files.items():
        target = dest / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if text.startswith("#!"):
            target.chmod(0o755)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _run(argv: Sequence, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed (exit {done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")
    return done


# -- the feeds ----------------------------------------------------------------------------------

@dataclass
class Feeds:
    """Local repositories for both package managers, built once and shared by routers.

    Names (for Router.use_feeds): "v1" and "v2" (every package at that version, signed),
    "badsig" (version 2, index or list signed by a key the router does not trust),
    "corrupt" (version 2 packages, the index or list is garbage) and "unreachable"."""
    root: Path

    NAMES = ("v1", "v2", "badsig", "corrupt", "unreachable")

    @property
    def apk_key(self) -> Path:
        """The public EC key the router trusts (its /etc/apk/keys)."""
        return self.root / "keys/apk-trusted.pub.pem"

    @property
    def usign_key(self) -> Path:
        """The usign public key the router trusts (its /etc/opkg/keys)."""
        return self.root / "keys/usign-trusted.pub"

    def dir(self, pm: str, name: str) -> Path:
        """The host directory of a feed (http://127.0.0.1/PM/NAME in the router)."""
        return self.root / pm / name

    @classmethod
    def build(cls, root: Path) -> "Feeds":
        feeds = cls(root)
        keys = root / "keys"
        keys.mkdir(parents=True)
        for name in ("trusted", "other"):
            _run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                  "-out", keys / f"apk-{name}.pem"])
            _run(["openssl", "ec", "-in", keys / f"apk-{name}.pem", "-pubout",
                  "-out", keys / f"apk-{name}.pub.pem"])
            _run([tool("usign"), "-G", "-s", keys / f"usign-{name}.sec",
                  "-p", keys / f"usign-{name}.pub", "-c", f"snapshot test key {name}"])
        work = root / "src"
        for release, name, key in ((1, "v1", "trusted"), (2, "v2", "trusted"),
                                   (2, "badsig", "other"), (2, "corrupt", "trusted")):
            packages = catalogue(release)
            feeds._apk_feed(feeds.dir("apk", name), packages, keys / f"apk-{key}.pem",
                            work / f"apk-{name}")
            feeds._opkg_feed(feeds.dir("opkg", name), packages, keys / f"usign-{key}.sec")
        (feeds.dir("apk", "corrupt") / "packages.adb").write_bytes(b"not an index\n" * 40)
        corrupt = feeds.dir("opkg", "corrupt")
        (corrupt / "Packages.gz").write_bytes(b"not a gzip list\n" * 40)
        _usign_list(corrupt, keys / "usign-trusted.sec")
        shutil.rmtree(work)
        return feeds

    @staticmethod
    def _apk_feed(dest: Path, packages: list[Package], key: Path, work: Path) -> None:
        apk = tool("apk")
        dest.mkdir(parents=True)
        for p in packages:
            files = _tree(work / p.name / "files", p.files)
            argv = [apk, "mkpkg", "-I", f"name:{p.name}", "-I", f"version:{p.apk_version}",
                    "-I", "arch:noarch", "-I", "license:MIT",
                    "-I", f"description:{p.name} release {p.release}", "-F", files,
                    "-o", dest / f"{p.name}-{p.apk_version}.apk"]
            if p.depends:
                argv += ["-I", f"depends:{' '.join(p.depends)}"]
            if p.postinst is not None:
                for kind, upgrade in (("post-install", False), ("post-upgrade", True)):
                    script = work / p.name / kind
                    script.write_text(_script(p.postinst, upgrade))
                    script.chmod(0o755)
                    argv += ["-s", f"{kind}:{script}"]
            _run(argv)
        # OpenWrt signs the index, not the packages: mkndx must be told to take them.
        _run([apk, "mkndx", "--allow-untrusted", "--sign-key", key,
              "-o", dest / "packages.adb", *sorted(dest.glob("*.apk"))])

    @staticmethod
    def _opkg_feed(dest: Path, packages: list[Package], key: Path) -> None:
        dest.mkdir(parents=True)
        stanzas = []
        for p in packages:
            control = {"Package": p.name, "Version": p.opkg_version,
                       # opkg crashes on an empty Depends: line: only write a real one.
                       **({"Depends": ", ".join(p.depends)} if p.depends else {}),
                       "License": "MIT", "Section": "utils", "Architecture": "all",
                       "Installed-Size": str(sum(len(t) for t in p.files.values())),
                       "Description": f"{p.name} release {p.release}"}
            members = {"control": "".join(f"{k}: {v}\n" for k, v in control.items())}
            conffiles = [f for f in p.files if f.startswith("/etc/")]
            if conffiles:
                members["conffiles"] = "".join(f"{f}\n" for f in conffiles)
            if p.postinst is not None:
                members["postinst"] = _script(p.postinst, upgrade=False)
            ipk = dest / f"{p.name}_{p.opkg_version}_all.ipk"
            ipk.write_bytes(_targz({"debian-binary": b"2.0\n",
                                    "control.tar.gz": _targz(_as_files(members)),
                                    "data.tar.gz": _targz(_as_files(
                                        {f.lstrip("/"): t for f, t in p.files.items()}))}))
            data = ipk.read_bytes()
            stanzas.append("".join(f"{k}: {v}\n" for k, v in control.items()
                                   if k != "Description")
                           + f"Filename: {ipk.name}\nSize: {len(data)}\n"
                           + f"SHA256sum: {hashlib.sha256(data).hexdigest()}\n"
                           + f"Description: {control['Description']}\n")
        index = "\n".join(stanzas).encode()
        (dest / "Packages").write_bytes(index)
        (dest / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))
        _usign_list(dest, key)

    def apk_list(self, names: Sequence[str]) -> str:
        """/etc/apk/repositories.d/distfeeds.list for these feeds."""
        return "".join(f"{self._url('apk', n)}/packages.adb\n" for n in names)

    def opkg_conf(self, names: Sequence[str]) -> str:
        """/etc/opkg/distfeeds.conf for these feeds (one src/gz line each, named as the feed)."""
        return "".join(f"src/gz {n} {self._url('opkg', n)}\n" for n in names)

    def _url(self, pm: str, name: str) -> str:
        if name not in self.NAMES:
            raise ValueError(f"no feed {name!r}: one of {', '.join(self.NAMES)}")
        if name == "unreachable":
            return f"http://127.0.0.1:{UNREACHABLE_PORT}/{pm}"
        return f"http://127.0.0.1:{FEED_PORT}/{pm}/{name}"


def _usign_list(feed: Path, key: Path) -> None:
    """Sign an opkg feed's list. A src/gz feed's list is the file opkg downloads and checks:
    Packages.gz is what is signed."""
    _run([tool("usign"), "-S", "-m", feed / "Packages.gz", "-s", key,
          "-x", feed / "Packages.sig"])


def _as_files(members: Mapping[str, str | bytes]) -> dict[str, bytes]:
    return {k: v.encode() if isinstance(v, str) else v for k, v in members.items()}


def _targz(members: Mapping[str, bytes]) -> bytes:
    """A tar.gz of `./NAME` entries, root-owned, as opkg-build writes (directories
    included)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({str(Path(n).parents[i]) for n in members
                       for i in range(len(Path(n).parents) - 1)})
        for d in dirs:
            info = tarfile.TarInfo(f"./{d}/")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            executable = data.startswith(b"#!") or name in ("postinst", "preinst", "prerm",
                                                            "postrm")
            info.size, info.mode = len(data), 0o755 if executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# -- the squashfs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rootfs:
    """A router's squashfs: `pm` ("apk" or "opkg") is its package manager."""
    path: Path
    pm: str
    tmp_links: tuple[str, ...] = ()   # names in the router's /tmp that lead to the host's


def _borrowed_paths() -> list[Path]:
    """Host paths the router runs the checkout's Python from."""
    paths = [REPO, Path(sys.prefix), Path(os.path.realpath(sys.executable)),
             Path(os.__file__).parent]
    link = Path(sys.executable)
    for _ in range(40):                   # the venv's python -> python3 -> /usr/bin/... chain
        paths.append(link)
        if not link.is_symlink():
            break
        link = link.parent / os.readlink(link)
    paths += [Path(p) for p in ("/lib64", f"/lib/{MULTIARCH}", f"/usr/lib/{MULTIARCH}",
                                "/etc/ld.so.cache") if os.path.lexists(p)]
    return paths


def _links_to_host() -> tuple[dict[str, str], set[str]]:
    """Squashfs symlinks into /.host for the borrowed paths, and the names under /tmp that
    the router's tmpfs must link at boot. A path wholly made of router directories (a
    Python in /usr itself) cannot be borrowed."""
    links, tmp = {}, set()
    for path in _borrowed_paths():
        parts = path.absolute().parts[1:]
        for depth in range(1, len(parts) + 1):
            rel = "/".join(parts[:depth])
            if parts[0] in ("tmp", "var") and depth == 2:
                if parts[0] == "var":
                    raise AssertionError(f"{path} is under /var, the router's RAM: "
                                         "move the checkout or Python elsewhere")
                tmp.add(parts[1])
                break
            if rel not in ROUTER_DIRS:
                links[rel] = f"{HOST}/{rel}"
                break
        else:
            raise AssertionError(f"{path} lies in directories the router needs for itself")
    # A link below another link is reached through it.
    return {k: v for k, v in links.items()
            if not any(k.startswith(f"{o}/") for o in links)}, tmp


def _launcher(body: str) -> str:
    return f"#!/bin/sh\n{body}\n"


def build_rootfs(work: Path, pm: str, feeds: Feeds,
                 files: Mapping[str, str | Path] | None = None) -> Rootfs:
    """Build a router's squashfs in work for package manager `pm` ("apk" or "opkg"; see the
    module doc), trusting the feeds' keys. `files` adds or replaces router files: path ->
    text (mode 755 if it starts with #!), or a host file copied with its mode (a commit
    hook, a wrapper from the checkout)."""
    if pm not in ("apk", "opkg"):
        raise ValueError(f"pm must be apk or opkg, not {pm!r}")
    tree = work / f"rootfs-{pm}"
    if tree.exists():
        shutil.rmtree(tree)
    for d in ROUTER_DIRS - {"var"}:
        (tree / d).mkdir(parents=True, exist_ok=True)

    def put(rel: str, content: str | Path, mode: int = 0o644) -> None:
        target = tree / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if isinstance(content, Path):
            shutil.copy2(content, target)
        else:
            target.write_text(content)
            target.chmod(mode)

    def link(rel: str, to: str) -> None:
        target = tree / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(to)

    busybox = shutil.which("busybox") or "/bin/busybox"
    put("bin/busybox", Path(busybox), 0o755)
    applets = _run([busybox, "--list-full"]).stdout.split()
    for applet in applets:
        if applet.split("/")[0] in ("bin", "sbin") or applet.startswith(("usr/bin/",
                                                                         "usr/sbin/")):
            if applet not in ("bin/busybox", "sbin/init"):
                link(applet, "/bin/busybox")
    config = (REPO / "initscripts/etc/config/snapshot").read_text()
    put("etc/config/snapshot", config.replace("option device ''",
                                              f"option device '{SANDBOX}/flash.img'", 1))
    if f"{SANDBOX}/flash.img" not in (tree / "etc/config/snapshot").read_text():
        raise AssertionError("initscripts/etc/config/snapshot has no `option device ''`")
    put("etc/config/system", "config system\n\toption hostname 'OpenWrt'\n")
    put("etc/banner", "OpenWrt (sandbox router)\n")
    put("etc/passwd", "root:x:0:0:root:/root:/bin/ash\n")
    put("etc/group", "root:x:0:\n")
    put("sbin/snapshot", _launcher(f'exec {sys.executable} -P -m snapshot "$@"'), 0o755)
    link("sbin/uci", f"{HOST}{tool('uci')}")
    if pm == "apk":
        (tree / "etc/apk/keys").mkdir(parents=True)
        shutil.copy(feeds.apk_key, tree / "etc/apk/keys/snapshot-test.pem")
        _run([tool("apk"), "--root", tree, "add", "--initdb", "--no-cache"])
        shutil.rmtree(tree / "var")       # initdb's log and cache dirs: /var is RAM
        (tree / "etc/apk/commit_hooks.d").mkdir()
        link("etc/apk/repositories.d/distfeeds.list", f"{SANDBOX}/apk-feeds.list")
        link("usr/bin/apk", f"{HOST}{tool('apk')}")
    else:
        put("etc/opkg.conf", textwrap.dedent("""\
            dest root /
            dest ram /tmp
            lists_dir ext /var/opkg-lists
            option overlay_root /overlay
            option check_signature
            arch all 1
            arch noarch 1
            arch x86_64 10
            """))
        link("etc/opkg/distfeeds.conf", f"{SANDBOX}/opkg-feeds.conf")
        fingerprint = _run([tool("usign"), "-F", "-p", feeds.usign_key]).stdout.strip()
        put(f"etc/opkg/keys/{fingerprint}", feeds.usign_key)
        put("usr/lib/opkg/status", "")
        (tree / "usr/lib/opkg/info").mkdir()
        link("bin/opkg", f"{HOST}{tool('opkg')}")
        link("usr/bin/usign", f"{HOST}{tool('usign')}")
        put("usr/sbin/opkg-key", _launcher(
            '[ "$1" = verify ] || { echo "usage: opkg-key verify SIG FILE" >&2; exit 1; }\n'
            'exec usign -q -V -P /etc/opkg/keys -x "$2" -m "$3"'), 0o755)
    link("var", "tmp")
    links, tmp = _links_to_host()
    for rel, to in links.items():
        link(rel, to)
    for rel, content in (files or {}).items():
        put(rel.lstrip("/"), content, 0o755 if str(content).startswith("#!") else 0o644)
    dest = work / f"{pm}.sqfs"
    _run(["mksquashfs", tree, dest, "-noappend", "-quiet", "-all-root"])
    return Rootfs(dest, pm, tuple(sorted(tmp)))


# -- the router and its boots -------------------------------------------------------------------

@dataclass
class Done:
    """A command's result inside the router."""
    rc: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


class Router:
    """A sandbox router: its squashfs, its flash image (`flash`, formatted by the CLI; it
    persists across boots) and its feed list (`use`: Feeds.NAMES). One boot at a time."""

    def __init__(self, work: Path, rootfs: Rootfs, feeds: Feeds, use: Sequence[str] = ("v1",),
                 flash: Geometry = FLASH):
        self.work, self.rootfs, self.feeds = work, rootfs, feeds
        self.world = work / "sandbox"          # the router's /.sandbox
        self.world.mkdir(parents=True)
        self.image = self.world / "flash.img"
        SimFlash.create(self.image, flash)
        _run([sys.executable, "-m", "snapshot", "--device", self.image, "format"], cwd=REPO)
        self.use_feeds(*use)
        self.booted: Booted | None = None
        self.boots = 0

    @property
    def pm(self) -> str:
        return self.rootfs.pm

    def use_feeds(self, *names: str) -> None:
        """Point the router's feed list at these feeds (Feeds.NAMES), now and in later
        boots: the list lives outside the router's layers."""
        (self.world / "apk-feeds.list").write_text(self.feeds.apk_list(names))
        (self.world / "opkg-feeds.conf").write_text(self.feeds.opkg_conf(names))

    def boot(self, ram: int | None = None) -> "Booted":
        """Boot from the flash image. `ram` limits the volatile layer's tmpfs to that many
        bytes (a router short of RAM)."""
        if self.booted is not None:
            raise AssertionError("the router is running: reboot() it")
        self.boots += 1
        (self.world / "reboot").unlink(missing_ok=True)
        self.booted = Booted(self, self.work / f"boot{self.boots}", ram)
        return self.booted

    def reboot(self, ram: int | None = None) -> "Booted":
        """Power off (the namespace ends: RAM and mounts are gone) and boot again."""
        self.shutdown()
        return self.boot(ram)

    def shutdown(self) -> None:
        if self.booted is not None:
            self.booted.close()
            self.booted = None

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


class Booted:
    """One boot: a namespace whose driver (this file, run as a script) mounted the router
    and runs commands chrooted into it."""

    def __init__(self, router: Router, work: Path, ram: int | None):
        work.mkdir()
        self.router, self.work = router, work
        self.target = work / "root"
        spec = {"squashfs": str(router.rootfs.path), "image": str(router.image),
                "sandbox": str(router.world), "feeds": str(router.feeds.root),
                "work": str(work), "ram": ram, "tmp_links": list(router.rootfs.tmp_links)}
        self._stderr = open(work / "driver.log", "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--net", "--propagation", "private",
             sys.executable, __file__, json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            cwd=REPO, start_new_session=True)
        booted = self._reply(timeout=120)
        self.rc: int = booted["rc"]
        self.log: str = booted["log"]

    def _reply(self, timeout: float) -> dict:
        result: list = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            self.kill()
            raise AssertionError(f"the sandbox driver did not answer: "
                                 f"{(self.work / 'driver.log').read_text()[-3000:]}")
        return json.loads(result[0])

    def _ask(self, request: dict, timeout: float) -> dict:
        if self.proc.poll() is not None:
            raise AssertionError("the router is not running")
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout + 10)

    def run(self, command: str | Sequence[str], *, input: str | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 120) -> Done:
        """Run a command in the router's root (a string goes to /bin/sh -c), as root, with
        the router's PATH and HOME and cwd /, plus `env`."""
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        answer = self._ask({"op": "run", "argv": argv, "input": input,
                            "env": {**ROUTER_ENV, **(env or {})}, "timeout": timeout},
                           timeout)
        return Done(answer["rc"], answer["out"], answer["err"])

    def snapshot(self, *args: str, timeout: float = 120) -> Done:
        """The router's /sbin/snapshot."""
        return self.run(["/sbin/snapshot", *args], timeout=timeout)

    def syslog(self) -> list[str]:
        """The messages written to the router's /dev/log so far, as received."""
        return self._ask({"op": "syslog"}, 10)["lines"]

    def path(self, path: str) -> Path:
        """The router's `path` as the host reaches it (through the namespace's root). The
        router's absolute symlinks do not resolve from here: read such paths with run()."""
        return Path(f"/proc/{self.proc.pid}/root") / str(self.target).lstrip("/") / \
            path.lstrip("/")

    def read(self, path: str) -> str:
        return self.path(path).read_text()

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def volatile(self) -> list[str]:
        """Everything in /volatile/upper (the unsaved changes, in RAM), sorted."""
        upper = self.path("/volatile/upper")
        return sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))

    def mounts(self) -> dict[str, str]:
        """The router's mount points (as the router names them) and their filesystem types."""
        inside = {}
        for line in Path(f"/proc/{self.proc.pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            point, fstype = fields[4], fields[fields.index("-") + 1]
            if point == str(self.target) or point.startswith(f"{self.target}/"):
                inside[point[len(str(self.target)):] or "/"] = fstype
        return inside

    @property
    def reboot_requested(self) -> bool:
        """Whether something in the router ran reboot (or halt, poweroff)."""
        return (self.router.world / "reboot").exists()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- inside the namespace -----------------------------------------------------------------------

def _mount(*argv: str) -> None:
    subprocess.run(["mount", "-n", *argv], check=True, capture_output=True, text=True)


def _dev(target: Path, log: list[str], rom: int) -> socket.socket:
    """A router's small /dev, with the node of the block device its squashfs is mounted
    from (`rom`, as os.stat gives st_dev: a router's /dev has its rootfs device), and its
    /dev/log read into `log`."""
    dev = target / "dev"
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid", "tmpfs", str(dev))
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                               ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod(dev / name, 0o666 | 0o020000, os.makedev(major, minor))
    block = f"{os.major(rom)}:{os.minor(rom)}"
    uevent = Path(f"/sys/dev/block/{block}/uevent").read_text().splitlines()
    name = next(line.partition("=")[2] for line in uevent if line.startswith("DEVNAME="))
    os.mknod(dev / name, 0o600 | 0o060000, rom)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        (dev / name).symlink_to(to)
    (dev / "shm").mkdir(mode=0o1777)
    # Pseudo-terminals, as procd mounts them: dropbear gives an SSH session one when asked.
    (dev / "pts").mkdir()
    _mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts",
           str(dev / "pts"))
    (dev / "ptmx").symlink_to("pts/ptmx")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dev / "log"))
    os.chmod(dev / "log", 0o666)

    def read() -> None:
        while True:
            try:
                log.append(sock.recv(65536).decode(errors="replace").rstrip("\n\0"))
            except OSError:
                return
    threading.Thread(target=read, daemon=True).start()
    return sock


def _serve(root: Path) -> None:
    """The feeds over HTTP on the namespace's loopback, as a router fetches its feeds."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", FEED_PORT), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()


def _note(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(f"{line}\n")


def _namespace_main(spec: dict) -> None:
    """Boot the router in this namespace (we are PID 1 of its PID namespace), then answer
    one JSON request per stdin line with one JSON line on stdout."""
    work, sandbox = Path(spec["work"]), Path(spec["sandbox"])
    squashfs, target = work / "squashfs", work / "root"
    squashfs.mkdir()
    _mount("-o", "loop,ro", spec["squashfs"], str(squashfs))
    booted = subprocess.run([sys.executable, "-m", "snapshot", "--device", spec["image"],
                             "mount", "--root", str(squashfs), "--target", str(target)],
                            capture_output=True, text=True, cwd=REPO,
                            env={**os.environ,
                                 "SNAPSHOT_CONFIG": str(squashfs / "etc/config/snapshot")})
    log: list[str] = []
    if booted.returncode == 0:
        _mount("--bind", "/", str(target / HOST[1:]))
        _mount("-o", "remount,bind,ro", str(target / HOST[1:]))
        _mount("--bind", str(sandbox), str(target / SANDBOX[1:]))
        _mount("-t", "proc", "proc", str(target / "proc"))
        _mount("-t", "sysfs", "sysfs", str(target / "sys"))
        _dev(target, log, os.stat(squashfs).st_dev)
        _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(target / "tmp"))
        for name in BOOT_DIRS:
            (target / "tmp" / name).mkdir(exist_ok=True)
        # What preinit's `snapshot mount` notes in /tmp, so that a command storing a change
        # reboots into it (snapshot/reboot.py); the sandbox form notes nothing, and the
        # router's /tmp is made after it.
        with SimFlash(spec["image"]) as flash:
            reboot.record(flash, target / reboot.BOOTED.lstrip("/"))
        for name in spec["tmp_links"]:
            (target / "tmp" / name).symlink_to(f"{HOST}/tmp/{name}")
        if spec["ram"]:
            _mount("-o", f"remount,size={spec['ram']}", str(target / "volatile"))
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        _serve(Path(spec["feeds"]))
    # What busybox's reboot, halt and poweroff send to init (procd on the router).
    for signum, name in ((signal.SIGTERM, "reboot"), (signal.SIGUSR1, "halt"),
                         (signal.SIGUSR2, "poweroff")):
        signal.signal(signum, lambda _signum, _frame, name=name: _note(sandbox / "reboot",
                                                                        name))
    print(json.dumps({"rc": booted.returncode, "log": booted.stderr}), flush=True)

    def enter() -> None:
        os.chroot(target)
        os.chdir("/")

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "exit":
            break
        if request["op"] == "syslog":
            answer = {"lines": list(log)}
        else:
            try:
                done = subprocess.run(request["argv"], input=request["input"],
                                      capture_output=True, text=True, env=request["env"],
                                      preexec_fn=enter, timeout=request["timeout"],
                                      errors="replace")
                answer = {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
            except subprocess.TimeoutExpired as e:
                answer = {"rc": -9, "out": str(e.stdout or ""),
                          "err": f"{e.stderr or ''}timed out after {request['timeout']}s"}
            except OSError as e:
                answer = {"rc": 127, "out": "", "err": f"{request['argv'][0]}: {e}"}
        print(json.dumps(answer), flush=True)


# -- fixtures -----------------------------------------------------------------------------------

def _tier2() -> None:
    from conftest import cannot_run
    from test_overlayfs import mounts_unavailable
    reason = mounts_unavailable()
    if reason:
        cannot_run(f"tier 2 cannot run: {reason}")


@pytest.fixture(scope="module")
def sandbox_feeds(tmp_path_factory) -> Feeds:
    """The local feeds, built once per test module (the first fixture of tier 2 here)."""
    _tier2()
    return Feeds.build(tmp_path_factory.mktemp("feeds"))


@pytest.fixture(scope="module")
def apk_rootfs(tmp_path_factory, sandbox_feeds) -> Rootfs:
    """An apk router's squashfs, built once per test module."""
    return build_rootfs(tmp_path_factory.mktemp("apk-rootfs"), "apk", sandbox_feeds)


@pytest.fixture(scope="module")
def opkg_rootfs(tmp_path_factory, sandbox_feeds) -> Rootfs:
    """An opkg router's squashfs, built once per test module."""
    return build_rootfs(tmp_path_factory.mktemp("opkg-rootfs"), "opkg", sandbox_feeds)


@pytest.fixture
def apk_router(tmp_path, apk_rootfs, sandbox_feeds):
    """A router on apk, its feed list at v1, not booted yet; shut down after the test."""
    with Router(tmp_path / "router", apk_rootfs, sandbox_feeds) as router:
        yield router


@pytest.fixture
def opkg_router(tmp_path, opkg_rootfs, sandbox_feeds):
    """A router on opkg, its feed list at v1, not booted yet; shut down after the test."""
    with Router(tmp_path / "router", opkg_rootfs, sandbox_feeds) as router:
        yield router


if __name__ == "__main__":
    _namespace_main(json.loads(sys.argv[1]))
