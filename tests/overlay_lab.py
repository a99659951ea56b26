"""Real overlayfs round trips, run as root inside a private mount namespace:

    unshare -m --propagation private python tests/overlay_lab.py SPEC.json

For each step of SPEC, it mounts the layers boot would (a lower tree standing in for the
squashfs, an overlay whose upper dir holds snapshots 1..k-1 unpacked by `snapshot unpack`, and
an overlay on top with an empty volatile upper dir), makes the step's changes in the merged
view and pushes the volatile upper dir as snapshot k. Then, in a fresh namespace, it unpacks
snapshots 1..k into a new upper dir, mounts lower + that, and compares the merged view with
the one before the push, in full. With "squash" in SPEC, it then squashes the chain and
compares the last step's view again. Prints a JSON report. Every mount dies with its namespace.
"""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

LOWER_FILES = {
    "etc/config/network": "config interface 'lan'\n",
    "etc/config/system": "config system\n\toption hostname 'OpenWrt'\n",
    "etc/config/firewall": "config defaults\n",
    "etc/banner": "welcome\n",
    "usr/share/doc/pkg/README": "docs\n",
    "usr/share/doc/pkg/NEWS": "news\n",
    "usr/lib/lua/luci.lua": "return {}\n",
    "www/index.html": "<html></html>\n",
    "bin/tool": "#!/bin/sh\necho tool\n",
}


def make_lower(root: Path) -> None:
    for name, text in LOWER_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    os.chmod(root / "bin/tool", 0o755)
    (root / "etc/rc.d").mkdir()
    (root / "etc/rc.d/S10boot").symlink_to("../init.d/boot")
    # Fixed times: the verifying namespace builds its own copy, which must look the same.
    for path in root.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)


def mount(fstype: str, target: Path, options: str = "", source: str = "none") -> None:
    target.mkdir(parents=True, exist_ok=True)
    args = ["mount", "-t", fstype] + (["-o", options] if options else []) + [source, str(target)]
    subprocess.run(args, check=True)


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True)


def overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    mount("overlay", target, f"lowerdir={lower},upperdir={upper},workdir={work}", "overlay")


def view(root: Path, uppers: list[Path]) -> dict:
    """Everything a user sees below root: paths, types, modes, owners, xattrs, symlink
    targets, file contents and mtimes, and which paths are hardlinks of each other.

    overlayfs reports a copied-up file under its lower inode number, so hardlinks are found
    in the upper dirs (`uppers`, top first) that provide each file, not by st_ino."""
    entries, inodes = {}, {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            entry = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                     "xattrs": {k: os.getxattr(path, k, follow_symlinks=False).hex()
                                for k in sorted(os.listxattr(path, follow_symlinks=False))}}
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                entry["mtime"] = int(st.st_mtime)
                if st.st_nlink > 1:
                    inodes.setdefault(_real_inode(rel, uppers), []).append(rel)
            entries[rel] = entry
    groups = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return {"entries": entries, "hardlinks": groups}


def _real_inode(rel: str, uppers: list[Path]) -> tuple:
    for layer, upper in enumerate(uppers):
        try:
            st = (upper / rel).lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            return layer, st.st_ino
    return "lower", rel


def change(root: Path, op: list) -> None:
    """One change in the merged view, as a user's shell would make it."""
    kind, *args = op
    path = root / args[0]
    if kind == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(args[1])
    elif kind == "append":
        with open(path, "a") as f:
            f.write(args[1])
    elif kind == "chmod":
        os.chmod(path, args[1])   # as chmod(1): through a symlink
    elif kind == "chown":
        os.chown(path, args[1], args[2], follow_symlinks=False)
    elif kind == "rm":
        path.unlink()
    elif kind == "rmtree":
        shutil.rmtree(path)
    elif kind == "mkdir":
        path.mkdir(parents=True)
    elif kind == "rename":
        # mv: rename(2), or copy and delete where overlayfs answers EXDEV (lower dirs).
        shutil.move(str(path), str(root / args[1]))
    elif kind == "setxattr":
        os.setxattr(path, args[1], args[2].encode(), follow_symlinks=False)
    elif kind == "link":
        os.link(path, root / args[1])
    elif kind == "symlink":
        os.symlink(args[1], path)
    elif kind == "mkfifo":
        os.mkfifo(path)
    else:
        raise ValueError(f"unknown change {kind}")


def snapshot(image: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "snapshot", "--device", image, *args], check=True,
                   capture_output=True, text=True)


def first_difference(expected: dict, actual: dict) -> str:
    for key in sorted(set(expected["entries"]) | set(actual["entries"])):
        a, b = expected["entries"].get(key), actual["entries"].get(key)
        if a != b:
            return f"{key}: before push {a}, after restore {b}"
    return f"hardlink groups: before push {expected['hardlinks']}, after {actual['hardlinks']}"


def verify(spec: dict, k: int, expected_file: Path) -> None:
    """In a fresh namespace: unpack snapshots 1..k into a new upper dir, mount the lower
    tree + that, and compare with the view recorded before the push."""
    base = Path(spec["work"]) / f"verify{k}"
    mount("tmpfs", base)
    lower, fresh, again = base / "lower", base / "upper", base / "merged"
    make_lower(lower)
    snapshot(spec["image"], "unpack", "--to", str(fresh), "--rom", str(lower))
    overlay(lower, fresh, base / "work", again)
    actual = view(again, [fresh])
    expected = json.loads(expected_file.read_text())
    result = {"ok": actual == expected}
    if actual != expected:
        result["difference"] = f"step {k}: {first_difference(expected, actual)}"
    print(json.dumps(result))


def main() -> None:
    spec_file = Path(sys.argv[1])
    spec = json.loads(spec_file.read_text())
    if len(sys.argv) > 2:
        verify(spec, int(sys.argv[2]), Path(sys.argv[3]))
        return
    image, base = spec["image"], Path(spec["work"])
    mount("tmpfs", base)
    lower = base / "lower"
    make_lower(lower)
    report = {"steps": 0, "ok": True}
    for k, ops in enumerate(spec["steps"], start=1):
        upper, merged, top = base / f"u{k}", base / f"m{k}", base / f"t{k}"
        snapshot(image, "unpack", "--to", str(upper), "--rom", str(lower))
        overlay(lower, upper, base / f"w{k}", merged)
        overlay(merged, base / f"v{k}", base / f"vw{k}", top)
        for op in ops:
            try:
                change(top, op)
            except OSError:
                pass   # generated changes may not apply (a path already gone)
        expected = spec_file.with_name(f"expected{k}.json")
        expected.write_text(json.dumps(view(top, [base / f"v{k}", upper])))
        snapshot(image, "push", "--from", str(base / f"v{k}"), "-m", f"step {k}")
        umount(top)
        umount(merged)
        result = checked(spec_file, k, expected)
        report["steps"] = k
        if not result["ok"]:
            report.update(ok=False, difference=result["difference"])
            break
    if report["ok"] and spec.get("squash"):
        snapshot(image, "squash")
        result = checked(spec_file, report["steps"], expected)
        if not result["ok"]:
            report.update(ok=False, difference=f"after squash: {result['difference']}")
    print(json.dumps(report))


def checked(spec_file: Path, k: int, expected: Path) -> dict:
    """verify() in a fresh namespace."""
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                           __file__, str(spec_file), str(k), str(expected)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


if __name__ == "__main__":
    main()
