"""Boot and conversion: mount (run from preinit) and convert (jffs2 or the old fstools chain
-> chain)."""
import click
from pathlib import Path

from snapshot.cli import hot
from snapshot.cli.common import DEVICE, compression_option, main
from snapshot.cli.plain import echo, human
from snapshot.cli.stores import INEXACT, Progress, compression_of, stored
from snapshot.errors import SnapshotError
from snapshot.reboot import booted
from snapshot.store.chain import opened

@main.command()
@click.option("--from", "source", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Convert this overlay upper dir (the device must not be mounted).")
@click.option("--archive", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Convert an archive staged by `snapshot convert` (the RAM stage does).")
@click.option("--legacy", is_flag=True,
              help="Import the old fstools snapshot chain (OWRT) the device holds, in place "
                   "(the RAM stage does; nothing may use the device meanwhile).")
@click.option("--accept-window", is_flag=True,
              help="When the old chain fills anchor blocks 1-3: go ahead, although a power "
                   "cut at one step then leaves the old chain cut short (DESIGN.md §9).")
@click.option("-m", "--message", help="Message of snapshot 1 (jffs2 or ubifs; default: "
                                      "converted from jffs2, or ubifs). Records imported "
                                      "from the old chain say where they came from.")
@compression_option
@DEVICE
@click.pass_obj
def convert(obj, source, archive, legacy, accept_window, message, compression):
    """Replace the jffs2 overlay on --device (ubifs, on a UBI volume) by a chain holding it
    as snapshot 1, or import the old fstools snapshot chain on it: its snapshots in order and
    its volatile.

    On a running router (jffs2 mounted at /overlay, or the old chain on the partition), it
    checks what it will convert (the overlay's upper dir, packed into RAM; or every entry of
    the old chain) and hands over to the RAM stage, which stops the other processes, makes
    jffs2 read-only, moves onto the squashfs, writes the chain and reboots. On a UBI volume
    (ubifs at /overlay) it packs the upper dir onto the ubifs and reboots; the next boot's
    `snapshot mount` converts it before anything mounts the volume. Until the
    chain's one commit the old data stays as the stock mount_root reads it: a power cut
    leaves it or the chain, never a mix. Exit status 5: something of the old chain was
    left out (damaged, or refused as unsafe); the `warning:` lines say what.

    \b
    Examples:
      snapshot convert                     # on the router: then it reboots
      snapshot --device /tmp/flash.img convert --from /tmp/overlay/upper
      snapshot --device /tmp/flash.img convert --legacy
    """
    from snapshot import convert as conversion   # here: every other command starts sooner
    if sum(map(bool, (source, archive, legacy))) > 1:
        raise click.UsageError("--from, --archive and --legacy exclude each other")
    # On the router this only reads: the RAM stage writes, once the overlay is read-only
    # (ubifs holds a UBI volume's one writer slot until then).
    with opened(obj["device"], writable=bool(source or archive or legacy)) as dev:
        old_chain = legacy or not (source or archive) and conversion.holds_legacy(dev)
        if old_chain and message is not None:
            raise click.UsageError("-m goes with jffs2 only: each record imported from the "
                                   "old chain says where it came from")
        if accept_window and not old_chain:
            raise click.UsageError("--accept-window goes with the old fstools chain only")
        message = message or f"converted from {conversion.overlay_fs(dev)}"
        if legacy:
            progress = Progress("convert")
            try:
                imported = conversion.from_legacy(dev, compression_of(compression),
                                                  accept_window, progress)
            finally:
                progress.done()
            _report(dev.name, imported)
            return
        if old_chain:
            plan = conversion.plan_legacy(dev, accept_window)
            # The RAM stage stops this system's processes and reboots it: only for the
            # flash it booted from (snapshot/reboot.py), never an image on a PC.
            if not booted(dev.name)[1]:
                raise SnapshotError(f"{dev.name} is not the overlay this system booted "
                                    f"from, which the RAM stage converts before it reboots; "
                                    f"use --legacy")
            conversion.ram_stage_ready("; off the router, use --legacy")
            for problem in plan.old.problems:
                echo(f"warning: {problem}", err=True)
            echo(f"the RAM stage imports the old fstools chain on {dev.name} "
                 f"({plan.summary()}) and reboots")
            args = ["--legacy"] + (["--accept-window"] if accept_window else [])
        elif source or archive:
            progress = Progress("convert")
            try:
                capture = conversion.offline(dev, source, archive, message,
                                             compression_of(compression), progress)
            finally:
                progress.done()
            line = f"converted {dev.name}: snapshot 1 ({message})"
            if capture is None:
                echo(line)
            else:
                stored(capture, False, {}, line)
            return
        else:
            upper = conversion.ram_stage_source(dev, message)
            if dev.geometry.is_ubi:
                capture = conversion.stage_for_boot(upper.parent, message,
                                                    compression_of(compression))
                for warning in capture.warnings:
                    echo(f"warning: {warning}", err=True)
                echo(f"staged {upper} on the ubifs; the next boot converts {dev.name}; "
                     f"rebooting")
                conversion.reboot()
    if not old_chain:
        staged = conversion.STAGED
        capture = conversion.stage(upper, staged, compression_of(compression))
        for warning in capture.warnings:
            echo(f"warning: {warning}", err=True)
        echo(f"staged {upper} in {staged} ({human(staged.stat().st_size)}); "
             f"the RAM stage converts {dev.name} and reboots")
        args = [str(staged), message]
    conversion.hand_over(dev.name, args)


def _report(device: str, imported) -> None:
    """What convert --legacy imported; exit status 5 when it left something out."""
    for warning in imported.warnings:
        echo(f"warning: {warning}", err=True)
    echo(f"converted {device} from the old fstools chain: {imported.plan.summary()}"
         + (f", not exactly: {len(imported.warnings)} things left out"
            if imported.warnings else ""))
    if imported.warnings:
        raise SystemExit(INEXACT)


@main.command("mount")
@click.option("--root", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Sandbox form: a mounted squashfs standing for /.")
@click.option("--target", type=click.Path(file_okay=False, path_type=Path),
              help="Sandbox form: where to mount the merged root.")
@DEVICE
@click.pass_obj
def mount_cmd(obj, root, target):
    """Boot: mount the saved state over the squashfs (run from preinit).

    Applies snapshots 1..N into a tmpfs overlay over the squashfs, reading each record
    once and repairing what that read finds, stacks the volatile layer on top and pivots,
    giving /rom, /overlay/upper and /volatile/upper. A damaged chain boots its valid
    prefix; if anything else fails, a plain tmpfs overlay is mounted instead. Everything is
    logged to the kernel log. On a UBI volume it first converts the ubifs overlay a
    `snapshot convert` staged there.

    Exit status 6: the device holds no chain to boot (what `snapshot probe` answers 1 for),
    or cannot be opened: nothing was mounted; the preinit hook then boots the stock way.

    The old fstools chain, not converted yet, boots the same way, read-only: its snapshots
    and its volatile as `snapshot convert` would import them, nothing written to the flash;
    `save` and `push` are refused until `snapshot convert`.

    The sandbox form mounts the merged root at T without pivoting, with T/rom,
    T/overlay/upper and T/volatile/upper laid out as on the router.

    \b
    Examples:
      snapshot mount
      snapshot --device /tmp/flash.img mount --root /mnt/squashfs --target /mnt/root
    """
    if (root is None) != (target is None):
        raise click.UsageError("--root and --target go together")
    hot.mount_root(obj, root, target)
