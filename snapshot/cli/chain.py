"""The chain's commands: format, save, push, rollback, squash, unpack, check, show,
export and probe."""
from pathlib import Path

import click

from mtd import FlashOpenError, MtdError
from snapshot import config, operations
from snapshot import squash as squashing
from snapshot.cli import hot
from snapshot.cli.common import DEVICE, JSON, SOURCE, TRIAL, compression_option, main, reading
from snapshot.cli.plain import echo, human, print_json, when
from snapshot.cli.stores import (compression_of, max_attempts_of, on_trial, state_of, stored,
                                 writing)
from snapshot.errors import ChainDamaged, SnapshotError
from snapshot.operations import format_device
from snapshot.store.chain import Chain, opened

@main.command("format")
@click.option("--force", is_flag=True, help="Replace a chain, jffs2 or old-format data.")
@DEVICE
@click.pass_obj
def format_cmd(obj, force):
    """Create an empty snapshot chain on --device.

    Refuses to overwrite anything recognisable (a chain, jffs2, the old fstools format)
    unless --force is given.

    \b
    Example:
      snapshot --device /tmp/flash.img format
    """
    with opened(obj["device"], writable=True) as dev:
        format_device(dev, force)
    echo(f"formatted {dev.name}: empty chain")


@main.command()
@SOURCE
@compression_option
@TRIAL
@JSON
@DEVICE
@click.pass_obj
def save(obj, source, compression, trial, as_json):
    """Store a directory as the volatile record, replacing the previous one.

    Entries that change while they are read are stored as GNU tar stores them (see
    `push --help`); the exit status is then 5. With --trial the previous volatile record
    stays on flash until the trial is confirmed or fails. While a trial is pending, a plain
    save goes with it: it is dropped if the trial fails.

    \b
    Examples:
      snapshot save --from /volatile/upper
      snapshot save --trial && reboot        # then: snapshot confirm
    """
    with writing(obj, "save") as (chain, progress):
        capture = operations.save(chain, source, progress, compression_of(compression),
                                  max_attempts_of(trial))
        size = chain.volatile.entry.payload_length
        line = f"saved the volatile record ({human(size)})" + on_trial(chain.volatile)
    stored(capture, as_json, {"size": size, "state": state_of(chain.volatile)}, line)


@main.command()
@SOURCE
@click.option("-m", "--message", default="", help="What this snapshot is (at most 255 bytes).")
@compression_option
@TRIAL
@JSON
@DEVICE
@click.pass_obj
def push(obj, source, message, compression, trial, as_json):
    """Append a directory as a new snapshot; the volatile record is consumed into it.

    The directory may change while it is read (daemons write into /volatile/upper): a file
    that vanished is left out, one that changed is stored as it was read (padded with zeros
    if it shrank), and no entry is ever torn. Each such entry gets a `warning:` line, and the
    exit status is 5: stored, but not exactly.

    With --trial the snapshot boots on trial (see `snapshot confirm`); the volatile record
    it replaces stays on flash, to come back if the trial fails. No push is taken while a
    trial is pending.

    With `option keep K` in /etc/config/snapshot, a push that leaves more than K snapshots
    then squashes the oldest (see `squash --help`) so that K remain; `squashed` in --json
    says what it did (null: nothing), or why it could not.

    \b
    Examples:
      snapshot push --from /volatile/upper -m "installed tcpdump"
      snapshot push --trial -m "new mesh settings" && reboot
    """
    keep, compression = config.number(config.load(), "keep", 0), compression_of(compression)
    with writing(obj, "push") as (chain, progress):
        capture = operations.push(chain, source, message, progress, compression,
                                  max_attempts_of(trial))
        count = len(chain.snapshots)
        newest = chain.snapshots[-1]
        line = f"pushed snapshot {count}" + on_trial(newest)
        squashed = _keep(chain, keep, source, progress, compression)
    if squashed and "error" not in squashed:
        count = len(chain.snapshots)
        line += f"; {_squashed(squashed)}"
    stored(capture, as_json, {"snapshot": count, "size": newest.entry.payload_length,
                              "state": state_of(newest), "squashed": squashed}, line)


def _keep(chain, keep, source, progress, compression) -> dict | None:
    """`option keep` after a push: the squash's report, or its error (the push stands)."""
    try:
        return squashing.after_push(chain, keep, source, progress, compression)
    except SnapshotError as e:
        echo(f"warning: pushed, but not squashed: {e}", err=True)
        return {"error": str(e)}


