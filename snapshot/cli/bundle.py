"""The bundle commands: bundle create, sign, show and apply."""
from pathlib import Path

import click

from snapshot import config
from snapshot.cli import hot
from snapshot.cli.common import DEVICE, JSON, main, reading
from snapshot.cli.plain import echo, human, print_json
from snapshot.fleet import bundle as bundles
from snapshot.store.chain import Chain

KEY = click.option("--key", type=click.Path(dir_okay=False, path_type=Path),
                   help="usign (or signify) secret key to sign with.")


@main.group()
def bundle():
    """Signed bundles: a reference router's snapshot, applied by other routers on trial.

    \b
    Example:
      snapshot bundle create 2 -o fix.snb --board tplink,archer-c7-v2 --key fleet.sec
      snapshot bundle apply http://fleet.example/fix.snb
    """


def _range(spec: str) -> tuple[int, int]:
    try:
        first, _, last = spec.partition("..")
        return int(first), int(last or first)
    except ValueError:
        raise click.BadParameter(f"{spec!r} is not a snapshot number N or a range N..M")


@bundle.command("create")
@click.argument("snapshots", metavar="N[..M]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The bundle file to write.")
@click.option("--board", "boards", multiple=True,
              help="A board the bundle is for (repeatable) [default: this router's, from "
                   "option board_file].")
@click.option("--rom", type=click.Path(exists=True, path_type=Path),
              help="The firmware it applies to: a mounted squashfs, its image file, or an "
                   "unpacked root [default: option rom, /rom].")
@click.option("-m", "--message", help="[default: the newest snapshot's message]")
@KEY
@JSON
@DEVICE
@click.pass_obj
def create(obj, snapshots, output, boards, rom, message, key, as_json):
    """Turn snapshot N (or N..M, merged into one) into a bundle.

    The bundle applies on top of snapshots 1..N-1 exactly (their content hashes are its
    base), on the boards named and the firmware root given. The same snapshots give the
    same bytes. With --key it is signed too.

    \b
    Example:
      snapshot bundle create 3 -o fix.snb --key fleet.sec
      snapshot --device ref.img bundle create 2..3 -o fix.snb --rom /mnt/rom --board x86-64
    """
    first, last = _range(snapshots)
    settings = config.load()
    boards = list(boards) or [bundles.board(Path(settings["board_file"]))]
    with reading(obj) as dev:
        made = bundles.create(Chain(dev), first, last, output, boards,
                              rom or Path(settings["rom"]), message, key)
    info = bundles.describe(made)
    if as_json:
        print_json({"output": str(output), **info})
    else:
        echo(f"bundle {made.id}: snapshots {first}..{last} in {output} "
             f"({human(made.size)}), {'signed' if made.signature else 'not signed'}")


@bundle.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="usign (or signify) secret key.")
def sign(file, key):
    """Sign a bundle with a usign secret key (replacing any signature it has).

    Routers trust the public keys in /etc/snapshot/keys, named by fingerprint
    (`usign -F -p KEY.pub`), as opkg's /etc/opkg/keys are.

    \b
    Example:
      usign -G -s fleet.sec -p fleet.pub -c "fleet key"
      snapshot bundle sign fix.snb --key fleet.sec
    """
    made = bundles.sign(file, key)
    echo(f"signed bundle {made.id} ({file})")


@bundle.command("show")
@click.argument("source", metavar="FILE|URL")
@JSON
def show(source, as_json):
    """Show a bundle's manifest: what it applies to, and whether this router trusts it.

    \b
    Example:
      snapshot bundle show fix.snb --json
    """
    from snapshot.fleet import fetch
    with fetch.open_source(source) as stream:
        made = bundles.read_head(stream, source)
    info = bundles.describe(made)
    try:
        info["trusted_key"] = bundles.verify(made, Path(config.load()["keys_dir"]))
    except bundles.BundleRefused as e:
        info["trusted_key"], info["refused"] = None, str(e)
    if as_json:
        print_json(info)
        return
    echo(f"bundle {info['id']}: {info['message']}")
    echo(f"boards: {', '.join(info['boards'])}; base: {len(info['base'])} snapshots; "
         f"payload {human(info['payload']['length'])} {info['payload']['compression']}")
    echo(f"signed by trusted key {info['trusted_key']}" if info["trusted_key"]
         else info["refused"])


@bundle.command("apply")
@click.argument("source", metavar="FILE|URL")
@click.option("--no-reboot", is_flag=True, help="Do not reboot into the trial.")
@JSON
@DEVICE
@click.pass_obj
def apply(obj, source, no_reboot, as_json):
    """Apply a signed bundle as a snapshot on trial, then reboot into it.

    Refused, with one line and nothing written: a missing or bad signature or a key
    /etc/snapshot/keys does not trust, another board, another firmware, a base this router
    does not have (the message says which it needs), a truncated or corrupted bundle. The
    payload goes from the file or the download (resumed with Range after a break) straight
    into free flash blocks; its hash is checked before the one commit. Unsaved
    configuration (the volatile record) stays on top. The health watch then confirms the
    trial or rolls it back.

    \b
    Example:
      snapshot bundle apply http://fleet.example/bundles/fix.snb
    """
    hot.apply_bundle(obj, source, no_reboot, as_json)
