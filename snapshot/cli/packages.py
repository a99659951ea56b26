"""Package changes: upgrade, and the hook the package managers run (package-hook)."""
import syslog
from pathlib import Path

import click

from snapshot import config
from snapshot.cli.common import DEVICE, JSON, compression_option, main
from snapshot.cli.plain import echo, human, print_json
from snapshot.cli.stores import Progress, compression_of, max_attempts_of
from snapshot.live import DEFAULT_UPPER
from snapshot.packages import feeds
from snapshot.packages import upgrade as upgrades
from snapshot.reboot import booted, reboot_into

UPPER = Path(DEFAULT_UPPER)


def _manager(name: str | None) -> feeds.PackageManager:
    if name == "apk":
        return feeds.Apk()
    if name == "opkg":
        # The real binary, not the wrapper that runs the hooks around it.
        return feeds.Opkg(command=["/bin/opkg"] if Path("/bin/opkg").exists() else None)
    return feeds.detect()


@main.command()
@click.option("--dry-run", is_flag=True, help="Update the feeds and list what would change.")
@click.option("--no-reboot", is_flag=True, help="Store the snapshot on trial, do not reboot.")
@click.option("--manager", type=click.Choice(["apk", "opkg"]),
              help="The package manager [default: apk where its database is, else opkg].")
@compression_option
@JSON
@DEVICE
@click.pass_obj
def upgrade(obj, dry_run, no_reboot, manager, compression, as_json):
    """Upgrade the installed packages into a new snapshot on trial, then reboot into it.

    Updates the feeds and works out what would change first. Nothing to upgrade: says so,
    writes nothing. Before anything is installed it refuses an upgrade whose result could
    not be kept: too little free flash for its snapshot, or too little free RAM in the
    layer the packages install into. The snapshot holds exactly what the transaction
    changed (the package database included); the volatile record stays on top of it. The
    trial is confirmed by the health watch or `snapshot confirm`, or rolled back.

    Exit status: 10 a feed cannot be reached, 11 a bad signature, 12 the package manager
    failed (a post-install script), 13 opkg upgraded only some packages, 14 too little
    flash, 15 too little RAM, 16 installed but not stored. After 12, 13 and 16 the running
    system holds the change in RAM only (`snapshot status` says so): a reboot discards it.

    \b
    Examples:
      snapshot upgrade --dry-run
      snapshot upgrade
    """
    pm = _manager(manager)
    changes = upgrades.plan(obj["device"], pm)
    if not changes or dry_run:
        if as_json:
            print_json({"changes": [str(c) for c in changes], "dry_run": dry_run,
                        "snapshot": None})
        elif not changes:
            echo("nothing to upgrade")
        else:
            echo("would upgrade: " + ", ".join(map(str, changes)))
        return
    upgrades.check_room(obj["device"], pm, changes, UPPER)
    progress = Progress("upgrade")
    progress.phase(f"installing {', '.join(map(str, changes))}")
    try:
        outcome = upgrades.upgrade(obj["device"], pm, changes, UPPER,
                                   max_attempts_of(True), compression_of(compression), progress)
    finally:
        progress.done()
    syslog.syslog(syslog.LOG_NOTICE, f"snapshot: upgrade stored as snapshot "
                                     f"{outcome.snapshot} on trial: {outcome.message}")
    reboots = not no_reboot and booted(obj["device"])[1]
    if as_json:
        print_json({"changes": [str(c) for c in outcome.changes], "dry_run": False,
                    "snapshot": outcome.snapshot, "size": outcome.size,
                    "message": outcome.message, "reboot": reboots})
    else:
        echo(f"upgraded {', '.join(map(str, outcome.changes))}; stored as snapshot "
             f"{outcome.snapshot} ({human(outcome.size)}), on trial")
    if not no_reboot:
        from snapshot.text import SysLog
        reboot_into(obj["device"], "the upgrade's trial", SysLog())


@main.command("package-hook", hidden=True)
@click.argument("stage")
@click.option("--manager", type=click.Choice(["apk", "opkg"]))
@DEVICE
@click.pass_obj
def package_hook(obj, stage, manager):
    """Run by the package managers around a transaction (apk's commit hook, the opkg
    wrapper): pre-commit notes the state, post-commit stores what changed as a snapshot on
    trial (`option auto_snapshot`). Never fails: its own problems are logged.

    \b
    Example:
      snapshot package-hook post-commit --manager apk
    """
    try:
        settings = config.load()
        if settings.get("auto_snapshot", "1") != "1" or stage not in ("pre-commit",
                                                                      "post-commit"):
            return
        pm = _manager(manager)
        if stage == "pre-commit":
            upgrades.pre_commit(obj["device"], pm, UPPER)
            return
        said = upgrades.post_commit(
            obj["device"], pm, UPPER, config.number(settings, "max_attempts", 1, 15),
            compression_of(None), lambda line: syslog.syslog(syslog.LOG_NOTICE,
                                                              f"snapshot: {line}"))
        if said:
            echo(f"snapshot: {said}")
    except Exception as e:   # the user's transaction must never fail for the hook's sake
        syslog.syslog(syslog.LOG_ERR, f"snapshot: package hook {stage} failed: {e}")
        echo(f"snapshot: the automatic snapshot failed: {e}")
