"""Boot: rebuild the stacked overlays from the chain (`snapshot mount`).

Layout after a successful mount, on the router and in the sandbox form alike (T is `/` after
the pivot, or the sandbox target):

    T            overlay: lower = (overlay: squashfs + T/overlay/upper), upper = T/volatile/upper
    T/rom        the squashfs
    T/overlay    tmpfs; upper/ holds snapshots 1..N, applied in order
    T/volatile   tmpfs; upper/ holds the volatile record, and every change made at run time

Two stacked overlays rather than one with two lower dirs: the volatile layer must be writable
on top of the snapshots, and the snapshots' upper dir must stay a plain directory that
`unpack` writes into before anything is mounted on it (DESIGN.md §8).

Boot is a write point: it makes the repair `check --repair` would, decided from the one
read of each payload that unpacks it (ChainLayers, DESIGN.md §8). Whatever fails, the system
still comes up: a damaged record that cannot be repaired ends the applied chain at the
record before it, and if building the layers fails, a plain
tmpfs overlay over the squashfs is mounted instead, the way stock OpenWrt does for a
partition it does not know. Each such event is logged loudly.

The old fstools chain (`OWRT`), not converted yet, boots the same layers, read-only: its
snapshots and its volatile as `convert` would import them, and nothing is written to the
flash, so the old chain stays as the stock tools and a later `convert` read it (DESIGN.md §8,
§9).
"""
import os
import sys
import time

from mtd import FlashOpenError, MtdError, open_flash
from mtd import mount as kernel
from snapshot import live, operations, reboot
from snapshot.errors import NoChain, RecordDamaged, SnapshotError, StockBoot
from snapshot.store import marks
from snapshot.store import trial as trials
from snapshot.store.chain import Chain, commit, opened
from snapshot.text import printable

MOUNTPOINTS = ("rom", "overlay", "volatile")


class BootReport:
    """What a mount did, for the log and for tests. (A plain class, as the store's: a
    dataclass's import is most of `mount`'s start-up on a router's CPU.)"""
    __slots__ = ("snapshots", "volatile", "fallback", "problems", "seconds", "tried",
                 "rolled_back", "old")

    def __init__(self):
        self.snapshots = 0
        self.volatile = False
        self.fallback = False
        self.problems: list[str] = []
        self.seconds = 0.0
        self.tried = True               # the pending trial, if any, is applied
        self.rolled_back: str | None = None
        self.old = False                # the old fstools chain, booted read-only


class Log:
    """Boot messages: stderr always; the kernel log too on a router, where preinit has no
    syslog yet and the kernel log is what survives to be read later. Control characters
    are escaped (snapshot.text): a message read from flash forges no line of its own."""

    def __init__(self, kmsg: bool):
        self.kmsg = kmsg

    def __call__(self, message: str, loud: bool = False) -> None:
        line = f"snapshot: {printable(message)}"
        print(line, file=sys.stderr, flush=True)
        if self.kmsg:
            try:
                with open("/dev/kmsg", "w") as kmsg:
                    kmsg.write(f"<{3 if loud else 5}>{line}\n")
            except OSError:
                pass


class Mounts:
    """The mounts made so far, so a failure can undo them in reverse order. Each is one
    system call (mtd.mount), not a mount(8) process; a failure raises mtd.mount.MountFailed,
    an OSError."""

    def __init__(self):
        self.made: list[str] = []

    def mount(self, target: str, fstype: str, source: str = "none", options: str = "") -> None:
        os.makedirs(target, exist_ok=True)
        kernel.mount(source, target, fstype, options)
        self.made.append(target)

    def bind(self, source: str, target: str) -> None:
        kernel.bind(source, target)
        self.made.append(target)

    def move(self, source: str, target: str) -> None:
        kernel.move(source, target)
        self.made[self.made.index(source)] = target

    def overlay(self, lower: str, layer: str, target: str) -> None:
        self.mount(target, "overlay", "overlay",
                   f"lowerdir={lower},upperdir={layer}/upper,workdir={layer}/work")

    def undo(self) -> None:
        for target in reversed(self.made):
            try:
                kernel.unmount(target, lazy=True)
            except OSError:
                pass   # gone already, or never there: nothing left to undo
        self.made.clear()


def _tmpfs_layer(mounts: Mounts, path: str) -> None:
    mounts.mount(path, "tmpfs", "tmpfs", "mode=0755")
    os.mkdir(f"{path}/upper")
    os.mkdir(f"{path}/work")


