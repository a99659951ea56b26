"""The rpcd exec plugin behind `ubus call snapshot METHOD` (/usr/libexec/rpcd/snapshot runs
`main` under `python3 -I`; the ACL groups are in /usr/share/rpcd/acl.d/snapshot.json).

rpcd runs `PLUGIN list` once for the methods and their arguments, then `PLUGIN call METHOD`
for each call, with the arguments as a JSON object on stdin; whatever JSON object the plugin
prints is the reply. Each method runs its `snapshot ... --json` command in-process on the
configured device, so a reply is exactly what that command prints. rpcd ignores exit
statuses, so an error is a reply too: `{"error": MESSAGE, "code": STATUS}`, the one line and
the exit status the command would have given (2 for arguments it refuses). Replies the
command prints with a non-zero status stay as printed: `check` on a damaged chain
(`"clean": false`), a push that was not exact (`"exact": false`).

rpcd kills a plugin after 120 s, so push, save, squash, repair and upgrade start a background
job and answer at once with `{"started": METHOD, "job": ID}`; `status` reports the job, its
progress line while it runs and, once done, its reply (snapshot/jobs.py).

LuCI asks for `status` every few seconds, each time a new process on the router's CPU: the
plugin is started with -c rather than -m (runpy), and this module imports no typing,
contextlib or traceback (the last only for a bug's report), and reads and writes JSON without
the json module (mtd/jsontext.py).
"""
import io
import sys

from mtd.fields import fields
from mtd.jsontext import dumps, loads

# An argument's type as rpcd reads it from `list`: a string, a 32-bit integer, a boolean.
STRING, INTEGER, BOOLEAN = "str", 32, True


class Method(fields("Method", "command arguments background", defaults=(False,))):
    # command: the CLI command (a list of words), printing JSON; arguments: ubus argument ->
    # (type, the command's option, or None for its argument); background: run as a job.
    __slots__ = ()


SOURCE = {"from": (STRING, "--from"), "trial": (BOOLEAN, "--trial"),
          "compression": (STRING, "--compression")}
METHODS = {
    "list": Method(["list", "--json"], {}),
    "check": Method(["check", "--json"], {}),
    "repair": Method(["check", "--repair", "--json"], {}, True),
    "show": Method(["show", "--json"], {"index": (INTEGER, None), "uci": (BOOLEAN, "--uci")}),
    "squash": Method(["squash", "--json"], {"upto": (INTEGER, "--upto")}, True),
    "status": Method(["status", "--json"], {}),
    "confirm": Method(["confirm", "--json"], {}),
    "rollback": Method(["rollback", "--json"], {"to": (INTEGER, "--to")}),
    "push": Method(["push", "--json"], {**SOURCE, "message": (STRING, "--message")}, True),
    "save": Method(["save", "--json"], SOURCE, True),
    "upgrade": Method(["upgrade", "--json"], {"dry_run": (BOOLEAN, "--dry-run"),
                                              "no_reboot": (BOOLEAN, "--no-reboot")}, True),
}
USAGE = 2
SESSION = "ubus_rpc_session"


def signatures() -> dict:
    """What `PLUGIN list` prints: each method and its arguments' types."""
    return {name: {arg: kind for arg, (kind, _) in m.arguments.items()}
            for name, m in METHODS.items()}


def call(name: str, arguments: dict) -> str:
    """The reply to `PLUGIN call NAME`, as JSON text."""
    method = METHODS.get(name)
    if method is None:
        return _error(f"no method {name!r} (there are {', '.join(METHODS)})", USAGE)
    try:
        argv = method.command + _options(method, arguments)
    except ValueError as e:
        return _error(str(e), USAGE)
    if not method.background:
        return run(argv)
    from snapshot import jobs
    from snapshot.cli.plain import path_error
    from snapshot.errors import SnapshotError
    try:
        job = jobs.start(name, lambda: loads(run(argv)))
    except SnapshotError as e:
        return _error(str(e), e.exit_code)
    except OSError as e:
        return _error(path_error(e), 1)
    return _reply({"started": name, "job": job})


def _options(method: Method, arguments: dict) -> list[str]:
    """The command's options and arguments for the call's arguments (null ones are left
    out)."""
    options, given = [], []
    for arg, value in arguments.items():
        # The HTTP gateway (uhttpd's ubus handler) adds the caller's session to every call's
        # arguments, after checking its ACL; the methods have no use for it.
        if arg == SESSION:
            continue
        if arg not in method.arguments:
            takes = ", ".join(method.arguments) or "none"
            raise ValueError(f"unknown argument {arg!r} (arguments: {takes})")
        kind, option = method.arguments[arg]
        if value is None:
            continue
        if kind is BOOLEAN:
            if not isinstance(value, bool):
                raise ValueError(f"argument {arg!r} is true or false, not {value!r}")
            options += [option] if value else []
        elif isinstance(value, (dict, list)):
            raise ValueError(f"argument {arg!r} is an object or an array")
        elif option is None:
            given.append(str(value))
        else:
            options += [option, str(value)]
    # After "--": a value is never taken for an option (a negative number, say).
    return options + (["--", *given] if given else [])


def run(argv: list[str]) -> str:
    """What `snapshot ARGV` prints, the command run in this process; an error as `_error`
    gives it. `list` and `status`, which LuCI asks for every few seconds, start without
    click (snapshot/cli/door.py)."""
    from snapshot.cli.door import command
    start = command(argv) or (lambda: _click(argv))
    out, err = io.StringIO(), io.StringIO()
    stdout, stderr = sys.stdout, sys.stderr
    try:
        sys.stdout, sys.stderr = out, err
        try:
            status = start() or 0
        finally:
            sys.stdout, sys.stderr = stdout, stderr
    except SystemExit as e:
        status = e.code
    except Exception as e:
        # A bug: rpcd would answer "No response"; say what broke, and keep the traceback.
        import traceback
        traceback.print_exc()
        return _error(f"internal error: {type(e).__name__}: {e}", 1)
    printed = out.getvalue()
    try:
        loads(printed)
    except ValueError:
        lines = err.getvalue().strip().splitlines() or [f"exit status {status}"]
        return _error(lines[-1].removeprefix("Error: "), status or 1)
    return printed


def _click(argv: list[str]) -> int | None:
    """`snapshot ARGV` through the click group; its usage errors and refusals end as the
    command line ends them: the `Error:` line last on stderr, and the exit status."""
    import click
    from snapshot.cli import main
    try:
        return main.main(argv, prog_name="snapshot", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None


def _error(message: str, code: int) -> str:
    return _reply({"error": message, "code": code})


def _reply(reply: dict) -> str:
    return dumps(reply, indent=2) + "\n"


def main(argv: list[str]) -> int:
    if argv == ["list"]:
        sys.stdout.write(_reply(signatures()))
        return 0
    if len(argv) == 2 and argv[0] == "call":
        try:
            arguments = loads(sys.stdin.read() or "{}")
        except ValueError as e:
            arguments = e
        if not isinstance(arguments, dict):
            sys.stdout.write(_error(f"the arguments are not a JSON object: {arguments}", USAGE))
        else:
            sys.stdout.write(call(argv[1], arguments))
        return 0
    sys.stderr.write("usage: snapshot.rpcd list | call METHOD (arguments as JSON on stdin)\n")
    return USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
