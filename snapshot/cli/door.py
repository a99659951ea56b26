"""The front door: the command lines a router runs most, started without importing click.

On a router's CPU, importing click costs about as much as Python's own start-up, and these
run often: `list` and `status` (a person, and LuCI through rpcd every few seconds) and
`mount` (every boot, from preinit). The door takes a command line only in the forms written
in FORMS, options given as click would take them; it calls the same body (hot.py) with the
same arguments, and prints errors as the click group does (plain.py). Every other command
line goes to the click group, `--help`, a mistake and anything the door is unsure of
included: the group then gives its own answer, usage errors and all.
tests/test_door.py runs each form both ways and compares what they print and exit with.
"""
import os

#: command: (its body in hot.py, its flags, its options that take a value), as listing.py
#: and boot.py define them for click.
FORMS = {
    "list": ("list_chain", {"--json": "as_json"}, ("--device",)),
    "status": ("show_status", {"--json": "as_json"}, ("--device",)),
    "mount": ("mount_root", {}, ("--device", "--root", "--target")),
}


def command(argv: list[str]):
    """The command `argv` asks for, ready to call, if the door takes its form; else None."""
    device = os.environ.get("SNAPSHOT_DEVICE") or None
    at = 0
    while at < len(argv) and argv[at].startswith("--device"):
        option = _option(argv, at)
        if option is None or option[0] != "--device":
            return None
        device, at = option[1], option[2]
    if at == len(argv) or argv[at] not in FORMS:
        return None
    chosen = argv[at]
    name, flags, valued = FORMS[chosen]
    given = dict.fromkeys(flags.values(), False)
    values = {}
    at += 1
    while at < len(argv):
        if argv[at] in flags:
            given[flags[argv[at]]] = True
            at += 1
            continue
        option = _option(argv, at)
        if option is None or option[0] not in valued:
            return None
        values[option[0]], at = option[1], option[2]
    if chosen == "mount" and not _mount_paths(values, given):
        return None
    from snapshot.cli import hot
    body = getattr(hot, name)
    return lambda: _run(body, device, values.get("--device"), given)


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


def _mount_paths(values: dict, given: dict) -> bool:
    """mount's --root and --target, as click's checks would pass them: both or neither;
    --root an existing directory; --target not something other than a directory."""
    from pathlib import Path   # here: list and status do without it
    root, target = values.get("--root"), values.get("--target")
    if (root is None) != (target is None):
        return False
    if root is not None and (not os.path.isdir(root)
                             or os.path.lexists(target) and not os.path.isdir(target)):
        return False
    given["root"] = Path(root) if root is not None else None
    given["target"] = Path(target) if target is not None else None
    return True


def _run(body, device: str | None, here: str | None, options: dict) -> None:
    """body(obj, **options), its errors as the click group reports them (common.Group)."""
    from mtd.errors import FlashOpenError, MtdError
    from snapshot.cli.plain import INTERRUPTED, echo, failure, interrupted
    from snapshot.errors import SnapshotError
    if device is None:
        from snapshot import config
        device = config.load()["device"] or None
    obj = {"device": here or device, "opens": True}
    try:
        body(obj, **options)
    except BrokenPipeError:
        raise   # the reader went away: nothing to tell it (snapshot.__main__)
    except KeyboardInterrupt:
        echo(interrupted(obj), err=True)
        raise SystemExit(INTERRUPTED) from None
    except (FlashOpenError, MtdError, SnapshotError, OSError) as e:
        message, status = failure(e)
        echo(f"Error: {message}", err=True)
        raise SystemExit(status) from None
