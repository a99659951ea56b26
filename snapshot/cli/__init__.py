"""The `snapshot` command line, a face: thin click commands over the library, one module per
command family (the exit statuses are in common.py). Imports every layer below it.

    common.py   the command group, shared options, errors, the progress line
    chain.py    format, save, push, rollback, list, unpack, check, show, export, probe
    trial.py    confirm, health, watch, status
    boot.py     mount, convert
    flash.py    flash create, flash info
    packages.py upgrade, package-hook (run by the package managers)
    bundle.py   bundle create, sign, show, apply
    fleet.py    fleet poll, confirm, rollback, publish, promote, withdraw, report
"""
from snapshot.cli.common import main
from snapshot.cli import boot, bundle, chain, fleet, flash, packages, trial  # noqa: F401  (each adds its commands)

__all__ = ["main"]
