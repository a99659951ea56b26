"""The fleet commands: fleet poll, confirm and rollback (on a unit); publish, promote,
withdraw, resign and report (the operator's)."""
import json
from contextlib import contextmanager
from pathlib import Path

import click

from snapshot import config
from snapshot.cli.common import DEVICE, JSON, main
from snapshot.cli.plain import echo, print_json
from snapshot.cli.stores import max_attempts_of, writing
from snapshot.reboot import reboot_into
from snapshot.store.chain import Chain, opened
from snapshot.text import SysLog

CHANNEL = click.option("--channel", type=click.Path(file_okay=False, path_type=Path),
                       required=True, help="The channel directory a web server serves.")
KEY = click.option("--key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                   required=True, help="usign secret key that signs the channel (a channel "
                                       "key: units refuse a channel a bundle key signed).")


class Duration(click.ParamType):
    """Seconds, from N followed by d, h, m or s."""
    name = "duration"
    UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if len(text) > 1 and text[:-1].isdigit() and text[-1] in self.UNITS \
                and int(text[:-1]) > 0:
            return int(text[:-1]) * self.UNITS[text[-1]]
        self.fail(f"{value!r} is not a duration (examples: 7d, 12h, 30m)", param, ctx)


EXPIRES = click.option("--expires-in", type=Duration(), default="7d", show_default=True,
                       help="How long units take the channel as signed now: `fleet resign` "
                            "renews it before then.")


@main.group()
def fleet():
    """Roll bundles out to many routers in waves, from a signed channel on a web server.

    \b
    Example:
      snapshot fleet publish fix.snb --channel /srv/www/fleet --waves canary,rest --key k.sec
      snapshot fleet poll                      # on each unit, from cron
      snapshot fleet confirm 3f2a9c0d1e4b5a69  # on a unit, when the operator says so
    """


BUNDLE_ID = click.argument("bundle_id", metavar="BUNDLE_ID")
#: How long the operator's decision waits for the device: the health watch locks it for a
#: moment each round, and the decision must not fail on that.
LOCK_WAIT = 30.0


def _decide(obj, what: str, decide) -> dict:
    """`decide(chain)` on the locked chain, waiting up to LOCK_WAIT seconds for the lock."""
    import time
    from snapshot.errors import Busy
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            with writing(obj, what) as (chain, _):
                return decide(chain)
        except Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@fleet.command()
@click.option("--now", is_flag=True, help="Apply without the random delay.")
@click.option("--no-reboot", is_flag=True, help="Do not reboot into the trial.")
@JSON
@DEVICE
@click.pass_obj
def poll(obj, now, no_reboot, as_json):
    """Fetch the channel and apply the bundle it names for this unit's base and group.

    The channel must be signed by a key in `option channel_keys_dir` (never a bundle key),
    not be older than the newest this unit accepted, and not have expired (checked when the
    clock is known to be set). Waits a random time of up to `option delay` seconds (`config
    fleet`) first, so that a wave does not hit the server at once; downloads the bundle
    before it takes the device, and refuses one whose length, SHA-256 or id is not the
    channel's. Does nothing while a trial is pending, when the unit holds the bundle, or when
    the bundle's trial failed here before. `status` shows the last poll's outcome.

    \b
    Example:
      snapshot fleet poll --json
    """
    from snapshot.fleet import channel as fleets
    # The outcome is this command's own line (or its one `Error:` line): the log goes to
    # syslog only.
    log = SysLog(echo=False)

    @contextmanager
    def chain_opener():
        with opened(obj["device"], writable=True) as dev:
            yield Chain(dev)
    from snapshot.fleet import memory
    done = fleets.poll(chain_opener, config.load(), memory.settings(), max_attempts_of(True),
                       log, now)
    if as_json:
        print_json(done)
    else:
        echo(f"applied bundle {done['bundle']} as snapshot {done['snapshot']}, on trial"
             if done["action"] == "applied" else f"nothing to do: "
             f"{done.get('reason') or done.get('already')}")
    if done["action"] == "applied" and not no_reboot:
        # Said on stderr too: whether this machine reboots is the user's to know.
        reboot_into(obj["device"], "the bundle's trial", SysLog())


@fleet.command()
@BUNDLE_ID
@click.option("--force", is_flag=True, help="Confirm even though the last health check failed.")
@JSON
@DEVICE
@click.pass_obj
def confirm(obj, bundle_id, force, as_json):
    """Confirm this unit's trial of a bundle: the operator's decision, for a fleet whose units
    leave it to the operator (`option confirm operator` in `config fleet`).

    Refused, with nothing written, when another change is on trial, when the bundle is not on
    trial here (it says where it stands), or when the last health check failed (--force). A
    bundle confirmed already is a no-op. Waits up to 30 s for the device while the health
    watch holds it.

    \b
    Example:
      snapshot fleet confirm 3f2a9c0d1e4b5a69 --json
    """
    from snapshot.fleet import channel as fleets
    from snapshot.health import results
    done = _decide(obj, "confirm",
                   lambda chain: fleets.confirm(chain, bundle_id, results.last(), force))
    if done["action"] == "confirmed":
        SysLog()(f"fleet: confirmed bundle {bundle_id} ({done['what']}) for the "
                          f"operator")
    if as_json:
        print_json(done)
    else:
        echo(f"confirmed bundle {bundle_id} ({done['what']})"
             if done["action"] == "confirmed" else f"nothing to do: {done['reason']}")


@fleet.command()
@BUNDLE_ID
@click.option("--no-reboot", is_flag=True, help="Do not reboot into the state before it.")
@JSON
@DEVICE
@click.pass_obj
def rollback(obj, bundle_id, no_reboot, as_json):
    """Roll back this unit's trial of a bundle, for the operator: the next boot (now, unless
    --no-reboot) is the state before it, with this unit's own configuration, and no poll
    applies the bundle again.

    A bundle that is not here, or was rolled back already, is a no-op; a confirmed one is
    refused (`snapshot rollback --to N` rolls it back, and drops the volatile record too).

    \b
    Example:
      snapshot fleet rollback 3f2a9c0d1e4b5a69
    """
    import time
    from snapshot.fleet import channel as fleets
    done = _decide(obj, "rollback",
                   lambda chain: fleets.rollback(chain, bundle_id, int(time.time())))
    if as_json:
        print_json(done)
    else:
        echo(f"rolled back bundle {bundle_id} ({done['what']})"
             if done["action"] == "rolled back" else f"nothing to do: {done['reason']}")
    if done["action"] == "rolled back":
        log = SysLog()
        log(f"fleet: rolled back bundle {bundle_id} ({done['what']}) for the operator",
            loud=True)
        if not no_reboot:
            reboot_into(obj["device"], "the state before the trial", log)


@fleet.command()
@click.argument("bundle_file", metavar="BUNDLE",
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@CHANNEL
@click.option("--waves", required=True, help="Group names in rollout order, comma-separated.")
@click.option("--max-failed", type=click.IntRange(0), default=0, show_default=True,
              help="Failed trials a wave may have before the next wave is refused.")
@KEY
@EXPIRES
@JSON
def publish(bundle_file, channel, waves, max_failed, key, expires_in, as_json):
    """Put a signed bundle in the channel, promoted to its first wave.

    \b
    Example:
      snapshot fleet publish fix.snb --channel /srv/www/fleet --waves canary,rest --key k.sec
    """
    from snapshot.fleet import channel as fleets
    rollout = fleets.publish(channel, bundle_file, waves.split(","), key, max_failed,
                             expires_in)
    if as_json:
        print_json(rollout)
    else:
        echo(f"published bundle {rollout['id']} to {channel}: wave "
             f"{rollout['waves'][0]} may apply it")


@fleet.command()
@CHANNEL
@click.option("--report", "report_file", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The report `fleet report` wrote.")
@click.option("--bundle", "bundle_id", help="The rollout's bundle id, if the channel has several.")
@KEY
@EXPIRES
@JSON
def promote(channel, report_file, bundle_id, key, expires_in, as_json):
    """Let the next wave apply the rollout: refused while a wave before it has more failed
    trials than --max-failed allowed, or units that have not decided.

    \b
    Example:
      snapshot fleet promote --channel /srv/www/fleet --report report.json --key k.sec
    """
    from snapshot.fleet import channel as fleets
    done = fleets.promote(channel, fleets.read_report(report_file), key, bundle_id,
                          expires_in)
    if as_json:
        print_json(done)
    else:
        echo(f"bundle {done['id']}: waves {', '.join(done['promoted'])} may apply it")


@fleet.command()
@CHANNEL
@click.option("--bundle", "bundle_id", required=True, help="The rollout's bundle id.")
@KEY
@EXPIRES
@JSON
def withdraw(channel, bundle_id, key, expires_in, as_json):
    """Take a bundle's rollout out of the channel: no unit applies it any more (units that
    hold it keep it; `fleet rollback` on them rolls a trial back).

    \b
    Example:
      snapshot fleet withdraw --channel /srv/www/fleet --bundle 3f2a9c0d1e4b5a69 --key k.sec
    """
    from snapshot.fleet import channel as fleets
    done = fleets.withdraw(channel, key, bundle_id, expires_in)
    if as_json:
        print_json(done)
    else:
        echo(f"withdrew bundle {bundle_id} from {channel}")


@fleet.command()
@CHANNEL
@KEY
@EXPIRES
@JSON
def resign(channel, key, expires_in, as_json):
    """Sign the channel again, unchanged but one version higher and with a new expiry, so
    that units go on taking it: units refuse an expired channel, since a server that serves
    the same old channel forever would otherwise go unseen. Run it well before the expiry,
    e.g. daily from cron on the publishing machine.

    \b
    Example:
      snapshot fleet resign --channel /srv/www/fleet --key channel.sec --expires-in 7d
    """
    from snapshot.fleet import channel as fleets
    done = fleets.resign(channel, key, expires_in)
    if as_json:
        print_json(done)
    else:
        echo(f"signed channel version {done['version']} of {channel}, valid until "
             f"{fleets._utc(done['expires'])}")


@fleet.command()
@click.argument("statuses", nargs=-1, required=True,
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report here (for promote).")
@click.option("--bundle", "bundle_id", help="The bundle to report on [default: the one most "
                                            "units hold].")
@JSON
def report(statuses, output, bundle_id, as_json):
    """Merge units' `snapshot status --json` (one file per unit, named after it) into one
    report: each unit's group, bundle, trial and last rollback.

    A file that cannot be read, or is not a unit's status, is that unit's `{"error": ...}`
    (naming the file); the others are reported all the same, and the command then exits 1
    with one `Error:` line that names it.

    \b
    Example:
      snapshot fleet report status/*.json -o report.json
    """
    from snapshot.fleet import channel as fleets
    done = fleets.report({path.stem: fleets.read_status(path) for path in statuses},
                         bundle_id)
    if output:
        output.write_text(json.dumps(done, indent=2) + "\n")
    if as_json:
        print_json(done)
    else:
        _report_lines(done)
    unreadable = [unit["error"] for unit in done["units"].values() if "error" in unit]
    if unreadable:
        raise click.ClickException(f"{len(unreadable)} of {len(done['units'])} status files "
                                   f"could not be read: {'; '.join(unreadable)}")


def _report_lines(done: dict) -> None:
    echo(f"bundle {done['bundle']}")
    for name, unit in done["units"].items():
        if "error" in unit:
            echo(f"{name:20} unreadable: {unit['error']}")
            continue
        note = unit["last_rollback"] or {}
        polled = unit["fleet"]["last_poll"] or {}
        # A unit whose polls are refused (an expired or replayed channel, a bundle that is
        # not the one named) is stuck: the operator sees why.
        echo(f"{name:20} {unit['group'] or '-':10} {unit['outcome']:12} "
             f"{note.get('reason', '') if unit['outcome'] == 'failed' else ''}"
             + (f" poll refused: {polled.get('reason')}"
                if polled.get("action") == "refused" else ""))