def _decide_trial(chain: Chain, log: Log, boot: BootReport) -> None:
    """A pending trial is counted on flash before anything of it is applied, so a boot that
    crashes at any later point has already counted; one that has had all its boots fails
    here, and the state before it boots (DESIGN.md §10). A chain with no trial pending is
    not written to. Whatever cannot be written, the state before the trial boots."""
    trial = chain.trial
    if trial is None:
        return
    e = trial.entry
    what = trials.name(chain, trial)
    try:
        if e.attempts >= e.max_attempts:
            reason = f"{what} was not confirmed in {e.attempts} boots"
            commit(chain, *trials.fail(chain, reason, int(time.time())))
            boot.rolled_back = reason
            log(f"rolled back: {reason}; booting the state before it", loud=True)
            return
        commit(chain, trials.count_boot(chain))
    except (SnapshotError, MtdError) as error:
        boot.tried = False
        boot.problems.append(f"cannot count a boot of {what}: {error}")
        log(f"cannot count this boot of {what} ({error}); booting the state before it",
            loud=True)
        return
    log(f"trying {what}: boot {e.attempts + 1} of {e.max_attempts}")


def prepare(flash, log: Log, boot: BootReport) -> "ChainLayers | OldLayers":
    """Open the chain and make the writes due before anything is applied: the repair of
    what the anchor shows (a torn entry, records past a directory problem, the mark block),
    then the decision about a pending trial. Returns what fills the layers: the chain's
    records, or the old fstools chain's, which the boot reads and never writes. First of
    all, the stock tools' marks: a reset mark becomes an empty chain, and a jffs2 mark (a
    sysupgrade that kept settings) leaves the partition to the stock mount_root (DESIGN.md
    §11)."""
    answer = marks.settle(flash, log)
    if answer == marks.STOCK:
        raise NoChain(f"{flash.name} holds no chain to boot; booting the stock way")
    if answer == marks.OLD:
        return OldLayers(flash, log, boot)
    layers = ChainLayers(Chain(flash), log, boot)
    layers.repair(read=False)
    _decide_trial(layers.chain, log, boot)
    return layers


class ChainLayers:
    """What the chain puts into the two layers: snapshots 1..N, then the volatile record,
    with the list of snapshots applied beside it (live.BASE); and the repair (`check
    --repair`) of what the boot finds. Each payload is read once, checked as it is unpacked;
    the repair is decided from that one read (DESIGN.md §8): a damaged record is repaired
    when it is found, before anything is applied on top of what the repair decides, and what
    the repair changed is applied again. Records the boot does not apply (a volatile record
    kept for a trial, a failed trial) are read, and the repair of the rest committed, once
    the layers are built."""

    def __init__(self, chain: Chain, log: Log, boot: BootReport):
        self.chain, self.log, self.boot = chain, log, boot
        self.repairs_fail = False

    def repair(self, read: bool) -> bool:
        """Commit the repair of what this boot has read (everything, with `read`) and log
        it; False when there was nothing to repair, or it failed (logged): the chain is then
        booted as it reads, and no repair is tried again."""
        if self.repairs_fail:
            return False
        try:
            report = operations.repair(self.chain, read=read)
        except (SnapshotError, MtdError) as e:
            self.boot.problems.append(f"repair failed: {e}")
            self.log(f"repair failed, booting what reads back: {e}", loud=True)
            self.chain, self.repairs_fail = Chain(self.chain.flash), True
            return False
        # A torn anchor entry or corrected bit flips are what power cuts and ageing flash
        # leave: their repair is routine. Damage loses data, and is logged loudly.
        for line in report.problems:
            damage = line in report.damage
            if damage:
                self.boot.problems.append(line)
            self.log(f"{'chain damaged' if damage else 'recovering'}: {line}", loud=damage)
        for line in report.lost:
            self.log(f"lost: {line}", loud=True)
        for line in report.repairs:
            self.log(f"repaired: {line}", loud=bool(report.damage))
        return not report.clean

    def fill_snapshots(self, upper: str, lower: str) -> None:
        boot = self.boot
        repairs = len(self.chain.records)   # each takes a damaged record out of the chain
        while True:
            applied, error = operations.apply_snapshots(self.chain, upper, lower=lower,
                                                        tried=boot.tried, undo=False)
            if error is None:
                break
            # The record that failed left part of itself in upper (restore.apply in place).
            operations.empty_dir(upper)
            if isinstance(error, RecordDamaged) and repairs and self.repair(read=False):
                repairs -= 1
                continue
            applied, _ = operations.apply_snapshots(self.chain, upper, applied, lower,
                                                    boot.tried)
            boot.problems.append(str(error))
            self.log(f"booting snapshots 1..{applied} only: {error}", loud=True)
            break
        boot.snapshots = applied

    def fill_volatile(self, upper: str, lower: str) -> None:
        boot = self.boot
        repairs = len(self.chain.records)
        while True:
            snapshots, volatile = self.chain.view(boot.tried)
            if volatile is None or boot.snapshots != len(snapshots):
                break
            try:
                operations.apply_volatile(self.chain, upper, lower, boot.tried)
                boot.volatile = True
                break
            except SnapshotError as error:
                # A damaged one is dropped by the repair; or it was on trial, and the one
                # kept for the trial comes back.
                if isinstance(error, RecordDamaged) and repairs and self.repair(read=False):
                    repairs -= 1
                    continue
                boot.problems.append(str(error))
                self.log(f"the volatile record is not applied: {error}", loud=True)
                break
        live.write_base(upper, [r.entry for r in
                                self.chain.view(boot.tried)[0][:boot.snapshots]])

    def finish(self) -> None:
        self.repair(read=True)


