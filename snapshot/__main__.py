"""The `snapshot` command: the installed script and `python -m snapshot` both start here."""
import gc
import sys


def run() -> None:
    """The `snapshot` command (the library's callers use snapshot.cli.main)."""
    # Nothing the command imports is ever garbage. No collections while importing, and
    # frozen afterwards, so later collections and the interpreter's exit skip all of it
    # (together about a tenth of a short command).
    gc.disable()
    from snapshot.cli.door import command
    start = command(sys.argv[1:])   # list, status, mount: without click
    if start is None:
        from snapshot.cli import main as start
    gc.freeze()
    gc.enable()
    try:
        start()
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`snapshot list | head -1`): exit
        # quietly, and keep the interpreter from complaining while it flushes stdout.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    run()
