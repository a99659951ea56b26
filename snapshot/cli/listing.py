"""The commands that report what the chain holds, reading record headers only: list and
status. They import nothing of the tree layer or the wings until they need them: on a
router's CPU, start-up is most of their run."""
import click

from snapshot.cli import hot
from snapshot.cli.common import DEVICE, JSON, main


@main.command("list")
@JSON
@DEVICE
@click.pass_obj
def list_cmd(obj, as_json):
    """List the snapshots and the volatile record (reads record headers only), with the
    flash each takes (whole blocks) and what is used and free.

    \b
    Example:
      snapshot list --json
    """
    hot.list_chain(obj, as_json)


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
    hot.show_status(obj, as_json)
