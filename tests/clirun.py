"""Running the CLI in-process the way the tests need it, asserting it never tracebacks."""
from click.testing import CliRunner

from snapshot.cli import main


def invoke(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    # A traceback would surface as an exception other than SystemExit.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def commands() -> dict:
    """Every top-level command by name, its family module imported (the group imports one
    when it is called: snapshot/cli/common.py, Group)."""
    return {name: main.get_command(None, name) for name in main.list_commands(None)}


def run(image, *args):
    """A command on --device image."""
    return invoke("--device", image, *args)


def ok(image, *args) -> str:
    result = run(image, *args)
    assert result.exit_code == 0, result.output
    return result.output


def error_of(result, code: int = 1) -> str:
    """The single `Error: ...` line of a failed command."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]
