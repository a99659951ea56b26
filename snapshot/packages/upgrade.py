"""`snapshot upgrade` and the automatic snapshots of package transactions (DESIGN.md §12).

On a chain-booted router the package manager writes only into the volatile layer, RAM: a
transaction that fails, or that a power cut stops, is gone at the next boot. Flash is written
once, after the transaction, by transaction.store(): one commit, so a cut leaves the chain
without the change or with it, on trial.

`upgrade`: update the feeds, find what would change, refuse before installing anything when
the result could not be kept (flash or RAM too small), upgrade, then store the change on trial
and reboot into it; the trial machinery confirms it or rolls it back.

The hooks (apk's commit hooks, the opkg wrapper) call `pre_commit` and `post_commit` around a
transaction the user runs. They never fail the transaction for their own reasons, never call
the package manager, and are idempotent: apk runs them for transactions that change nothing,
twice when it upgrades itself first, and post-commit after failed installs too. An automatic
snapshot still on trial absorbs the next transaction (the earliest `before` is kept until the
trial is decided), so a burst of installs is one snapshot naming them all.
"""
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from snapshot.errors import ChainDamaged, SnapshotError
from snapshot.packages import state, transaction
from snapshot.packages.feeds import Change, PackageError, PackageManager
from snapshot.store import trial as trials
from snapshot.store.chain import Chain, commit, opened

#: RAM an upgrade needs in the volatile layer beyond the packages and their database.
RAM_RESERVE = 64 * 1024


class NoFlash(SnapshotError):
    exit_code = 14


class NoRam(SnapshotError):
    exit_code = 15


class NotKept(SnapshotError):
    """The package change stands in RAM, but could not be stored on flash."""
    exit_code = 16


@dataclass
class Outcome:
    changes: list[Change] = field(default_factory=list)
    snapshot: int | None = None     # the number of the snapshot on trial
    size: int = 0
    message: str = ""


