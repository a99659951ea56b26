"""The router's life after preinit, in the kernel-tier boot tests: /sbin/init of the test
squashfs runs it once preinit has mounted the root (`snapshot mount` has pivoted into the
merged root, or the stock mount_root into a RAM overlay).

It follows the plan in KBOOT_PLAN (JSON: a list of steps) and prints, for every `report`
step, one line `KBOOT-STATE <label> <json>` on stdout for the host: the chain (as `snapshot
list --json` reads it; null if the flash holds none), the mounts, and every file of the
merged root with its type, mode and content hash.

Steps:
    {"op": "report", "label": L}
    {"op": "write", "path": P, "text": T}          a file in the merged root (optional
                                                   "mode": M, an int, chmod'ed after)
    {"op": "symlink", "path": P, "target": T}      a symlink in the merged root
    {"op": "tree", "path": P, "files": N, "size": S} N files of S random bytes under P
    {"op": "delete", "path": P}                    rm -rf in the merged root, if there
    {"op": "snapshot", "args": [...]}              run the CLI; stop the plan if it fails
    {"op": "cut", "args": [...]}                   run the CLI for the host to kill (below;
                                                   optional "env": {...} for synced_cli.py)
    {"op": "sh", "script": S}                      run a shell script (its output in this
                                                   boot's); stop the plan if it fails
    {"op": "final", "args": [...]}                 run the CLI, its output in this boot's:
                                                   for a command that ends the boot (the
                                                   RAM stage of `convert` reboots)

`cut` writes `kboot-cut: start` on the serial console (the host watches console.log), runs
the command through synced_cli.py (each flash operation durable when it returns, as on real
flash) with stderr on the console, which is a terminal, so the CLI's progress line shows
every erase block it has written, and then writes `kboot-cut: done rc=N`. A `snapshot` that
runs through synced_cli.py comes first on its PATH, so the CLI a script of the command runs
(convert's RAM stage) is synced as well.
"""
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from snapshot import overview
from snapshot.errors import NoChain
from snapshot.store.chain import Chain, opened

#: guest.sh says which: the MTD partition, or the UBI volume.
DEVICE = os.environ.get("KBOOT_DEVICE", "mtd:rootfs_data")
SYNCED_CLI = Path(__file__).resolve().with_name("synced_cli.py")
CONSOLE = "/dev/ttyS0"
#: Top-level directories of the merged root that are not the router's files: mount points,
#: kernel filesystems, and the host tree the test squashfs borrows.
NOT_FILES = {"proc", "sys", "dev", "tmp", "rom", "overlay", "volatile", "mnt", ".host"}


def say(line: str) -> None:
    print(line, flush=True)


def manifest(top: Path, skip=frozenset()) -> dict[str, str]:
    """Path -> type, mode and content of everything under top (symlinks not followed)."""
    found = {}
    for directory, dirs, files in os.walk(top):
        here = Path(directory)
        if here == top:
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        for name in dirs + files:
            path = here / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            mode = f"{stat.S_IMODE(st.st_mode):o}"
            if stat.S_ISLNK(st.st_mode):
                found[rel] = f"l {os.readlink(path)}"
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = f"d {mode}"
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha1(path.read_bytes()).hexdigest()
                found[rel] = f"f {mode} {st.st_size} {digest}"
            elif stat.S_ISCHR(st.st_mode):
                found[rel] = f"c {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            else:
                found[rel] = f"? {st.st_mode:o}"
    return found


def mounts() -> dict[str, str]:
    """Mount point -> filesystem type, the last mount on each point winning."""
    table = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            source, point, fstype = line.split()[:3]
            table[point] = fstype
    return {p: table.get(p) for p in ("/", "/rom", "/overlay", "/volatile", "/tmp")}


def chain_state() -> dict | None:
    """The chain as `snapshot list --json` shows it (None: the flash holds no chain)."""
    try:
        with opened(DEVICE) as flash:
            info = overview.listing(Chain(flash))
    except NoChain:
        return None
    def shown(record: dict, keys) -> dict:
        # Whether the payload was read since boot is not part of the state: damage is.
        damaged = record["integrity"].startswith("damaged")
        return {**{k: record[k] for k in keys},
                "integrity": record["integrity"] if damaged else "ok"}
    return {
        "snapshots": [shown(s, ("seq", "size", "message", "state")) for s in info["snapshots"]],
        "volatile": (None if info["volatile"] is None else
                     shown(info["volatile"], ("size", "state"))),
    }


def upper(path: str) -> list[str]:
    return sorted(manifest(Path(path))) if os.path.isdir(path) else []


def report(label: str) -> None:
    chain = chain_state()
    state = {
        "chain": chain,
        "mounts": mounts(),
        "view": manifest(Path("/"), NOT_FILES),
        "volatile_upper": upper("/volatile/upper"),
        "overlay_upper": upper("/overlay/upper"),
    }
    say(f"KBOOT-STATE {label} {json.dumps(state, sort_keys=True)}")


def synced_path() -> dict[str, str]:
    """The environment with a synced `snapshot` first on PATH. It lives in /tmp, which the
    RAM stage takes along onto the squashfs."""
    bin_dir = Path("/tmp/kboot-synced")
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "snapshot"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} '
                       f'{shlex.quote(str(SYNCED_CLI))} "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def run(step: dict) -> bool:
    op = step["op"]
    if op == "report":
        report(step["label"])
    elif op == "write":
        path = Path(step["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(step["text"])
        if "mode" in step:
            path.chmod(step["mode"])
    elif op == "symlink":
        path = Path(step["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(step["target"])
    elif op == "tree":
        top = Path(step["path"])
        top.mkdir(parents=True, exist_ok=True)
        for i in range(step["files"]):
            (top / f"f{i:03d}").write_bytes(os.urandom(step["size"]))
    elif op == "delete":
        path = Path(step["path"])
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    elif op == "snapshot":
        done = subprocess.run(["snapshot", *step["args"]], capture_output=True, text=True)
        say(f"kboot: snapshot {' '.join(step['args'])}: rc={done.returncode} "
            f"{(done.stdout + done.stderr).strip()}")
        return done.returncode == 0
    elif op == "cut":
        with open(CONSOLE, "w") as console:
            console.write("kboot-cut: start\n")
            console.flush()
            done = subprocess.run([sys.executable, str(SYNCED_CLI), *step["args"]],
                                  stdout=subprocess.PIPE, stderr=console, text=True,
                                  env={**synced_path(), **step.get("env", {})})
            console.write(f"\nkboot-cut: done rc={done.returncode}\n")
        say(f"kboot: cut {' '.join(step['args'])}: rc={done.returncode} {done.stdout.strip()}")
        return done.returncode == 0
    elif op == "sh":
        done = subprocess.run(["/bin/sh", "-c", step["script"]], capture_output=True, text=True)
        say(f"kboot: sh: rc={done.returncode} {(done.stdout + done.stderr).strip()}")
        return done.returncode == 0
    elif op == "final":
        say(f"kboot: final snapshot {' '.join(step['args'])}")
        done = subprocess.run(["snapshot", *step["args"]])
        say(f"kboot: final snapshot {' '.join(step['args'])}: rc={done.returncode}")
        return done.returncode == 0
    else:
        raise ValueError(f"unknown step {step!r}")
    return True


def main() -> int:
    plan = json.loads(os.environ.get("KBOOT_PLAN", "[]"))
    for step in plan:
        if not run(step):
            say("kboot: plan stopped")
            return 1
    say("kboot: plan done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
