"""What the `snapshot` commands share through click: the command group, which turns library
errors into one `Error: ...` line (plain.py words it); option types and shared options.
What needs no click is in plain.py (output, errors) and stores.py (a write's chain and
progress line), for the front door (door.py) to use too.

Exit status: 0 success, 1 an error (one `Error: ...` line on stderr), 2 bad usage, 3 busy
(another command is writing), 4 the chain is damaged (see `check --repair`), 5 stored, but
not exactly: entries changed or could not be read while they were stored (`warning:` lines
say which); for `health`, a required check failed; for `watch`, the trial was rolled back;
6 (`mount`) no chain to boot: the preinit hook boots the stock way; 130 interrupted
(Ctrl-C), with one line saying whether the device changed.
"""
import re
from pathlib import Path

import click

from mtd import FlashOpenError, MtdError
from snapshot import config
from snapshot.cli.plain import INTERRUPTED, echo, failure, interrupted
from snapshot.errors import SnapshotError
from snapshot.live import DEFAULT_UPPER
from snapshot.store.chain import opened
from snapshot.store.format import COMPRESSIONS
from snapshot.text import printable

# Exit status of `health` when a required check fails, and of `watch` when it rolled back.
UNHEALTHY = 5
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class Size(click.ParamType):
    """A byte count with an optional K, M or G suffix (powers of 1024): 64K, 8M."""
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = _SIZE.match(value)
        if not m:
            self.fail(f"{value!r} is not a size (examples: 2048, 128K, 8M)", param, ctx)
        return int(m.group(1)) * _UNITS[m.group(2).upper()]


class BlockList(click.ParamType):
    name = "BLOCKS"

    def convert(self, value, param, ctx):
        try:
            return sorted({int(b) for b in value.split(",") if b.strip()})
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of block numbers", param, ctx)


class Group(click.Group):
    """The top command group. It imports a command's family module (snapshot/cli/FAMILY.py)
    only when that command is called, so each command pays for its own imports only: on a
    router's CPU, start-up is most of a short command. `--help` imports them all.

    It turns the library's errors, and the filesystem refusing a path the user gave, into
    one `Error: ...` line and the error's exit status (1 unless it has its own); its control
    characters escaped, as echo() does."""

    #: Each command's family module. tests/test_startup.py checks it against what the
    #: modules define.
    FAMILIES = {
        "format": "chain", "save": "chain", "push": "chain", "rollback": "chain",
        "squash": "chain", "unpack": "chain", "check": "chain", "show": "chain",
        "export": "chain", "probe": "chain", "list": "listing",
        "confirm": "trial", "health": "trial", "watch": "trial", "status": "listing",
        "mount": "boot", "convert": "boot",
        "flash": "flash",
        "upgrade": "packages", "package-hook": "packages",
        "bundle": "bundle",
        "fleet": "fleet",
    }

    def list_commands(self, ctx):
        return sorted(self.FAMILIES)

    def get_command(self, ctx, name):
        family = self.FAMILIES.get(name)
        if family is not None and name not in self.commands:
            __import__(f"snapshot.cli.{family}")
        return self.commands.get(name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            e.message = printable(e.message)
            raise
        except BrokenPipeError:
            raise   # the reader went away: nothing to tell it (snapshot.cli.door.run)
        except KeyboardInterrupt:
            echo(interrupted(ctx.obj or {}), err=True)
            raise SystemExit(INTERRUPTED) from None
        except (FlashOpenError, MtdError, SnapshotError, OSError) as e:
            message, status = failure(e)
            error = click.ClickException(message)
            error.exit_code = status
            raise error from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", envvar="SNAPSHOT_DEVICE", metavar="DEV",
              help="/dev/mtdN, mtd:NAME, /dev/ubiX_Y, ubi:NAME or a simulated image; default: "
                   "option device in /etc/config/snapshot, else the MTD partition rootfs_data "
                   "(or the name in fstools_overlay_name= on the kernel command line), else "
                   "the UBI volume of that name. Env: SNAPSHOT_DEVICE.")
@click.version_option(package_name="snapshot")
@click.pass_context
def main(ctx, device):
    """Keep OpenWrt overlay state as power-cut-safe snapshots on raw flash.

    \b
    Example:
      snapshot --device /tmp/flash.img flash info

    Exit status: 0 success, 1 error (a one-line message on stderr), 2 bad usage,
    3 busy (another command is writing), 4 the chain is damaged (run check --repair),
    5 stored, but not exactly (entries changed while they were read; see the warnings),
    130 interrupted (one line says whether the device changed).
    """
    ctx.obj = {"device": device or config.load()["device"] or None}


def _device_here(ctx, param, value) -> None:
    # Called for every command that opens a device, given the option or not.
    ctx.obj["opens"] = True
    if value is not None:
        ctx.obj["device"] = value


#: `--device` after the command too (`snapshot list --device X`), for every command that opens
#: a device: it wins over the one before the command.
DEVICE = click.option("--device", metavar="DEV", expose_value=False, callback=_device_here,
                      help="The device, as `snapshot --device DEV` takes it before the "
                           "command.")


def reading(obj):
    return opened(obj["device"])


def compression_option(f):
    return click.option("--compression", type=click.Choice(sorted(COMPRESSIONS)),
                        help="Payload compression [default: from /etc/config/snapshot, "
                             "else gzip].")(f)


SOURCE = click.option("--from", "source", type=click.Path(file_okay=False, path_type=Path),
                      default=DEFAULT_UPPER, show_default=True,
                      help="Directory to store (an overlay upper dir).")


TRIAL = click.option("--trial", is_flag=True,
                     help="Put the new record on trial: it boots at most `option max_attempts` "
                          "times unless `snapshot confirm` (or the health watch) confirms it; "
                          "then the state before it comes back.")
