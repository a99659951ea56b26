"""The `snapshot` command line, a face: thin click commands over the library, one module per
command family (the exit statuses are in common.py). Imports every layer below it, but only
what the command called needs: the group imports a family module when one of its commands
runs (common.Group), and a family module imports the engine its commands call.

    common.py   the command group, shared options, errors, the progress line
    listing.py  list, status (headers only: the fast start-up)
    chain.py    format, save, push, rollback, squash, unpack, check, show, export, probe
    trial.py    confirm, health, watch
    boot.py     mount, convert
    flash.py    flash create, flash info
    packages.py upgrade, package-hook (run by the package managers)
    bundle.py   bundle create, sign, show, apply
    fleet.py    fleet poll, confirm, rollback, publish, promote, withdraw, report
"""
from snapshot.cli.common import main

__all__ = ["main"]
