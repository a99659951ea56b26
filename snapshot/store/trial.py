"""Trial bookkeeping: a change on trial, as the anchor lists it, and what each decision about
it does to the directory.

A trial is a snapshot (`push --trial`) or a volatile record (`save --trial`) whose directory
entry says TRIAL, with the boots it has had and may have (FORMAT.md §3). The state before it
stays on flash until the trial is decided: the confirmed snapshots, and the volatile record
it replaced, kept and marked FALLBACK. Each function below returns the directory a decision
leaves, for one chain.commit(): a power cut leaves the decision made or not made, never half
of it (DESIGN.md §10).
"""
from snapshot.errors import SnapshotError
from snapshot.store.chain import Chain, Record, describe
from snapshot.store.format import (CONFIRMED, FAILED, MAX_ATTEMPTS, MAX_MESSAGE, NOTE, SNAPSHOT,
                                   TRIAL, VOLATILE, DirEntry, Fleet, is_bundle_id)

#: How a snapshot that came from a bundle names it, at the start of its message:
#: "bundle ID: " (ID, format.is_bundle_id), then the bundle's own message.
BUNDLE_TAG, BUNDLE_TAG_LENGTH = "bundle ", len("bundle 0123456789abcdef: ")


def bundle_of(message: str) -> str | None:
    """The bundle a snapshot's (or a note's) message names, or None."""
    found = message[len(BUNDLE_TAG):BUNDLE_TAG_LENGTH - 2]
    tagged = message.startswith(BUNDLE_TAG) and message[BUNDLE_TAG_LENGTH - 2:].startswith(": ")
    return found if tagged and is_bundle_id(found) else None


def bundle_applied(chain: Chain) -> dict | None:
    """The newest snapshot that came from a bundle: its bundle and where it stands."""
    for index in range(len(chain.snapshots) - 1, -1, -1):
        e = chain.snapshots[index].entry
        found = bundle_of(e.message)
        if found:
            return {"id": found, "snapshot": index + 1,
                    "state": {CONFIRMED: "confirmed", TRIAL: "trial"}.get(e.state, "failed"),
                    "message": e.message[BUNDLE_TAG_LENGTH:]}
    return None


class TrialPending(SnapshotError):
    """A write that a pending trial does not allow."""


def name(chain: Chain, record: Record) -> str:
    return describe(record, chain.records.index(record))


def refuse_while_pending(chain: Chain, what: str) -> None:
    trial = chain.trial
    if trial is not None:
        raise TrialPending(f"{name(chain, trial)} is on trial; confirm it (`snapshot "
                           f"confirm`) or roll it back (`snapshot rollback`) before {what}")


def start(entries: list[DirEntry], new: DirEntry, max_attempts: int) -> list[DirEntry]:
    """`entries` (the chain as it is, no trial pending) with `new` on trial: a new snapshot
    goes after the snapshots, a new volatile record last. The volatile record there was is
    kept, marked as what comes back if the trial fails."""
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise SnapshotError(f"max_attempts {max_attempts} is not between 1 and {MAX_ATTEMPTS}")
    snapshots = [e for e in entries if e.type == SNAPSHOT]
    kept = [e.marked(fallback=True) for e in entries if e.type == VOLATILE]
    trial = new.marked(state=TRIAL, attempts=0, max_attempts=max_attempts)
    if new.type == SNAPSHOT:
        return snapshots + [trial] + kept
    return snapshots + kept + [trial]


def count_boot(chain: Chain) -> list[DirEntry]:
    """The directory with one more boot counted for the pending trial."""
    return [e.marked(attempts=e.attempts + 1) if e.state == TRIAL else e
            for e in (r.entry for r in chain.records)]


def confirm(chain: Chain) -> list[DirEntry]:
    """The trial becomes a normal record; what was kept for a failure goes."""
    return [e.marked(state=CONFIRMED, attempts=0, max_attempts=0) if e.state == TRIAL else e
            for e in (r.entry for r in chain.records) if not e.fallback]


def fail(chain: Chain, reason: str, when: int) -> tuple[list[DirEntry], DirEntry,
                                                       DirEntry | None]:
    """The directory after the trial failed, the note that says why, and the fleet entry
    (FORMAT.md §3): a bundle's trial joins the bundles that failed here, in the same commit,
    so that no poll applies it again. The trial is marked failed (kept, so `list` shows it,
    until it is rolled back or a write replaces it); the state before it comes back: what
    was kept for a failure is normal again, and a volatile record saved on top of a snapshot
    trial goes with it."""
    trial = chain.trial
    entries = []
    for record in chain.records:
        e = record.entry
        if e.state == TRIAL:
            entries.append(e.marked(state=FAILED))
        elif e.fallback:
            entries.append(e.marked(fallback=False))
        elif not (trial.entry.type == SNAPSHOT and e.type == VOLATILE):
            entries.append(e)
    # A bundle's trial names the bundle, so that a fleet tool reading the note knows which
    # one failed here (snapshot/fleet/bundle.py).
    bundle = bundle_of(trial.entry.message)
    fleet = chain.fleet
    if bundle:
        fleet = Fleet.of(chain.fleet).failing(bundle).entry()
        tag = trial.entry.message[:BUNDLE_TAG_LENGTH]
        if not reason.startswith(tag):
            reason = tag + reason
    reason = reason.encode()[:MAX_MESSAGE].decode(errors="ignore")
    return entries, DirEntry(NOTE, 0, trial.entry.seq, 0, when, 0, 0, 0, (), reason), fleet


def drop(chain: Chain) -> list[DirEntry]:
    """The directory without the trial, pending or failed, and without anything saved on
    top of it: exactly the state before the trial."""
    record = chain.trial or chain.failed
    entries = []
    for r in chain.records:
        e = r.entry
        if r is record or (record.entry.type == SNAPSHOT and e.type == VOLATILE
                           and not e.fallback and record.entry.state == TRIAL):
            continue
        entries.append(e.marked(fallback=False) if e.fallback else e)
    return entries


def settled(entries: list[DirEntry]) -> list[DirEntry]:
    """`entries` as a directory may list them: a volatile record kept for a trial that is no
    longer there (a repair dropped it as damaged) is a normal one again."""
    if any(e.state == TRIAL for e in entries):
        return entries
    return [e.marked(fallback=False) if e.fallback else e for e in entries]
