"""What the commands that store share, without click (the front door, door.py, runs `bundle
apply`): the locked chain and the progress line of a write, the boots a trial may have,
the compression asked for, and the report of what was stored."""
import sys

from snapshot import config, jobs
from snapshot.cli.plain import echo, human, print_json, write
from snapshot.errors import SnapshotError
from snapshot.store.chain import Chain, opened
from snapshot.store.format import COMPRESSIONS, MAX_ATTEMPTS, STATE_NAMES
from snapshot.store.format import TRIAL as TRIAL_STATE
from snapshot.text import printable

# Exit status of a save, push or convert whose directory changed while it was read.
INEXACT = 5


class Progress:
    """Blocks written so far, on one refreshed stderr line, when stderr is a terminal; with
    `free`, out of the free flash the write may take (a record bigger than that is refused
    before anything is written). In a background job (snapshot/jobs.py) the same line is
    the job's progress, which `status` shows."""

    def __init__(self, what: str, free: int | None = None):
        self.what = what
        self.free = free
        self.bytes = 0
        self.shown = sys.stderr.isatty()

    def __call__(self, amount: int) -> None:
        self.bytes += amount
        total = "" if self.free is None else f" (of {human(self.free)} free)"
        line = f"{self.what}: {human(self.bytes)} written{total}"
        if self.shown:
            write("\r" + printable(line), err=True)
        jobs.progress(line)

    def phase(self, line: str) -> None:
        """A step before the writes begin (`upgrade`: installing the packages)."""
        if self.shown:
            echo(f"{self.what}: {line}", err=True)
        jobs.progress(f"{self.what}: {line}", now=True)

    def done(self) -> None:
        if self.shown and self.bytes:
            echo(err=True)


class writing:   # lower case: used as a function, `with writing(obj, what) as (chain, progress)`
    """A locked, writable chain and a progress line for `what`. A class, not a
    contextlib.contextmanager: `bundle apply` comes through here, and contextlib's import
    would add to every apply on a router's CPU."""

    def __init__(self, obj, what: str):
        self._device = opened(obj["device"], writable=True)
        self._what = what
        self._progress = None

    def __enter__(self):
        dev = self._device.__enter__()
        try:
            chain = Chain(dev)
            self._progress = Progress(self._what, chain.free_bytes())
        except BaseException:
            self._device.__exit__(*sys.exc_info())
            raise
        return chain, self._progress

    def __exit__(self, *exc):
        try:
            self._progress.done()
        except BaseException:
            self._device.__exit__(*sys.exc_info())
            raise
        return self._device.__exit__(*exc)


def compression_of(name: str | None) -> int:
    name = name or config.load()["compression"]
    if name not in COMPRESSIONS:
        raise SnapshotError(f"compression {name!r} in the configuration is not one of "
                            f"{', '.join(sorted(COMPRESSIONS))}")
    return COMPRESSIONS[name]


def state_of(record) -> str:
    return STATE_NAMES[record.entry.state]


def on_trial(record) -> str:
    e = record.entry
    if e.state != TRIAL_STATE:
        return ""
    return (f", on trial: it boots at most {e.max_attempts} times unless `snapshot confirm` "
            f"confirms it")


def max_attempts_of(trial: bool) -> int | None:
    """The boots a new trial may have (`option max_attempts`), or None for no trial."""
    if not trial:
        return None
    return config.number(config.load(), "max_attempts", 1, MAX_ATTEMPTS)


def stored(capture, as_json: bool, info: dict, line: str) -> None:
    """Report a record just stored: `line`, or `info` as JSON, saying whether the capture
    was exact; each warning goes to stderr. Exit status 5 when it was not exact."""
    for warning in capture.warnings:
        echo(f"warning: {warning}", err=True)
    if as_json:
        print_json({**info, "exact": capture.exact, "warnings": capture.warnings})
    elif capture.exact:
        echo(line)
    else:
        echo(f"{line}, not exactly: {len(capture.warnings)} entries changed or could "
             f"not be read while they were stored")
    if not capture.exact:
        raise SystemExit(INEXACT)
