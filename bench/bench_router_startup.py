"""bench_startup.py's measurement on the real router: the mipsel root of the router tier
(scripts/build-router.sh ARCH=mipsel, booted by tests/router_vm.py under qemu-system-mipsel's
malta, TCG), where everything is as a router has it:
- the package installed by the feed Makefile's recipes, as sourceless bytecode in
  /usr/lib/python3.11/site-packages, and /sbin/snapshot the launcher;
- Python reduced to OpenWrt's python3-light and the package's DEPENDS, with no Debian
  sitecustomize (bench_mipsel.py's guest runs Debian's whole python3.11, whose
  sitecustomize loads apport's hook into every start, baseline included);
- `list` reads rootfs_data, the MTD partition, through /dev/mtdN.

The router boots once on erased flash (jffs2), converts, and boots the chain: `list` then
shows one snapshot (the converted jffs2) rather than none. In that boot, interleaved rounds
of `python3 -c pass`, `snapshot list`, `snapshot status` and the rpcd plugin's `call status`
(what LuCI runs every few seconds), each timed in CPU (user +
system) by the guest's own accounting (os.times of the children), medians; then the peak
RSS of each, and one `list` under -X importtime, whose heaviest imports are printed.
Targets (the lean issue's): list / pass <= 1.5, list's peak RSS <= 14 MiB.

TCG's absolute times are not a router's; the ratios are what matter.
Needs root (the root's build). Run: .venv/bin/python bench/bench_router_startup.py
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router_boot import convert, reboot, settled  # noqa: E402
from measure import verdict  # noqa: E402
from router_vm import Router, build_root, erased_flash  # noqa: E402

ROUNDS = 15
MIB = 1 << 20
COMMANDS = {"pass": "python3 -c pass", "list": "snapshot list", "status": "snapshot status",
            # What LuCI pays every few seconds: rpcd's plugin answering `status`.
            "rpcd": "echo {} | /usr/libexec/rpcd/snapshot call status"}

#: Run in the guest: the rounds, then each command's peak RSS; one JSON line.
MEASURE = """\
import json, os, resource, subprocess, sys
# No statistics module: the router's Python has no decimal, which it imports.
median = lambda values: sorted(values)[len(values) // 2]
commands = json.loads(sys.argv[1])
cpu = {name: [] for name in commands}
for _ in range(int(sys.argv[2])):
    for name, command in commands.items():
        before = os.times()
        subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
        after = os.times()
        cpu[name].append(after.children_user + after.children_system
                         - before.children_user - before.children_system)
rss = {}
for name, command in commands.items():
    rss[name] = subprocess.run([sys.executable, "-c", "import resource, subprocess, sys; "
                                "subprocess.run(sys.argv[1], shell=True, check=True, "
                                "stdout=subprocess.DEVNULL); print(resource.getrusage("
                                "resource.RUSAGE_CHILDREN).ru_maxrss)", command],
                               check=True, capture_output=True, text=True).stdout.strip()
print(json.dumps({"cpu": {name: median(v) for name, v in cpu.items()},
                  "rss": {name: int(kib) * 1024 for name, kib in rss.items()}}))
"""


def heaviest_imports(router: Router, count: int = 8) -> str:
    """The imports of one `list` that cost most, self time, under -X importtime."""
    lines = router.check("python3 -X importtime /sbin/snapshot list 2>&1 >/dev/null | "
                         "grep '^import time:' | grep -v 'self \\[us\\]'", 300).splitlines()
    rows = sorted(((int(line.split("|")[0].split(":")[1]), line.split("|")[2].strip())
                   for line in lines), reverse=True)
    total = sum(us for us, _ in rows)
    shown = ", ".join(f"{name} {us / 1000:.0f}" for us, name in rows[:count])
    return f"{len(rows)} imports, {total / 1000:.0f} ms in all; heaviest (ms): {shown}"


def main() -> None:
    root = build_root("mipsel")
    with tempfile.TemporaryDirectory(prefix="bench-router-startup-") as tmp:
        work = Path(tmp)
        flash = erased_flash(work / "flash.img")
        convert(root, flash, work / "console-first.log")
        with Router(root, flash, work / "console-chain.log") as router:
            settled(router)
            router.write_file(MEASURE.encode(), "/tmp/measure.py")
            line = router.check(f"python3 /tmp/measure.py '{json.dumps(COMMANDS)}' {ROUNDS}",
                                ROUNDS * 120)
            imports = heaviest_imports(router)
            reboot(router)
    result = json.loads(line)
    cpu, rss = result["cpu"], result["rss"]
    base = cpu["pass"]
    ratio = cpu["list"] / base
    print(f"real mipsel router ({ROUNDS} rounds, CPU medians): python3 -c pass "
          f"{base * 1000:.0f} ms; snapshot status {cpu['status'] / base:.2f}x; the rpcd "
          f"plugin's status (LuCI's poll) {cpu['rpcd'] / base:.2f}x")
    print(f"real mipsel router: snapshot list / python3 -c pass: ratio {ratio:.2f} "
          f"{verdict(ratio, 1.5)}")
    print(f"real mipsel router: peak RSS: python3 -c pass {rss['pass'] / MIB:.1f} MiB, "
          f"snapshot list {rss['list'] / MIB:.1f} MiB {verdict(rss['list'] / MIB, 14)}")
    print(f"real mipsel router: list's {imports}")


if __name__ == "__main__":
    main()