@main.command()
@click.option("--upto", type=int,
              help="Merge snapshots 1..N [default: all but a snapshot on trial].")
@JSON
@DEVICE
@click.pass_obj
def squash(obj, upto, as_json):
    """Merge snapshots 1..N into one, so that what later ones deleted or overwrote stops
    taking flash. Booting shows exactly what it showed before.

    The merged record goes into free blocks and replaces the N in one commit: after a power
    cut the chain is the old one or the new one. The snapshots after N (a snapshot on trial)
    and the volatile record stay as they are, renumbered. Refused, with nothing written,
    when the chain is damaged (run `snapshot check --repair`), when N is on trial, or when
    free flash is short (the error says how much is needed). With fewer than two snapshots
    to merge it says so and writes nothing. Payload compression: `option compression`.

    \b
    Examples:
      snapshot squash
      snapshot squash --upto 5 --json
    """
    with writing(obj, "squash") as (chain, progress):
        report = squashing.squash(chain, upto, progress, compression_of(None))
    if as_json:
        print_json(report)
    else:
        echo(_squashed(report))


def _squashed(report: dict) -> str:
    if not report["squashed"]:
        return "nothing to squash: it takes two snapshots or more; nothing was written"
    return (f"squashed snapshots 1..{report['squashed']} into snapshot 1: flash used "
            f"{human(report['before_bytes'])} -> {human(report['after_bytes'])}, "
            f"{human(report['free_bytes'])} free")


@main.command()
@click.option("--to", "to", type=int, help="Keep snapshots 1..N [default: all but the newest].")
@JSON
@DEVICE
@click.pass_obj
def rollback(obj, to, as_json):
    """Drop every snapshot after N, and the volatile record.

    Without --to: a change on trial (pending or failed) if there is one, giving back exactly
    the state before it; else the newest snapshot. With only one snapshot left, rolling back
    needs an explicit --to 0.

    \b
    Examples:
      snapshot rollback            # drop the trial, or the newest snapshot
      snapshot rollback --to 2     # keep snapshots 1 and 2
    """
    with writing(obj, "rollback") as (chain, _):
        dropped = operations.rollback(chain, to)
    if as_json:
        print_json({"dropped": dropped})
    else:
        echo("dropped " + ", ".join(dropped))


@main.command("unpack")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to apply the snapshots into.")
@click.option("--upto", type=int, help="Apply snapshots 1..N only [default: all].")
@click.option("--volatile-to", type=click.Path(file_okay=False, path_type=Path),
              help="Also unpack the volatile record here.")
@click.option("--rom", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The squashfs the directory will go over: whiteouts with nothing to "
                   "hide there are left out, as boot does.")
@click.option("--force", is_flag=True,
              help="Unpack into a directory that is not empty.")
@DEVICE
@click.pass_obj
def unpack_cmd(obj, dest, upto, volatile_to, rom, force):
    """Apply snapshots 1..N in order into a directory, as boot does.

    Without --rom every whiteout is kept; overlayfs then lists those in directories the
    squashfs lacks (it hides whiteouts only in directories it merges). A directory that is
    not empty is refused, with nothing written, unless --force: the snapshots' files and
    whiteouts would replace what it holds.

    \b
    Example:
      snapshot unpack --to /tmp/upper --volatile-to /tmp/volatile --rom /rom
    """
    hot.unpack_chain(obj, dest, upto, volatile_to, rom, force)


@main.command()
@click.option("--repair", is_flag=True, help="Make the recovered state persistent.")
@JSON
@DEVICE
@click.pass_obj
def check(obj, repair, as_json):
    """Verify every record (read-only); with --repair, fix what was found.

    A damaged snapshot costs only its own changes: --repair empties it and keeps every
    record above it, applied over what remains. A damaged trial fails (the state before it
    comes back), and a damaged volatile record is dropped. It also rewrites records with
    corrected bit flips and a torn anchor entry. Without --repair, check says what a
    repair would lose; with it, what was lost.

    \b
    Exit status: 0 clean, repaired, or only what a routine power cut leaves (nothing is
    lost); 4 damage found, which a repair loses data to; 1 error.
    Example:
      snapshot check --json
    """
    if repair:
        with writing(obj, "repair") as (chain, progress):
            report = operations.repair(chain, progress)
    else:
        with reading(obj) as dev:
            report = operations.check(Chain(dev))
    if as_json:
        print_json(report.as_dict())
    else:
        for line in report.problems:
            echo(f"problem: {line}")
        for line in report.lost:
            echo(f"{'lost' if repair else 'a repair would lose'}: {line}")
        for line in report.repairs:
            echo(f"repaired: {line}")
        if report.clean:
            echo("clean")
        elif repair:
            echo("repaired" + ("" if report.damage else "; nothing is lost"))
        elif report.damage:
            echo("damaged: `snapshot check --repair` (every boot runs it) loses what is "
                 "named above")
        else:
            echo("not clean, but nothing is lost: what a routine power cut or ageing flash "
                 "leaves; `snapshot check --repair` (every boot runs it) tidies it")
    if not repair and report.damage:
        raise SystemExit(ChainDamaged.exit_code)


