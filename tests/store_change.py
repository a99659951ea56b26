"""The flash writes after a package transaction (transaction.store), as a command of their own
for the power-cut sweep: WORK/upper is the running upper dir, WORK/before.json its manifest
before the transaction.

Usage: python tests/store_change.py --device IMAGE WORK
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snapshot.packages import transaction
from snapshot.store.chain import Chain, opened  # noqa: E402


def main(device: str, work: Path) -> None:
    upper = work / "upper"
    before = json.loads((work / "before.json").read_text())
    paths, gone = transaction.changed(before, transaction.manifest(upper))
    with opened(device, writable=True) as flash:
        transaction.store(Chain(flash), upper, paths, gone, "upgrade: pkg 1.0 -> 2.0", 3)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--device") + 1], Path(sys.argv[-1]))
