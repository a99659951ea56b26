"""The commands of changes on trial: confirm, health, watch and status."""
import json
from contextlib import contextmanager

import click

from snapshot import operations
from snapshot.cli.common import (DEVICE, JSON, UNHEALTHY, echo, human, main, reading, when,
                                 writing)
from snapshot.operations import opened
from snapshot.store.chain import Chain

@main.command()
@JSON
@DEVICE
@click.pass_obj
def confirm(obj, as_json):
    """Confirm the change on trial: it becomes a normal snapshot or volatile record.

    What was kept in case the trial failed is dropped. With nothing on trial it says so and
    exits 0, writing nothing (--json: "confirmed" is null).

    \b
    Example:
      snapshot confirm
    """
    with writing(obj, "confirm") as (chain, _):
        confirmed = operations.confirm(chain)
    if as_json:
        click.echo(json.dumps({"confirmed": confirmed}, indent=2))
    else:
        echo(f"confirmed {confirmed}" if confirmed else "nothing is on trial")


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
    from snapshot.health import checks
    results = checks.run(checks.configured())
    checks.keep(results)
    if as_json:
        click.echo(json.dumps({"healthy": checks.healthy(results),
                               "results": [r.as_dict() for r in results]}, indent=2))
    else:
        for r in results:
            echo(f"{'pass' if r.ok else 'FAIL'}  {r.name}"
                 f"{'' if r.required else ' (wanted)'}: {r.detail}")
        if not results:
            echo("no health checks are configured")
    if not checks.healthy(results):
        raise SystemExit(UNHEALTHY)


@main.command()
@click.option("--no-reboot", is_flag=True, help="Do everything but the reboot after a rollback.")
@DEVICE
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
    from snapshot.health import checks, watch as watching
    from snapshot.reboot import reboot_into
    settings = watching.Settings.load()
    log = watching.SysLog()

    @contextmanager
    def open_chain():
        with opened(obj["device"], writable=True) as dev:
            yield Chain(dev)
    decision = watching.watch(open_chain, checks.configured(), settings, log)
    echo(f"{decision.verdict} {decision.what}: {decision.reason}"
         if decision.what else decision.reason)
    if decision.verdict == "rolled back":
        watching.run_hooks(settings.rollback_dir, decision, log)
        if not no_reboot:
            reboot_into(obj["device"], "the state before the trial", log)
        raise SystemExit(UNHEALTHY)


@main.command()
@JSON
@DEVICE
@click.pass_obj
def status(obj, as_json):
    """Show the chain, any change on trial, the last rollback, the last health checks and the
    last background job started over ubus (push, save).

    \b
    Example:
      snapshot status --json
    """
    from snapshot import jobs
    from snapshot.fleet import channel
    from snapshot.health import checks
    from snapshot.packages import upgrade as upgrades
    with reading(obj) as dev:
        chain = Chain(dev)
        info = operations.status(chain)
        info["fleet"] = channel.status(chain, channel.settings())
    info["health"] = checks.last()
    info["job"] = jobs.last()
    info["unsaved_change"] = upgrades.unsaved()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    echo(f"chain: {info['snapshots']} snapshots, "
         + ("a volatile record" if info["volatile"] else "no volatile record")
         + f", {human(info['free_bytes'])} free")
    trial = info["trial"]
    echo(f"on trial: {trial['what']}, boot {trial['attempts']} of "
         f"{trial['max_attempts']}" if trial else "on trial: nothing")
    applied = info["bundle"]
    if applied:
        echo(f"bundle: {applied['id']} (snapshot {applied['snapshot']}, "
             f"{applied['state']}): {applied['message']}")
    note = info["last_rollback"]
    echo(f"last rollback: {when(note['time'])}: {note['reason']}" if note
         else "last rollback: none")
    results = info["health"]
    if results:
        failing = [r["name"] for r in results["results"] if not r["ok"]]
        echo(f"health at {when(results['time'])}: "
             + (f"failing: {', '.join(failing)}" if failing else "every check passed"))
    job = info["job"]
    if job:
        result = job["result"] or {}
        echo(f"background job {job['id']} ({job['method']}): {job['state']}"
             + (f": {result['error']}" if "error" in result else ""))
    change = info["unsaved_change"]
    if change:
        echo(f"unsaved package change: {change['what']} is installed in RAM but not "
             f"stored ({change['error']}); a reboot discards it")
    for layer, used in info["ram"].items():
        if used is not None:
            echo(f"RAM in {layer}: {human(used)}")
    channel, polled = info["fleet"], info["fleet"]["last_poll"]
    if channel["channel_version"]:
        echo(f"fleet channel: version {channel['channel_version']} accepted, valid until "
             f"{when(channel['channel_expires'])}")
    if polled:
        echo(f"fleet poll at {when(polled['time'])}: {polled['action']}"
             + (f": {polled['reason']}" if polled.get("reason") else ""))
