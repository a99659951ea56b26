"""The flash writes `snapshot mount` makes (the repair of what the anchor shows, the decision
about a pending trial, the repair of what unpacking the layers found, and of the records it
did not apply), as a command of their own for the power-cut sweep: the layers are unpacked
into plain directories, nothing is mounted.

Usage: python tests/boot_decision.py --device IMAGE
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snapshot import boot  # noqa: E402
from snapshot.store import chain  # noqa: E402


def boot_writes(flash, log, report: boot.BootReport):
    """Everything a boot writes to `flash`; returns the layers it filled (boot.ChainLayers)."""
    with tempfile.TemporaryDirectory() as work:
        layers = boot.prepare(flash, log, report)
        root, snapshots, volatile = (Path(work) / name for name in ("root", "s", "v"))
        for directory in (root, snapshots / "upper", volatile / "upper"):
            directory.mkdir(parents=True)
        layers.fill_snapshots(snapshots / "upper", root)
        layers.fill_volatile(volatile / "upper", snapshots / "upper")
        layers.finish()
    return layers


def main(device: str) -> None:
    with chain.opened(device, writable=True) as flash:
        boot_writes(flash, boot.Log(kmsg=False), boot.BootReport())


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--device") + 1])
