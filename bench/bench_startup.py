"""Start-up of a short command, measured side by side in one run, on one CPU:

1. CPU time of `snapshot list` on an empty chain against `python3 -c pass`. Target: <= 1.5.
2. Peak RSS of that `list`. Target: <= 14 MiB.

On a router's 400-1000 MHz core, where CPython runs 15-30 times slower than here, start-up
is most of `list` and `status`. Each line also gives `import click` alone against the same
baseline: the floor of any command built on click.

Two interpreters' sites are measured, since the ratio depends on what the baseline already
imports:
- `site`: this virtualenv's interpreter as it starts (its site runs .pth files, among them
  the editable install's finder, which imports re, pathlib and enum before any command);
- `bare`: the same interpreter with `-S` and the package and click on PYTHONPATH, as on a
  router, whose site-packages has no .pth files to run.

The package is compiled as installed (bench/installed.py). `status` is printed beside `list`,
without a target.
Run: .venv/bin/python bench/bench_startup.py
"""
import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

from installed import ROOT, compile_package
from measure import interleaved, one_cpu, run, verdict

ROUNDS = 40
MIB = 1 << 20


def image(work: Path) -> Path:
    path = work / "flash.img"
    cli = [sys.executable, "-m", "snapshot"]
    subprocess.run([*cli, "flash", "create", str(path), "--type", "nor", "--size", "1M",
                    "--erase-size", "64K"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "--device", str(path), "format"], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def frames() -> dict:
    """Each frame's interpreter flags and environment."""
    packages = ":".join([str(ROOT), *site.getsitepackages()])
    return {"site": ([], dict(os.environ, PYTHONDONTWRITEBYTECODE="1")),
            "bare": (["-S"], dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                                  PYTHONPATH=packages))}


def main() -> None:
    cpu = one_cpu()
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        flash = image(Path(tmp))
        for name, (flags, env) in frames().items():
            python = [sys.executable, *flags]
            snapshot = [*python, "-m", "snapshot", "--device", flash]
            m = interleaved(ROUNDS, {
                "pass": lambda: run([*python, "-c", "pass"], env=env),
                "click": lambda: run([*python, "-c", "import click"], env=env),
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
                  f"import click {m['click'].cpu / base:.2f}x; "
                  f"status {m['status'].cpu / base:.2f}x")
            print(f"[{name}] snapshot list / python3 -c pass: ratio {ratio:.2f} "
                  f"{verdict(ratio, 1.5)}")
            print(f"[{name}] peak RSS: python3 -c pass {rss['pass'] / MIB:.1f} MiB, import "
                  f"click {rss['click'] / MIB:.1f} MiB, snapshot list {rss['list'] / MIB:.1f} "
                  f"MiB {verdict(rss['list'] / MIB, 14)}")


if __name__ == "__main__":
    main()
