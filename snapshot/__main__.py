"""The `snapshot` command: the installed script and `python -m snapshot` both start here."""
import gc


def run() -> None:
    """The `snapshot` command (the library's callers use snapshot.cli.main)."""
    # Nothing the command imports is ever garbage. No collections while importing, and
    # frozen afterwards, so later collections and the interpreter's exit skip all of it
    # (together about a tenth of a short command).
    gc.disable()
    from snapshot.cli import main
    gc.freeze()
    gc.enable()
    main()


if __name__ == "__main__":
    run()