def _free(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def plan(device: str | None, pm: PackageManager) -> list[Change]:
    """Update the feeds and say what an upgrade would change; writes nothing to flash."""
    with opened(device) as flash:
        chain = Chain(flash)
        trials.refuse_while_pending(chain, "upgrading")
        if chain.problems:
            raise ChainDamaged(f"{chain.problems[0]}; run `snapshot check --repair` first")
    pm.update()
    return pm.pending()


def check_room(device: str | None, pm: PackageManager, changes: list[Change],
               upper: Path) -> None:
    """Refuse, before anything is installed, an upgrade whose result could not be kept: the
    snapshot it makes must fit in the free flash, and the packages in the RAM layer."""
    sizes = pm.sizes(changes)
    download = sum(sizes[c.name].download for c in changes if c.name in sizes)
    installed = sum(sizes[c.name].installed for c in changes if c.name in sizes)
    with opened(device) as flash:
        chain = Chain(flash)
        free = chain.free_bytes()
        erasesize = flash.geometry.erasesize
        volatile = chain.volatile.entry.payload_length if chain.volatile else 0
    # The snapshot holds the new files, about as compressed as the packages were; the copy
    # of the volatile record goes beside it; each record rounds up to whole blocks.
    need = download + download // 5 + volatile + 3 * erasesize
    if need > free:
        raise NoFlash(f"the upgrade needs about {_human(need)} of free flash for its snapshot "
                      f"and {_human(free)} is free; nothing was installed (`snapshot squash` "
                      f"or `snapshot rollback` frees some)")
    room = _free(upper)
    # The package files, their database rewritten beside the old one, and room for what a
    # transaction writes besides (scripts, lock files, tmpfs's page per small file).
    database = sum(_size(pm.root / rel) for rel in pm.database)
    need_ram = installed + installed // 10 + 2 * database + RAM_RESERVE
    if need_ram > room:
        raise NoRam(f"the packages need about {_human(need_ram)} in the RAM layer "
                    f"({upper}) and {_human(room)} is free; nothing was installed")
    tmp = _free(Path("/tmp"))
    if download > tmp:
        raise NoRam(f"the downloads need about {_human(download)} in /tmp and {_human(tmp)} "
                    f"is free; nothing was installed")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _human(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def upgrade(device: str | None, pm: PackageManager, changes: list[Change], upper: Path,
            max_attempts: int, compression: int, progress=None,
            state_dir: str = state.STATE_DIR) -> Outcome:
    """Install `changes` (from plan()), then store what the transaction changed as a snapshot
    on trial. A failed transaction raises its PackageError; what it left in RAM is recorded
    as unsaved."""
    mark = state.state_file(state.UPGRADING, state_dir)
    state.write(mark, {"pid": os.getpid(), "started": int(time.time())})
    try:
        before_db, before = pm.installed(), transaction.manifest(upper)
        try:
            pm.upgrade(changes)
        except PackageError as e:
            if transaction.manifest(upper) != before:
                state.record_unsaved(state_dir, "a partial package upgrade", str(e))
            raise
        done = pm.changes(before_db, pm.installed())
        paths, gone = transaction.changed(before, transaction.manifest(upper))
        text = transaction.message([str(c) for c in done or changes], "upgrade")
        try:
            with opened(device, writable=True) as flash:
                chain = Chain(flash)
                entry = transaction.store(chain, upper, paths, gone, text, max_attempts,
                                          compression, progress)
                number = len(chain.snapshots)
        except (SnapshotError, OSError) as e:
            state.record_unsaved(state_dir, text, str(e))
            raise NotKept(f"the upgrade is installed in RAM but could not be stored: {e}; a "
                          f"reboot discards it") from None
        state.forget(state.state_file(state.UNSAVED, state_dir))
        return Outcome(done or changes, number, entry.payload_length, text)
    finally:
        state.forget(mark)


# -- the hooks ---------------------------------------------------------------------------------

def pre_commit(device: str | None, pm: PackageManager, upper: Path,
               state_dir: str = state.STATE_DIR) -> None:
    """Note the state before a transaction. Kept as it is while an automatic snapshot made
    from it is still on trial (it absorbs this transaction), or while a transaction that
    stored nothing is still open."""
    if state.upgrading(state_dir):
        return
    path = state.state_file(state.PENDING, state_dir)
    pending = state.read(path)
    if pending is not None and _still_absorbing(device, pending):
        return
    state.write(path, {"installed": pm.installed(), "before": transaction.manifest(upper),
                  "started": int(time.time())})


def _still_absorbing(device: str | None, pending: dict) -> bool:
    """Whether `pending` is the before-state of an automatic snapshot still on trial, or of a
    transaction whose post-commit has not run."""
    pushed = pending.get("pushed")
    if pushed is None:
        return pending.get("open", True) and time.time() - pending.get("started", 0) < 3600
    try:
        with opened(device) as flash:
            trial = Chain(flash).trial
    except (SnapshotError, OSError):
        return False
    return trial is not None and trial.entry.gen == pushed


def post_commit(device: str | None, pm: PackageManager, upper: Path, max_attempts: int,
                compression: int, log, state_dir: str = state.STATE_DIR) -> str | None:
    """Store what the transactions since the noted state changed, as one snapshot on trial
    (replacing an automatic one still on trial). Returns what it says, or None when nothing
    changed. Never raises for a failure to store: the change stands in RAM, logged, and
    `status` shows it."""
    if state.upgrading(state_dir):
        return None
    path = state.state_file(state.PENDING, state_dir)
    pending = state.read(path)
    if pending is None:
        return None
    done = pm.changes(pending["installed"], pm.installed())
    paths, gone = transaction.changed(pending["before"], transaction.manifest(upper))
    try:
        with opened(device, writable=True) as flash:
            chain = Chain(flash)
            replace = chain.trial if (pending.get("pushed") is not None and chain.trial and
                                      chain.trial.entry.gen == pending["pushed"]) else None
            if not done:
                if replace is not None and not paths:
                    commit(chain, trials.drop(chain))
                    state.forget(path)
                    return "the packages are as before: the automatic snapshot is dropped"
                if replace is None:
                    state.forget(path)
                    return None
            text = transaction.message([str(c) for c in done], "") if done else \
                replace.entry.message
            entry = transaction.store(chain, upper, paths, gone, text, max_attempts,
                                      compression, replace=replace)
            number = len(chain.snapshots)
    except (SnapshotError, OSError) as e:
        what = ", ".join(str(c) for c in done) or "a package change"
        state.record_unsaved(state_dir, what, str(e))
        log(f"automatic snapshot of {what} not stored: {e}")
        pending["open"] = False
        state.write(path, pending)
        return f"not stored ({e}); the change is in RAM only until it is saved"
    pending["pushed"] = entry.gen
    state.write(path, pending)
    state.forget(state.state_file(state.UNSAVED, state_dir))
    log(f"automatic snapshot {number} ({text}) stored, on trial")
    return f"snapshot {number} ({text}) stored, on trial"
