"""What a unit keeps of its fleet, read by `status` and by the poll: its `config fleet`
settings; on flash, the anchor's fleet entry (the highest channel version it accepted, that
channel's expiry, the bundles that failed here: FORMAT.md §3) and the last rollback's note;
in RAM, the last poll's outcome. Apart from the channel's code (snapshot/fleet/channel.py),
so that reading them imports nothing of the download, the bundles or the engine.
"""
from snapshot import config, kept
from snapshot.errors import SnapshotError
from snapshot.store import trial as trials
from snapshot.store.chain import Chain
from snapshot.store.format import Fleet

#: The last poll's outcome, for `status` (RAM: a poll's result is not worth a flash write).
LAST_POLL = "/tmp/snapshot/fleet.json"
DEFAULTS = {"channel": "", "group": "", "delay": "600", "confirm": "watch"}
CONFIRMERS = ("watch", "operator")


class FleetError(SnapshotError):
    """A channel that cannot be read or trusted, or a promotion refused."""


def settings(path: str | None = None) -> dict[str, str]:
    """The `config fleet` section's options over DEFAULTS."""
    name, found = next(((name, opts) for kind, name, opts in config.sections(path)
                        if kind == "fleet"), (None, {}))
    config.unknown(path, "fleet", name, found, DEFAULTS)
    options = {**DEFAULTS, **found}
    if options["confirm"] not in CONFIRMERS:
        raise FleetError(f"option confirm in `config fleet` is {options['confirm']!r}: it is "
                         f"{' or '.join(CONFIRMERS)}")
    return options


def failed_here(chain: Chain) -> set[str]:
    """The bundles whose trial failed on this unit: the fleet entry's, and the last note's
    (a rollback an older snapshot wrote names its bundle there only)."""
    failed = set(Fleet.of(chain.fleet).failed)
    if chain.note is not None and trials.bundle_of(chain.note.message):
        failed.add(trials.bundle_of(chain.note.message))
    return failed


def keep_poll(done: dict, when: float) -> None:
    """The poll's outcome in LAST_POLL (a temporary file renamed into place)."""
    try:
        kept.write(LAST_POLL, {"time": int(when), **done})
    except OSError:
        pass   # status then shows no poll: the poll itself did what it says


def last_poll() -> dict | None:
    return kept.read(LAST_POLL)


def status(chain: Chain, fleet: dict) -> dict:
    """The `fleet` part of `status --json`: the unit's group and channel, what it keeps on
    flash (the highest channel version it accepted, that channel's expiry, the bundles that
    failed here) and the last poll's outcome this boot."""
    memory = Fleet.of(chain.fleet)
    return {"group": fleet["group"] or None, "channel": fleet["channel"] or None,
            "channel_version": memory.version or None,
            "channel_expires": memory.expires or None,
            "failed_here": sorted(failed_here(chain)), "last_poll": last_poll()}
