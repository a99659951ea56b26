"""Boot and conversion: mount (run from preinit) and convert (jffs2 -> chain)."""
import click
from pathlib import Path

from snapshot.cli.common import Progress, compression_of, compression_option, human, main, stored
from snapshot.operations import opened

@main.command()
@click.option("--from", "source", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Convert this overlay upper dir (the device must not be mounted).")
@click.option("--archive", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Convert an archive staged by `snapshot convert` (the RAM stage does).")
@click.option("-m", "--message", default="converted from jffs2", show_default=True,
              help="Message of snapshot 1.")
@compression_option
@click.pass_obj
def convert(obj, source, archive, message, compression):
    """Replace the jffs2 overlay on --device by a chain holding it as snapshot 1.

    On a running router (jffs2 mounted at /overlay), it packs /overlay/upper into RAM and
    hands over to the RAM stage, which stops the other processes, makes jffs2 read-only,
    moves onto the squashfs, writes the chain and reboots. Until the chain's one commit the
    jffs2 data stays intact: a power cut leaves jffs2 or the chain, never a mix.

    \b
    Examples:
      snapshot convert                     # on the router: then it reboots
      snapshot --device /tmp/flash.img convert --from /tmp/overlay/upper
    """
    from snapshot import convert as conversion   # here: every other command starts sooner
    if source and archive:
        raise click.UsageError("--from and --archive exclude each other")
    with opened(obj["device"], writable=True) as dev:
        if source or archive:
            progress = Progress("convert")
            try:
                capture = conversion.offline(dev, source, archive, message,
                                             compression_of(compression), progress)
            finally:
                progress.done()
            line = f"converted {dev.name}: snapshot 1 ({message})"
            if capture is None:
                click.echo(line)
            else:
                stored(capture, False, {}, line)
            return
        upper = conversion.ram_stage_source(dev, message)
    staged = conversion.STAGED
    capture = conversion.stage(upper, staged, compression_of(compression))
    for warning in capture.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"staged {upper} in {staged} ({human(staged.stat().st_size)}); "
               f"the RAM stage converts {dev.name} and reboots")
    conversion.hand_over(dev.name, message)


@main.command("mount")
@click.option("--root", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Sandbox form: a mounted squashfs standing for /.")
@click.option("--target", type=click.Path(file_okay=False, path_type=Path),
              help="Sandbox form: where to mount the merged root.")
@click.pass_obj
def mount_cmd(obj, root, target):
    """Boot: mount the saved state over the squashfs (run from preinit).

    Recovers the chain, applies snapshots 1..N into a tmpfs overlay over the squashfs,
    stacks the volatile layer on top and pivots, giving /rom, /overlay/upper and
    /volatile/upper. A damaged chain boots its valid prefix; if anything else fails, a
    plain tmpfs overlay is mounted instead. Everything is logged to the kernel log.

    The sandbox form mounts the merged root at T without pivoting, with T/rom,
    T/overlay/upper and T/volatile/upper laid out as on the router.

    \b
    Examples:
      snapshot mount
      snapshot --device /tmp/flash.img mount --root /mnt/squashfs --target /mnt/root
    """
    from snapshot import boot   # here: every other command starts sooner
    if (root is None) != (target is None):
        raise click.UsageError("--root and --target go together")
    sandbox = root is not None
    if sandbox:
        target = target.absolute()
        scratch = target.parent / f".{target.name}.snapshot"
    else:
        root, target, scratch = Path("/"), Path("/mnt"), Path("/tmp/.snapshot")
    target.mkdir(parents=True, exist_ok=True)
    boot.mount(obj["device"], root.absolute(), target, scratch, boot.Log(kmsg=not sandbox),
               sandbox)
    if not sandbox:
        boot.pivot(target)
