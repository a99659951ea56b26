"""The `snapshot` command line: thin click commands over the library.

Exit status: 0 success, 1 an error (one `Error: ...` line on stderr), 2 bad usage, 3 busy
(another command is writing), 4 the chain is damaged (see `check --repair`), 5 stored, but
not exactly: entries changed or could not be read while they were stored (`warning:` lines
say which).
"""
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click

from mtd import FlashOpenError, FlashType, Geometry, MtdError, SimFlash, open_flash
from mtd.sim import validate_geometry
from snapshot import config, operations
from snapshot.archive import COMPRESSIONS
from snapshot.chain import Chain
from snapshot.errors import ChainDamaged, SnapshotError
from snapshot.format import MAX_ATTEMPTS, STATE_NAMES
from snapshot.format import TRIAL as TRIAL_STATE
from snapshot.operations import DEFAULT_UPPER, format_device, opened

# Exit status of a save, push or convert whose directory changed while it was read.
INEXACT = 5
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


def human(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % (factor // 1024 or 1) == 0:
            return f"{n / factor:g} {unit}"
    return f"{n} B"


class Group(click.Group):
    """Turns the library's errors, and the filesystem refusing a path the user gave, into
    one `Error: ...` line and the error's exit status (1 unless it has its own)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FlashOpenError, MtdError, SnapshotError) as e:
            error = click.ClickException(str(e))
            error.exit_code = getattr(e, "exit_code", 1)
            raise error from None
        except BrokenPipeError:
            raise   # the reader went away: nothing to tell it (snapshot.__main__)
        except OSError as e:
            raise click.ClickException(path_error(e)) from None


def path_error(error: OSError) -> str:
    """`PATH: reason` for an OSError, naming the path(s) it was raised for."""
    reason = error.strerror or str(error)
    paths = [os.fsdecode(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", envvar="SNAPSHOT_DEVICE", metavar="DEV",
              help="/dev/mtdN, mtd:NAME or a simulated image; default: option device in "
                   "/etc/config/snapshot, else mtd:rootfs_data (or the name in "
                   "fstools_overlay_name= on the kernel command line). Env: SNAPSHOT_DEVICE.")
@click.version_option(package_name="snapshot")
@click.pass_context
def main(ctx, device):
    """Keep OpenWrt overlay state as power-cut-safe snapshots on raw flash.

    \b
    Example:
      snapshot --device /tmp/flash.img flash info

    Exit status: 0 success, 1 error (a one-line message on stderr), 2 bad usage,
    3 busy (another command is writing), 4 the chain is damaged (run check --repair),
    5 stored, but not exactly (entries changed while they were read; see the warnings).
    """
    ctx.obj = {"device": device or config.load()["device"] or None}


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
@click.option("--type", "flash_type", type=click.Choice(["nor", "nand"]), required=True)
@click.option("--size", type=Size(), required=True, help="Total size, e.g. 8M.")
@click.option("--erase-size", type=Size(), required=True, help="Erase block size, e.g. 64K.")
@click.option("--page-size", type=Size(), help="Program unit [NOR: 1, NAND: 2K].")
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
    """
    if os.path.exists(image) and not force:
        raise click.ClickException(f"{image} exists; add --force to replace it")
    nand = flash_type == "nand"
    geometry = Geometry(type=FlashType(flash_type), size=size, erasesize=erase_size,
                        writesize=page_size or (2048 if nand else 1),
                        oobsize=(64 if nand else 0) if oob_size is None else oob_size)
    try:
        validate_geometry(geometry)
        SimFlash.create(image, geometry, bad_blocks=bad_blocks)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{image}: {e.strerror}") from None
    click.echo(f"created {image}: {flash_type}, {human(size)} in {geometry.blocks} blocks "
               f"of {human(erase_size)}")


@flash.command("info")
@JSON
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
        info = {"device": dev.name, "backend": "simulator" if isinstance(dev, SimFlash) else "mtd",
                "geometry": dev.geometry.as_dict(), "bad_blocks": dev.bad_blocks(),
                "stats": dev.stats().as_dict()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
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
        click.echo(f"{key:<11} {value}")


def _unknown(figure, text) -> str:
    return "not kept by the kernel" if figure is None else str(text)


# -- the chain ---------------------------------------------------------------------------------

class Progress:
    """Blocks written so far, on one refreshed stderr line, when stderr is a terminal."""

    def __init__(self, what: str):
        self.what = what
        self.bytes = 0
        self.shown = sys.stderr.isatty()

    def __call__(self, amount: int) -> None:
        self.bytes += amount
        if self.shown:
            click.echo(f"\r{self.what}: {human(self.bytes)} written", nl=False, err=True)

    def done(self) -> None:
        if self.shown and self.bytes:
            click.echo(err=True)


@contextmanager
def writing(obj, what: str):
    """A locked, writable chain and a progress line for `what`."""
    with opened(obj["device"], writable=True) as dev:
        progress = Progress(what)
        try:
            yield Chain(dev), progress
        finally:
            progress.done()


def reading(obj):
    return opened(obj["device"])


def compression_option(f):
    return click.option("--compression", type=click.Choice(sorted(COMPRESSIONS)),
                        help="Payload compression [default: from /etc/config/snapshot, "
                             "else gzip].")(f)


def compression_of(name: str | None) -> int:
    name = name or config.load()["compression"]
    if name not in COMPRESSIONS:
        raise SnapshotError(f"compression {name!r} in the configuration is not one of "
                            f"{', '.join(sorted(COMPRESSIONS))}")
    return COMPRESSIONS[name]


SOURCE = click.option("--from", "source", type=click.Path(file_okay=False, path_type=Path),
                      default=DEFAULT_UPPER, show_default=True,
                      help="Directory to store (an overlay upper dir).")


@main.command("format")
@click.option("--force", is_flag=True, help="Replace a chain, jffs2 or old-format data.")
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
    click.echo(f"formatted {dev.name}: empty chain")


TRIAL = click.option("--trial", is_flag=True,
                     help="Put the new record on trial: it boots at most `option max_attempts` "
                          "times unless `snapshot confirm` (or the health watch) confirms it; "
                          "then the state before it comes back.")


@main.command()
@SOURCE
@compression_option
@TRIAL
@JSON
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
        line = f"saved the volatile record ({human(size)})" + _on_trial(chain.volatile)
    stored(capture, as_json, {"size": size, "state": _state_of(chain.volatile)}, line)


@main.command()
@SOURCE
@click.option("-m", "--message", default="", help="What this snapshot is (at most 255 bytes).")
@compression_option
@TRIAL
@JSON
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

    \b
    Examples:
      snapshot push --from /volatile/upper -m "installed tcpdump"
      snapshot push --trial -m "new mesh settings" && reboot
    """
    with writing(obj, "push") as (chain, progress):
        capture = operations.push(chain, source, message, progress,
                                  compression_of(compression), max_attempts_of(trial))
        count = len(chain.snapshots)
        newest = chain.snapshots[-1]
        line = f"pushed snapshot {count}" + _on_trial(newest)
    stored(capture, as_json, {"snapshot": count, "size": newest.entry.payload_length,
                              "state": _state_of(newest)}, line)


def _state_of(record) -> str:
    return STATE_NAMES[record.entry.state]


def _on_trial(record) -> str:
    e = record.entry
    if e.state != TRIAL_STATE:
        return ""
    return (f", on trial: it boots at most {e.max_attempts} times unless `snapshot confirm` "
            f"confirms it")


def max_attempts_of(trial: bool) -> int | None:
    """The boots a new trial may have (`option max_attempts`), or None for no trial."""
    if not trial:
        return None
    return config.number(config.load(), "max_attempts", 1, MAX_ATTEMPTS)


@main.command()
@click.pass_obj
def confirm(obj):
    """Confirm the change on trial: it becomes a normal snapshot or volatile record.

    What was kept in case the trial failed is dropped. With nothing on trial it says so and
    exits 0, writing nothing.

    \b
    Example:
      snapshot confirm
    """
    with writing(obj, "confirm") as (chain, _):
        confirmed = operations.confirm(chain)
    click.echo(f"confirmed {confirmed}" if confirmed else "nothing is on trial")


@main.command()
@JSON
@click.pass_obj
def health(obj, as_json):
    """Run every configured health check once and print each result.

    Checks are the `config check` sections of /etc/config/snapshot (batman, babel, ping,
    service) and the executables in `option health_dir`; see the defaults file.

    \b
    Exit status: 0 every required check passed, 5 one failed, 1 an error.
    Example:
      snapshot health --json
    """
    from snapshot import health as checks
    results = checks.run(checks.configured())
    checks.keep(results)
    if as_json:
        click.echo(json.dumps({"healthy": checks.healthy(results),
                               "results": [r.as_dict() for r in results]}, indent=2))
    else:
        for r in results:
            click.echo(f"{'pass' if r.ok else 'FAIL'}  {r.name}"
                       f"{'' if r.required else ' (wanted)'}: {r.detail}")
        if not results:
            click.echo("no health checks are configured")
    if not checks.healthy(results):
        raise SystemExit(UNHEALTHY)


@main.command()
@click.option("--no-reboot", is_flag=True, help="Do everything but the reboot after a rollback.")
@click.pass_obj
def watch(obj, no_reboot):
    """Watch a change on trial and confirm it or roll it back (the procd service runs it).

    While a trial is pending it runs the health checks every `option interval` seconds: it
    confirms the trial once every required check passed in `option pass_rounds` rounds in a
    row, and rolls it back once a required check failed in `option fail_rounds` rounds in a
    row after `option grace` seconds, or when nothing is decided within `option window`
    seconds. A rollback keeps its reason on flash, runs the hooks in `option rollback_dir`,
    logs to syslog and reboots. With nothing on trial it ends at once, writing nothing: a
    confirmed state is never rolled back by it.

    \b
    Exit status: 0 confirmed or nothing on trial, 5 rolled back, 1 an error.
    Example:
      snapshot watch --no-reboot
    """
    from snapshot import health as checks, watch as watching
    settings = watching.Settings.load()
    log = watching.SysLog()

    @contextmanager
    def open_chain():
        with opened(obj["device"], writable=True) as dev:
            yield Chain(dev)
    decision = watching.watch(open_chain, checks.configured(), settings, log)
    click.echo(f"{decision.verdict} {decision.what}: {decision.reason}"
               if decision.what else decision.reason)
    if decision.verdict == "rolled back":
        watching.run_hooks(settings.rollback_dir, decision, log)
        if not no_reboot:
            log("rebooting into the state before the trial")
            watching.reboot()
        raise SystemExit(UNHEALTHY)


@main.command()
@JSON
@click.pass_obj
def status(obj, as_json):
    """Show the chain, any change on trial, the last rollback and the last health checks.

    \b
    Example:
      snapshot status --json
    """
    from snapshot import health as checks
    with reading(obj) as dev:
        info = operations.status(Chain(dev))
    info["health"] = checks.last()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"chain: {info['snapshots']} snapshots, "
               + ("a volatile record" if info["volatile"] else "no volatile record")
               + f", {human(info['free_bytes'])} free")
    trial = info["trial"]
    click.echo(f"on trial: {trial['what']}, boot {trial['attempts']} of "
               f"{trial['max_attempts']}" if trial else "on trial: nothing")
    note = info["last_rollback"]
    click.echo(f"last rollback: {_when(note['time'])}: {note['reason']}" if note
               else "last rollback: none")
    results = info["health"]
    if results:
        failing = [r["name"] for r in results["results"] if not r["ok"]]
        click.echo(f"health at {_when(results['time'])}: "
                   + (f"failing: {', '.join(failing)}" if failing else "every check passed"))
    for layer, used in info["ram"].items():
        if used is not None:
            click.echo(f"RAM in {layer}: {human(used)}")


def stored(capture, as_json: bool, info: dict, line: str) -> None:
    """Report a record just stored: `line`, or `info` as JSON, saying whether the capture
    was exact; each warning goes to stderr. Exit status 5 when it was not exact."""
    for warning in capture.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps({**info, "exact": capture.exact, "warnings": capture.warnings},
                              indent=2))
    elif capture.exact:
        click.echo(line)
    else:
        click.echo(f"{line}, not exactly: {len(capture.warnings)} entries changed or could "
                   f"not be read while they were stored")
    if not capture.exact:
        raise SystemExit(INEXACT)


@main.command()
@click.option("--to", "to", type=int, help="Keep snapshots 1..N [default: all but the newest].")
@click.pass_obj
def rollback(obj, to):
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
    click.echo("dropped " + ", ".join(dropped))


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


@main.command("list")
@JSON
@click.pass_obj
def list_cmd(obj, as_json):
    """List the snapshots and the volatile record (reads record headers only).

    \b
    Example:
      snapshot list --json
    """
    with reading(obj) as dev:
        info = operations.listing(Chain(dev))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{'#':>3}  {'seq':>4}  {'size':>10}  {'blocks':>6}  {'created':<19}  "
               f"{'state':<10}  message")
    for s in info["snapshots"]:
        click.echo(f"{s['index']:>3}  {s['seq']:>4}  {human(s['size']):>10}  {s['blocks']:>6}  "
                   f"{_when(s['created'])}  {_state(s):<10}  {s['message']}")
    for v in info["volatiles"] or [None]:
        click.echo(f"volatile: {human(v['size'])} in {v['blocks']} blocks, {_state(v)}"
                   + (", kept in case the trial fails" if v["kept_for_rollback"] else "")
                   if v else "volatile: none")
    note = info["last_rollback"]
    if note:
        click.echo(f"last rollback: {_when(note['time'])}: {note['reason']}")
    click.echo(f"free: {human(info['free_bytes'])}")


def _state(record: dict) -> str:
    """A record's state for `list`: where it stands in a trial, and any damage."""
    state = record["state"]
    if state == "trial":
        state += f" {record['attempts']}/{record['max_attempts']}"
    return state if record["integrity"] == "ok" else f"{state}, {record['integrity']}"


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


@main.command("unpack")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to apply the snapshots into.")
@click.option("--upto", type=int, help="Apply snapshots 1..N only [default: all].")
@click.option("--volatile-to", type=click.Path(file_okay=False, path_type=Path),
              help="Also unpack the volatile record here.")
@click.option("--rom", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The squashfs the directory will go over: whiteouts with nothing to "
                   "hide there are left out, as boot does.")
@click.pass_obj
def unpack_cmd(obj, dest, upto, volatile_to, rom):
    """Apply snapshots 1..N in order into a directory, as boot does.

    Without --rom every whiteout is kept; overlayfs then lists those in directories the
    squashfs lacks (it hides whiteouts only in directories it merges).

    \b
    Example:
      snapshot unpack --to /tmp/upper --volatile-to /tmp/volatile --rom /rom
    """
    with reading(obj) as dev:
        count = operations.unpack(Chain(dev), dest, upto, volatile_to, rom)
    click.echo(f"unpacked {count} snapshots into {dest}")


@main.command()
@click.option("--repair", is_flag=True, help="Make the recovered state persistent.")
@JSON
@click.pass_obj
def check(obj, repair, as_json):
    """Verify every record (read-only); with --repair, fix what was found.

    --repair drops damaged records (and the snapshots after one), rewrites records with
    corrected bit flips and rewrites a torn anchor entry; it says what it dropped.

    \b
    Exit status: 0 clean (or repaired), 4 problems found, 1 error.
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
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.problems:
            click.echo(f"problem: {line}")
        for line in report.repairs:
            click.echo(f"repaired: {line}")
        click.echo("clean" if report.clean else
                   "repaired" if report.repairs else "not clean: run check --repair")
    if not report.clean and not report.repairs:
        raise SystemExit(ChainDamaged.exit_code)


@main.command()
@click.argument("index", type=int)
@click.option("--rom", type=click.Path(file_okay=False, path_type=Path), default="/rom",
              show_default=True, help="The read-only root, to tell added from modified.")
@JSON
@click.pass_obj
def show(obj, index, rom, as_json):
    """List what snapshot N changed: added, modified, deleted, made opaque.

    \b
    Example:
      snapshot show 3 --json
    """
    with reading(obj) as dev:
        info = operations.show(Chain(dev), index, rom if rom.is_dir() else None)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"snapshot {index} ({_when(info['created'])}) {info['message']}".rstrip())
    for kind in ("added", "modified", "deleted", "opaque"):
        for name in info[kind]:
            click.echo(f"  {kind:<9} {name}")


@main.command()
@click.argument("index", type=int)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write the archive to.")
@click.pass_obj
def export(obj, index, output):
    """Write snapshot N's archive to a file, as a compressed tar GNU tar reads.

    \b
    Example:
      snapshot export 2 -o /tmp/snapshot-2.tar.gz && tar tvf /tmp/snapshot-2.tar.gz
    """
    with reading(obj) as dev:
        size = operations.export(Chain(dev), index, output)
    click.echo(f"exported snapshot {index} ({human(size)}) to {output}")


@main.command()
@click.pass_obj
def probe(obj):
    """Exit 0 if --device holds a snapshot chain, 1 if not; prints nothing.

    Reads only the anchor area. Boot scripts use it to choose how to mount the root.

    \b
    Example:
      snapshot --device mtd:rootfs_data probe && echo "snapshot chain"
    """
    try:
        with reading(obj) as dev:
            Chain(dev)
    except (SnapshotError, FlashOpenError, MtdError):
        raise SystemExit(1)


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
