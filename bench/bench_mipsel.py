"""bench_startup.py's measurement on a router's CPU: the mipsel malta guest of the router tier
(tests/mipsel_vm.py, scripts/setup-mipsel.sh), under qemu TCG, one CPU.

The guest runs Debian's python3.11 with the package, click and the cross-built bindings, as
a router's site-packages would hold them, and `list` reads the guest's mtdram device through
them, as a router reads /dev/mtdN. The ratios are what matter: TCG's absolute
times are not a router's. Fewer rounds than on the host, since each costs about a minute.
Run: .venv/bin/python bench/bench_mipsel.py
"""
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mipsel_vm import PYTHON, MipselVM, job, stage  # noqa: E402

ROUNDS = 8
TIMEOUT = 3600
#: On the guest's mtdram device (tests/kernel_vm.py's initramfs loads it and names it in
#: MTD_MTDRAM), as a router's `list` opens /dev/mtdN.
MEASURE = (f"import os, bench_startup; bench_startup.ROUNDS = {ROUNDS}; "
           f"bench_startup.main(os.environ['MTD_MTDRAM'])")


def main() -> None:
    vm = MipselVM()
    with tempfile.TemporaryDirectory(prefix="bench-mipsel-") as tmp:
        results = Path(tmp)
        staged = stage(ROOT, results)
        started = time.monotonic()
        result = vm.run(job(staged, f"cd bench && {PYTHON} -c {shlex.quote(MEASURE)}"),
                        cwd=str(staged), env={}, timeout=TIMEOUT, results_dir=results)
        print(f"mipsel guest ({vm.kernel_version}, qemu malta, TCG), {ROUNDS} rounds, "
              f"{time.monotonic() - started:.0f}s:")
        print(result.output.rstrip())
        if result.returncode:
            raise SystemExit(f"the guest's bench exited with {result.returncode}")


if __name__ == "__main__":
    main()
