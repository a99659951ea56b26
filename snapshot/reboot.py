"""The reboot into a change just stored, made only on the device the running system booted
its overlay from (DESIGN.md §10).

At boot, `snapshot mount` (the preinit hook) records that device in RAM: BOOTED names it and
holds its identity under any name (verified.device_key: a character device's number, an
image's inode), replaced whole, so a reader never sees half of it and the next boot starts
without it. A command that
stores a change for the next boot (bundle apply, fleet poll and rollback, the watch's
rollback, upgrade) reboots only when its device has that identity. On a simulated image,
or on any device this system did not boot from (a PC trying the tool, as root on a
workstation), a reboot would restart this machine for nothing: the command says in one line
when the change takes effect instead. Without a record (a sandbox mount, or a system booted
the stock way) nothing is the booted device.
"""
from mtd import Flash, FlashOpenError, open_flash
from snapshot import kept
from snapshot.errors import SnapshotError
from snapshot.store.verified import device_key

BOOTED = "/tmp/snapshot/booted.json"


def record(flash: Flash, where=None) -> None:
    """Note `flash` as the device the running system booted its overlay from (in BOOTED, or
    the path `where`)."""
    kept.write(where or BOOTED, {"device": flash.name, "key": device_key(flash)})


def booted(device: str | None) -> tuple[str, bool]:
    """`device` (as --device gives it, None for the default) by its name, and whether the
    running system booted its overlay from it."""
    try:
        with open_flash(device) as flash:
            name, mine = flash.name, device_key(flash)
    except (FlashOpenError, OSError):
        return device or "the overlay partition", False
    recorded = kept.read(BOOTED)
    return name, recorded is not None and recorded.get("key") == mine


def reboot_into(device: str | None, what: str, log) -> bool:
    """Reboot into `what` (the way OpenWrt does: procd handles the `reboot` command) when
    `device` is the one the running system booted from; otherwise log one line saying when
    it takes effect. Returns whether it rebooted."""
    name, mine = booted(device)
    if not mine:
        log(f"{what} takes effect when a router boots {name}; not rebooting this machine, "
            f"which did not boot its overlay from it")
        return False
    log(f"rebooting into {what}")
    import subprocess   # here: boot imports this module, and never reboots through it
    try:
        subprocess.run(["reboot"], check=False)
    except OSError as e:
        raise SnapshotError(f"cannot reboot: {e.strerror}") from None
    return True
