"""What every benchmark shares: one CPU, interleaved runs, medians, and a verdict.

A benchmark calls `one_cpu()` first. It re-runs the script under `taskset -c N` (the last
CPU it may use), so the benchmark and every command it starts share one core, as on a
router, and a second core's idle time never flatters a ratio. Its measurements are then
taken side by side: `interleaved` runs each contender once per round, so a machine that
slows down mid-run slows every contender alike, and reports each one's median.
"""
import os
import shutil
import site
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: /sbin/snapshot, as the feed package installs it.
LAUNCHER = ROOT / "openwrt-package" / "snapshot" / "files" / "snapshot"


def one_cpu() -> int:
    """Pin this process and its children to one CPU (re-executing under taskset); the CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1 and shutil.which("taskset"):
        os.execvp("taskset", ["taskset", "-c", str(cpus[-1]), sys.executable, *sys.argv])
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    return sorted(os.sched_getaffinity(0))[0]


def router_python(work: Path) -> tuple[list[str], dict]:
    """An interpreter and environment that start `snapshot` as a router does: a virtualenv
    made in `work` without packages, so that its site runs, as python3's does on a router,
    but runs no .pth file of this machine's (this project's own virtualenv has its editable
    install's finder, which imports re, pathlib and enum before any command and would
    flatter every ratio); the package and its dependencies on PYTHONPATH. Run the command
    as [*python, LAUNCHER, ...]."""
    venv = work / "router-python"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    packages = site.getsitepackages()
    # The package where it is installed (a guest's dist-packages, bench_mipsel.py), else
    # this checkout (here the virtualenv holds only the editable install's finder).
    installed = any(os.path.isfile(os.path.join(p, "snapshot", "__init__.py")) for p in packages)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([*([] if installed else [str(ROOT)]), *packages]))
    return [str(venv / "bin" / "python")], env


@dataclass
class Run:
    """One command's cost: CPU time (user + system, seconds), wall time, and peak RSS
    (bytes; 0 unless asked for)."""
    cpu: float
    wall: float
    rss: int = 0


def run(cmd: list[str], env: dict | None = None, cwd=None, stdin=None,
        rss: bool = False) -> Run:
    """Run a command to completion (it must succeed) and measure it. With `rss`, its peak
    RSS too, through GNU time: a child forked from this Python process would otherwise count
    this process's memory, which the kernel carries across exec into the child's peak."""
    prefix, report = [], None
    if rss:
        report = tempfile.NamedTemporaryFile("r", suffix=".rss")
        prefix = ["/usr/bin/time", "-f", "%M", "-o", report.name]
    start = time.perf_counter()
    proc = subprocess.Popen([*prefix, *map(str, cmd)], env=env, cwd=cwd, stdin=stdin,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed: {err.strip()}")
    peak = 0
    if report is not None:
        with report:
            peak = int(report.read().split()[-1]) * 1024
    return Run(usage.ru_utime + usage.ru_stime, wall, peak)


def interleaved(rounds: int, contenders: dict) -> dict:
    """Each contender (a name and a function returning a Run, or a number) once per round;
    the median of each field per contender."""
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, measure in contenders.items():
            results[name].append(measure())
    medians = {}
    for name, runs in results.items():
        if isinstance(runs[0], Run):
            medians[name] = Run(statistics.median(r.cpu for r in runs),
                                statistics.median(r.wall for r in runs),
                                int(statistics.median(r.rss for r in runs)))
        else:
            medians[name] = statistics.median(runs)
    return medians


def verdict(value: float, target: float) -> str:
    """`(target <= T) OK` or `MISSED`."""
    return f"(target <= {target:g}) {'OK' if value <= target else 'MISSED'}"
