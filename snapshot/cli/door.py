"""The front door: the command lines a router runs most, started without importing click.

On a router's CPU, importing click costs about as much as Python's own start-up, and these
run often: `list` and `status` (a person, and LuCI through rpcd every few seconds), `mount`
(every boot, from preinit), `bundle apply` (a fleet's rollout) and `unpack`. The door takes
a command line only in the forms FORMS writes out, options given as click would take them
and passing click's checks; it calls the same body (hot.py) with the same arguments, and
prints errors as the click group does (plain.py). Every other command line goes to the click
group, `--help`, a mistake and anything the door is unsure of included: the group then gives
its own answer, usage errors and all.
tests/test_door.py runs each form both ways and compares what they print and exit with.

run() is the command itself: /sbin/snapshot (the feed's launcher), the installed script and
`python -m snapshot` all start there, without a module between (each module costs a
router's CPU milliseconds to find and load).
"""
import gc
import os
import sys

# How an option's value is taken, as the click option's type takes it; a value the type
# would refuse makes the door decline the command line (click then says why).
INTEGER = "integer"
PLACE = "place"         # click.Path(file_okay=False): a path that is not an existing file
DIRECTORY = "directory"  # click.Path(file_okay=False, exists=True): an existing directory


class Form:
    """A command as the door takes it: its body in hot.py, its flags and its options (each
    with the body's argument name), the options it needs, a positional argument's name, and
    the options that go together or not at all."""

    def __init__(self, body: str, flags=None, options=None, required=(), argument=None,
                 together=()):
        self.body = body
        self.flags = flags or {}
        self.options = options or {}
        self.required = required
        self.argument = argument
        self.together = together


#: The forms, by the command's words; as listing.py, chain.py, boot.py and bundle.py define
#: them for click (tests/test_door.py checks that each option is one of the command's).
FORMS = {
    ("list",): Form("list_chain", flags={"--json": "as_json"}),
    ("status",): Form("show_status", flags={"--json": "as_json"}),
    ("mount",): Form("mount_root", options={"--root": ("root", DIRECTORY),
                                            "--target": ("target", PLACE)},
                     together=("root", "target")),
    ("unpack",): Form("unpack_chain", flags={"--force": "force"},
                      options={"--to": ("dest", PLACE), "--upto": ("upto", INTEGER),
                               "--volatile-to": ("volatile_to", PLACE),
                               "--rom": ("rom", DIRECTORY)},
                      required=("dest",)),
    ("bundle", "apply"): Form("apply_bundle", flags={"--no-reboot": "no_reboot",
                                                     "--json": "as_json"},
                              argument="source"),
}


def run() -> None:
    """The `snapshot` command (the library's callers use snapshot.cli.main)."""
    # Nothing the command imports is ever garbage. No collections while importing, and
    # frozen afterwards, so later collections and the interpreter's exit skip all of it
    # (together about a tenth of a short command).
    gc.disable()
    start = command(sys.argv[1:])   # list, status, mount, unpack, bundle apply: without click
    if start is None:
        from snapshot.cli import main as start
    gc.freeze()
    gc.enable()
    try:
        start()
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`snapshot list | head -1`): exit
        # quietly, and keep the interpreter from complaining while it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def command(argv: list[str]):
    """The command `argv` asks for, ready to call, if the door takes its form; else None."""
    device = os.environ.get("SNAPSHOT_DEVICE") or None
    at = 0
    while at < len(argv) and argv[at].startswith("--device"):
        option = _option(argv, at)
        if option is None or option[0] != "--device":
            return None
        device, at = option[1], option[2]
    words = next((w for w in FORMS if tuple(argv[at:at + len(w)]) == w), None)
    if words is None:
        return None
    form = FORMS[words]
    taken = _arguments(form, argv[at + len(words):])
    if taken is None:
        return None
    here, arguments = taken
    from snapshot.cli import hot
    body = getattr(hot, form.body)
    return lambda: _run(body, device, here, arguments)


def _arguments(form: Form, argv: list[str]) -> tuple[str | None, dict] | None:
    """(the --device given after the command, the body's arguments), or None."""
    arguments = dict.fromkeys(form.flags.values(), False)
    arguments.update(dict.fromkeys(name for name, _ in form.options.values()))
    here = None
    at = 0
    while at < len(argv):
        word = argv[at]
        if word in form.flags:
            arguments[form.flags[word]] = True
            at += 1
        elif not word.startswith("-") and form.argument and form.argument not in arguments:
            arguments[form.argument] = word
            at += 1
        else:
            option = _option(argv, at)
            if option is None:
                return None
            name, value, at = option
            if name == "--device":
                here = value
            elif name in form.options:
                key, kind = form.options[name]
                arguments[key] = _value(kind, value)
                if arguments[key] is None:
                    return None
            else:
                return None
    if form.argument and form.argument not in arguments:
        return None
    if any(arguments[key] is None for key in form.required):
        return None
    present = [arguments[key] is not None for key in form.together]
    if any(present) and not all(present):
        return None
    return here, arguments


def _option(argv: list[str], at: int) -> tuple[str, str, int] | None:
    """(option, value, index after it) for `--name value` or `--name=value` at argv[at]."""
    name, equals, value = argv[at].partition("=")
    if not name.startswith("--"):
        return None
    if equals:
        return (name, value, at + 1) if value else None
    if at + 1 == len(argv) or not argv[at + 1]:
        return None
    return name, argv[at + 1], at + 2


def _value(kind: str, text: str):
    """The value of an option of `kind` (a path as a string, where click gives a pathlib.Path:
    the bodies take either), or None where its click type would refuse it."""
    if kind == INTEGER:
        try:
            return int(text)
        except ValueError:
            return None
    if kind == DIRECTORY and not os.path.isdir(text) or \
            kind == PLACE and os.path.lexists(text) and not os.path.isdir(text):
        return None
    return text


def _run(body, device: str | None, here: str | None, arguments: dict) -> None:
    """body(obj, **arguments), its errors as the click group reports them (common.Group)."""
    from mtd.errors import FlashOpenError, MtdError
    from snapshot.cli.plain import INTERRUPTED, echo, failure, interrupted
    from snapshot.errors import SnapshotError
    if device is None:
        from snapshot import config
        device = config.load()["device"] or None
    obj = {"device": here or device, "opens": True}
    try:
        body(obj, **arguments)
    except BrokenPipeError:
        raise   # the reader went away: nothing to tell it (run())
    except KeyboardInterrupt:
        echo(interrupted(obj), err=True)
        raise SystemExit(INTERRUPTED) from None
    except (FlashOpenError, MtdError, SnapshotError, OSError) as e:
        message, status = failure(e)
        echo(f"Error: {message}", err=True)
        raise SystemExit(status) from None