@main.command()
@click.argument("index", type=int)
@click.option("--rom", type=click.Path(file_okay=False, path_type=Path), default="/rom",
              show_default=True, help="The read-only root, to tell added from modified.")
@click.option("--uci", is_flag=True,
              help="Also each UCI option it changed in /etc/config, old value to new, as the "
                   "router's uci reads the files before and after it.")
@JSON
@DEVICE
@click.pass_obj
def show(obj, index, rom, uci, as_json):
    """List what snapshot N changed: added, modified, deleted, made opaque.

    \b
    Examples:
      snapshot show 3 --json
      snapshot show 3 --uci        # network.lan.ipaddr: '192.168.1.1' -> '10.0.0.1'
    """
    from snapshot import uci_changes
    rom = rom if rom.is_dir() else None
    with reading(obj) as dev:
        chain = Chain(dev)
        info = operations.show(chain, index, rom)
        if uci:
            info["uci"] = uci_changes.changes(chain, index, rom)
    if as_json:
        print_json(info)
        return
    echo(f"snapshot {index} ({when(info['created'])}) {info['message']}".rstrip())
    for kind in ("added", "modified", "deleted", "opaque"):
        for name in info[kind]:
            echo(f"  {kind:<9} {name}")
    for package in info.get("uci", []):
        if "problem" in package:
            echo(f"  uci {package['config']}: not compared: {package['problem']}")
        for change in package.get("changes", []):
            echo(f"  uci {change['option']}: {_uci_change(change)}")


def _uci_change(change: dict) -> str:
    """`old -> new` as uci shows values: quoted options, a section's type bare."""
    def shown(value):
        if change["option"].count(".") == 1:
            return f"section {value}"
        items = value if isinstance(value, list) else [value]
        return " ".join("'" + item.replace("'", "'\\''") + "'" for item in items)
    old, new = change["old"], change["new"]
    if old is None:
        return f"added {shown(new)}"
    if new is None:
        return f"removed (was {shown(old)})"
    return f"{shown(old)} -> {shown(new)}"


@main.command()
@click.argument("index", type=int)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write the archive to.")
@DEVICE
@click.pass_obj
def export(obj, index, output):
    """Write snapshot N's archive to a file, as a compressed tar GNU tar reads.

    \b
    Example:
      snapshot export 2 -o /tmp/snapshot-2.tar.gz && tar tvf /tmp/snapshot-2.tar.gz
    """
    with reading(obj) as dev:
        size = operations.export(Chain(dev), index, output)
    echo(f"exported snapshot {index} ({human(size)}) to {output}")


@main.command()
@DEVICE
@click.pass_obj
def probe(obj):
    """Exit 0 if --device holds a snapshot chain to boot, or the old fstools chain (which
    `snapshot mount` boots read-only until `snapshot convert`), 1 if not; prints nothing.

    Boot scripts use it to choose how to mount the root. It applies the stock tools' marks
    first: a partition that factoryreset, firstboot or a sysupgrade without settings marked
    with 0xdeadc0de becomes an empty chain (exit 0); one a sysupgrade that kept settings
    rewrote as jffs2 has the chain's anchor blocks erased, so no old chain comes back over
    it (exit 1, and the stock mount_root takes it).

    \b
    Example:
      snapshot --device mtd:rootfs_data probe && echo "snapshot chain"
    """
    from snapshot import boot
    from snapshot.store import marks
    try:
        with opened(obj["device"]) as dev:
            answer, action = marks.decide(dev)
            if action is None and answer == marks.CHAIN:
                Chain(dev)
        if action is not None:
            with opened(obj["device"], writable=True) as dev:
                answer = marks.settle(dev, boot.Log(kmsg=dev.name.startswith("/dev/")))
    except (SnapshotError, FlashOpenError, MtdError, OSError):
        raise SystemExit(1)
    if answer not in (marks.CHAIN, marks.OLD):
        raise SystemExit(1)
