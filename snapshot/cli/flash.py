"""`snapshot flash`: inspect flash devices and create simulated ones."""
import os

import click

from mtd import FlashType, Geometry, SimFlash, open_flash
from mtd.sim import validate_geometry
from snapshot.cli.common import DEVICE, JSON, BlockList, Size, main
from snapshot.cli.plain import echo, human, print_json


@main.group()
def flash():
    """Inspect flash devices and create simulated ones.

    \b
    Example:
      snapshot flash create /tmp/flash.img --type nand --size 64M --erase-size 128K
      snapshot --device /tmp/flash.img flash info
    """


@flash.command("create")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--type", "flash_type", type=click.Choice(["nor", "nand", "ubi"]), required=True,
              help="nor, nand, or ubi: a UBI volume on NAND, whose erase unit is a LEB.")
@click.option("--size", type=Size(), required=True, help="Total size, e.g. 8M.")
@click.option("--erase-size", type=Size(), required=True,
              help="Erase block size (UBI: the LEB size), e.g. 64K.")
@click.option("--page-size", type=Size(), help="Program unit [NOR: 1, NAND and UBI: 2K].")
@click.option("--oob-size", type=Size(), help="Out-of-band bytes per page [NOR: 0, NAND: 64].")
@click.option("--bad-blocks", type=BlockList(), default="",
              help="Factory bad blocks (NAND only), e.g. 3,17.")
@click.option("--force", is_flag=True, help="Replace an existing IMAGE.")
def flash_create(image, flash_type, size, erase_size, page_size, oob_size, bad_blocks, force):
    """Create a simulated flash IMAGE (erased) and its IMAGE.sim.json sidecar.

    \b
    Examples:
      snapshot flash create /tmp/nor.img --type nor --size 8M --erase-size 64K
      snapshot flash create /tmp/nand.img --type nand --size 64M --erase-size 128K \\
          --bad-blocks 3,17
      snapshot flash create /tmp/ubi.img --type ubi --size 31M --erase-size 124K
    """
    if os.path.exists(image) and not force:
        raise click.ClickException(f"{image} exists; add --force to replace it")
    nand = flash_type == "nand"
    geometry = Geometry(type=FlashType(flash_type), size=size, erasesize=erase_size,
                        writesize=page_size or (1 if flash_type == "nor" else 2048),
                        oobsize=(64 if nand else 0) if oob_size is None else oob_size)
    try:
        validate_geometry(geometry)
        SimFlash.create(image, geometry, bad_blocks=bad_blocks)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{image}: {e.strerror}") from None
    echo(f"created {image}: {flash_type}, {human(size)} in {geometry.blocks} blocks "
         f"of {human(erase_size)}")


@flash.command("info")
@JSON
@DEVICE
@click.pass_obj
def flash_info(obj, as_json):
    """Show geometry, bad blocks and wear statistics of --device.

    On a kernel MTD device the figures the kernel does not keep (programs, erases,
    bytes) are null.

    \b
    Example:
      snapshot --device /tmp/nand.img flash info --json
    """
    with open_flash(obj["device"]) as dev:
        info = {"device": dev.name, "backend": "simulator" if isinstance(dev, SimFlash) else
                "ubi" if dev.geometry.is_ubi else "mtd",
                "geometry": dev.geometry.as_dict(), "bad_blocks": dev.bad_blocks(),
                "stats": dev.stats().as_dict()}
    if as_json:
        print_json(info)
        return
    g, s = dev.geometry, info["stats"]
    counts = s["erase_counts"]
    lines = [
        ("device", f"{info['device']} ({info['backend']})"),
        ("type", g.type),
        ("size", f"{human(g.size)} in {g.blocks} blocks of {human(g.erasesize)}"),
        ("page", f"{g.writesize} bytes, OOB {g.oobsize} bytes"),
        ("bad blocks", ", ".join(map(str, info["bad_blocks"])) or "none"),
        ("programs", _unknown(s["programs"], f"{s['programs']} ({s['bytes_programmed']} bytes)")),
        ("erases", _unknown(s["erases"], s["erases"])),
        ("wear", _unknown(counts, counts and f"{min(counts)}..{max(counts)} erases per block")),
        ("bytes read", _unknown(s["bytes_read"], s["bytes_read"])),
        ("ECC", f"{s['ecc_corrected']} corrected, {s['ecc_failed']} uncorrectable"),
    ]
    for key, value in lines:
        echo(f"{key:<11} {value}")


def _unknown(figure, text) -> str:
    return "not kept by the kernel" if figure is None else str(text)
