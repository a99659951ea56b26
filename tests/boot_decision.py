"""The flash writes `snapshot mount` makes before it mounts anything (the repair, then the
decision about a pending trial), as a command of their own, for the power-cut sweep.

Usage: python tests/boot_decision.py --device IMAGE
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snapshot import boot  # noqa: E402
from snapshot.store import chain  # noqa: E402


def main(device: str) -> None:
    report = boot.BootReport()
    log = boot.Log(kmsg=False)
    with chain.opened(device, writable=True) as flash:
        boot.prepare(flash, log, report)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--device") + 1])