class OldLayers:
    """What the old fstools chain puts into the two layers, read-only: its snapshots in seq
    order up to a damaged one, then its volatile (first copy or sentinel copy), each as
    `convert` would import it (legacy.read, operations.apply_legacy). No list of snapshots
    is kept beside the volatile layer: `save` and `push` refuse the old chain anyway."""

    def __init__(self, flash, log: Log, boot: BootReport):
        self.flash, self.log, self.boot = flash, log, boot
        boot.old = True
        log(f"{flash.name} holds the old fstools snapshot chain, not converted: booting it "
            f"read-only (nothing is written to it; changes stay in RAM, and save and push "
            f"are refused); `snapshot convert` moves it to the new format")
        # here: only the old chain's boot reads its format (tarfile and hashlib with it)
        from snapshot import legacy_archive
        from snapshot.store import legacy
        self.old = legacy.read(flash)
        self.layers = legacy_archive.Layers()
        for problem in self.old.problems:
            boot.problems.append(problem)
            self.log(f"old chain: {problem}", loud=True)

    def _apply(self, entries: list, upper: str, lower: str) -> int:
        applied, warnings, error = operations.apply_legacy(self.flash, entries, upper, lower,
                                                           self.layers)
        for problem in warnings + ([str(error)] if error else []):
            self.boot.problems.append(problem)
            self.log(f"old chain: {problem}", loud=True)
        return applied

    def fill_snapshots(self, upper: str, lower: str) -> None:
        snapshots = self.old.snapshots
        self.boot.snapshots = self._apply(snapshots, upper, lower)
        if self.boot.snapshots < len(snapshots):
            self.log(f"booting old snapshots 1..{self.boot.snapshots} only"
                     + (", without the old volatile: it builds on them all"
                        if self.old.volatile else ""), loud=True)

    def fill_volatile(self, upper: str, lower: str) -> None:
        volatile = self.old.volatile
        if volatile is None or self.boot.snapshots != len(self.old.snapshots):
            return
        self.boot.volatile = self._apply([volatile], upper, lower) == 1

    def finish(self) -> None:
        """Nothing: the old chain is read, never repaired."""


def _layers(fill, root: str, target: str, scratch: str, mounts: Mounts,
            sandbox: bool) -> None:
    """Build the two layers in scratch (`fill`: ChainLayers or OldLayers), mount the
    merged root at target, then move the layers into it; then the chain's repair of what
    the layers did not read. Raises on a failed mount; a damaged record only shortens the
    chain."""
    _tmpfs_layer(mounts, f"{scratch}/overlay")
    upper = f"{scratch}/overlay/upper"
    fill.fill_snapshots(upper, root)
    _mountpoints(root, upper)
    mounts.overlay(root, f"{scratch}/overlay", f"{scratch}/base")
    _tmpfs_layer(mounts, f"{scratch}/volatile")
    fill.fill_volatile(f"{scratch}/volatile/upper", f"{scratch}/base")
    mounts.overlay(f"{scratch}/base", f"{scratch}/volatile", target)
    _place(root, target, scratch, mounts, sandbox)
    mounts.move(f"{scratch}/volatile", os.path.join(target, "volatile"))
    fill.finish()


def _mountpoints(root: str, upper: str) -> None:
    """Make /rom, /overlay and /volatile where the squashfs lacks them. In the snapshots'
    layer, not the volatile one: `save` must not capture them."""
    for name in MOUNTPOINTS:
        if not os.path.isdir(os.path.join(root, name)):
            os.makedirs(f"{upper}/{name}", exist_ok=True)


def _place(root: str, target: str, scratch: str, mounts: Mounts, sandbox: bool) -> None:
    """Put the squashfs at T/rom (the router's pivot does that itself) and the snapshots'
    layer at T/overlay."""
    if sandbox:
        mounts.bind(root, os.path.join(target, "rom"))
    mounts.move(f"{scratch}/overlay", os.path.join(target, "overlay"))


