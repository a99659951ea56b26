"""The `snapshot` command line, a face: thin click commands over the library, one module per
command family (the exit statuses are in common.py). Imports every layer below it, but only
what the command called needs: the group imports a family module when one of its commands
runs (common.Group), and a family module imports the engine its commands call. The front
door (door.py) starts the commands a router runs most without click at all.

    door.py     the front door: where the command starts (run), and list, status, mount,
                unpack, bundle apply without click
    hot.py      the bodies of the commands the door starts, which both doors call
    plain.py    output and errors, without click
    stores.py   what the commands that store share (a write's chain, the progress line)
    common.py   the command group, shared options
    listing.py  list, status
    chain.py    format, save, push, rollback, squash, unpack, check, show, export, probe
    trial.py    confirm, health, watch
    boot.py     mount, convert
    flash.py    flash create, flash info
    packages.py upgrade, package-hook (run by the package managers)
    bundle.py   bundle create, sign, show, apply
    fleet.py    fleet poll, confirm, rollback, publish, promote, withdraw, report
"""


def __getattr__(name):
    # `snapshot.cli.main`, the click group, imported when asked for: the front door
    # (snapshot.cli.door) is a module of this package and must not import click.
    if name == "main":
        from snapshot.cli.common import main
        return main
    raise AttributeError(name)
