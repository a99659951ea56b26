"""The commands of changes on trial: confirm, health and watch."""
from contextlib import contextmanager

import click

from snapshot import operations
from snapshot.cli.common import DEVICE, JSON, UNHEALTHY, main
from snapshot.cli.plain import echo, print_json
from snapshot.cli.stores import writing
from snapshot.errors import NoChain
from snapshot.store.chain import Chain, opened
from snapshot.text import SysLog

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
        print_json({"confirmed": confirmed})
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
    from snapshot.health import results as kept
    kept.keep(results)
    if as_json:
        print_json({"healthy": checks.healthy(results),
                    "results": [r.as_dict() for r in results]})
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
    logs to syslog and reboots. With nothing on trial, or no chain on the device (a router
    still on jffs2), it ends at once, writing nothing: a confirmed state is never rolled
    back by it.

    \b
    Exit status: 0 confirmed or nothing on trial, 5 rolled back, 1 an error.
    Example:
      snapshot watch --no-reboot
    """
    from snapshot.health import checks, watch as watching
    from snapshot.reboot import reboot_into
    try:
        with opened(obj["device"]) as dev:
            Chain(dev)
    except NoChain as e:
        echo(f"nothing to watch: {e}")
        return
    settings = watching.Settings.load()
    log = SysLog()

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