def _fallback(root: str, target: str, scratch: str, mounts: Mounts, sandbox: bool) -> None:
    """A plain tmpfs overlay over the squashfs: the system comes up with nothing saved."""
    _tmpfs_layer(mounts, f"{scratch}/overlay")
    _mountpoints(root, f"{scratch}/overlay/upper")
    mounts.overlay(root, f"{scratch}/overlay", target)
    _place(root, target, scratch, mounts, sandbox)


class _opened_to_boot(opened):   # lower case: used as a function, as opened is
    """`opened`, where a device that cannot be opened is StockBoot, silently, as probe's no
    was: the stock boot of a partition without a chain is normal."""

    def __enter__(self):
        try:
            return super().__enter__()
        except (SnapshotError, MtdError, FlashOpenError, OSError) as e:
            raise StockBoot(str(e)) from None


def mount(device: str | None, root, target, scratch, log: Log, sandbox: bool) -> BootReport:
    """Mount the saved state of `device` over `root` at `target` (see the module doc). In the
    sandbox form the squashfs is bound at target/rom; otherwise pivot() follows, and a
    conversion a `snapshot convert` staged on a UBI volume is made first. StockBoot where
    `snapshot probe` would answer no (prepare() raises): nothing is mounted or logged; the
    writes of marks.settle are the only ones made (DESIGN.md §11)."""
    started = time.monotonic()
    # Paths are strings (os.path), not pathlib's: on a router's CPU, pathlib's import (with
    # re, enum and urllib.parse) would cost each boot more than Python's own start-up.
    root, target, scratch = os.fspath(root), os.fspath(target), os.fspath(scratch)
    boot = BootReport()
    if not sandbox:
        _convert_pending(device, log)
    mounts = Mounts()
    with _opened_to_boot(device, writable=True) as flash:
        try:
            layers = prepare(flash, log, boot)
        except (SnapshotError, MtdError, FlashOpenError, OSError) as e:
            raise StockBoot(str(e)) from None
        try:
            if not sandbox:
                _record_booted(flash, log)
            _layers(layers, root, target, scratch, mounts, sandbox)
        except (SnapshotError, MtdError, OSError) as e:
            mounts.undo()
            boot.problems.append(str(e))
            boot.fallback = True
            log(f"cannot boot the snapshot chain ({e}); falling back to a tmpfs overlay",
                loud=True)
            try:
                _fallback(root, target, scratch, mounts, sandbox)
            except (SnapshotError, OSError):
                # Leave nothing half-mounted: the preinit hook then boots the stock way.
                mounts.undo()
                raise
    boot.seconds = time.monotonic() - started
    old = boot.old and not boot.fallback
    log(f"mounted {boot.snapshots} snapshots"
        + (f" and the volatile{'' if old else ' record'}" if boot.volatile else "")
        + (" of the old fstools chain (read-only)" if old else "")
        + (" (fallback: nothing saved is applied)" if boot.fallback else "")
        + f" in {boot.seconds:.2f}s")
    return boot


def _convert_pending(device: str | None, log: Log) -> None:
    """On a UBI volume, the conversion `snapshot convert` staged on its ubifs
    (convert.convert_pending), before anything opens the volume to write. Never stops the
    boot: a failure leaves the ubifs as it was, and the boot goes on with what is there."""
    try:
        with open_flash(device) as flash:
            if not flash.geometry.is_ubi:
                return
        from snapshot import convert   # here: only a UBI volume can have one staged
        convert.convert_pending(device, log)
    except (SnapshotError, MtdError, FlashOpenError, OSError) as e:
        log(f"the staged conversion did not run ({e}); booting on", loud=True)


def _record_booted(flash, log: Log) -> None:
    """Note the device for the commands that reboot into a change (snapshot/reboot.py): the
    running system boots its overlay from it, whatever the mount then makes of it. A sandbox
    mount is not this system's boot. Never stops the boot: without the note, those commands
    do not reboot."""
    try:
        reboot.record(flash)
    except OSError as e:
        log(f"cannot note {flash.name} as the booted device ({e.strerror or e}); commands "
            f"that store a change will not reboot into it", loud=True)


def pivot(target) -> None:
    """Make target the root, with the old root (the squashfs) at /rom, as fstools does, and
    bring the kernel filesystems along."""
    target = os.fspath(target)
    kernel.pivot_root(target, os.path.join(target, "rom"))
    for name in ("proc", "sys", "dev", "tmp"):
        if os.path.ismount(f"/rom/{name}"):
            os.makedirs(f"/{name}", exist_ok=True)
            kernel.move(f"/rom/{name}", f"/{name}")
