"""Start-up of a short command, measured side by side in one run, on one CPU:

1. CPU time of `snapshot list` on an empty chain against `python3 -c pass`. Target: <= 1.5.
2. Peak RSS of that `list`. Target: <= 14 MiB.

On a router's 400-1000 MHz core, where CPython runs 15-30 times slower than here, start-up
is most of `list` and `status`. Each line also gives `import click` alone against the same
baseline: the floor of any command built on click.

The command runs as a router runs it: the launcher /sbin/snapshot
(openwrt-package/snapshot/files/snapshot), by an interpreter whose site has no .pth files to
run. Two frames:
- `router`: a virtualenv made here without packages (so its site runs, as python3's does on
  a router, but imports nothing of this machine's site-packages), the package and click on
  PYTHONPATH;
- `bare`: the same with -S: no site at all, the strictest baseline.
(This project's own virtualenv is not a frame: its editable install's finder imports re,
pathlib and enum before any command, which would flatter every ratio.)

The image is simulated, and opening it imports what a router never does (the simulator,
and the few C modules it uses; its JSON sidecar is read by mtd/jsontext.py, not the json
module). The line's `opening the flash alone` is that opening by itself; on a router `list`
opens /dev/mtdN instead: bench/bench_router_startup.py measures it there.

`list` and `status` name no device, as on a router: the device comes from the configuration
(SNAPSHOT_CONFIG, a file here naming the image), read as a router reads it.
The package is compiled as installed (bench/installed.py). `status` is printed beside `list`,
without a target.
Run: .venv/bin/python bench/bench_startup.py
"""
import subprocess
import sys
import tempfile
from pathlib import Path

from installed import compile_package
from measure import LAUNCHER, interleaved, one_cpu, router_python, run, verdict

ROUNDS = 40
MIB = 1 << 20


def image(work: Path, device: str | None) -> str:
    """The flash `list` reads, with an empty chain: `device` (an MTD device a guest gives),
    else a simulated image made here."""
    cli = [sys.executable, "-m", "snapshot"]
    if device is None:
        device = str(work / "flash.img")
        subprocess.run([*cli, "flash", "create", device, "--type", "nor", "--size", "1M",
                        "--erase-size", "64K"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "--device", device, "format", "--force"], check=True,
                   stdout=subprocess.DEVNULL)
    return device


def frames(work: Path) -> dict:
    """Each frame's interpreter (with its flags) and environment."""
    python, env = router_python(work)
    return {"router": (python, env), "bare": ([*python, "-S"], env)}


def main(device: str | None = None) -> None:
    """`device`: an MTD device to measure on (bench_mipsel.py's guest gives its mtdram),
    formatted here; else a simulated image."""
    cpu = one_cpu()
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        flash = image(Path(tmp), device)
        opening = f"from mtd import open_flash; open_flash({flash!r}).close()"
        print(f"on {'the MTD device ' + flash if device else 'a simulated image'}")
        settings = Path(tmp) / "snapshot"
        settings.write_text(f"config snapshot 'main'\n\toption device '{flash}'\n")
        for name, (python, env) in frames(Path(tmp)).items():
            env = dict(env, SNAPSHOT_CONFIG=str(settings))
            snapshot = [*python, LAUNCHER]
            m = interleaved(ROUNDS, {
                "pass": lambda: run([*python, "-c", "pass"], env=env),
                "click": lambda: run([*python, "-c", "import click"], env=env),
                "open": lambda: run([*python, "-c", opening], env=env),
                "list": lambda: run([*snapshot, "list"], env=env),
                "status": lambda: run([*snapshot, "status"], env=env),
            })
            rss = interleaved(5, {
                "pass": lambda: run([*python, "-c", "pass"], env=env, rss=True).rss,
                "click": lambda: run([*python, "-c", "import click"], env=env, rss=True).rss,
                "list": lambda: run([*snapshot, "list"], env=env, rss=True).rss,
            })
            base = m["pass"].cpu
            ratio = m["list"].cpu / base
            print(f"[{name}] CPU {cpu}: python3 -c pass {base * 1000:.1f} ms; "
                  f"import click {m['click'].cpu / base:.2f}x (list and status do without "
                  f"it); opening the flash alone {m['open'].cpu / base:.2f}x; "
                  f"status {m['status'].cpu / base:.2f}x")
            print(f"[{name}] snapshot list / python3 -c pass: ratio {ratio:.2f} "
                  f"{verdict(ratio, 1.5)}")
            print(f"[{name}] peak RSS: python3 -c pass {rss['pass'] / MIB:.1f} MiB, import "
                  f"click {rss['click'] / MIB:.1f} MiB, snapshot list {rss['list'] / MIB:.1f} "
                  f"MiB {verdict(rss['list'] / MIB, 14)}")


if __name__ == "__main__":
    main()
