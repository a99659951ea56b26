"""Errors the snapshot package raises for users. The CLI prints each as one `Error: ...` line
and exits with its `exit_code`."""


class SnapshotError(Exception):
    exit_code = 1


class FetchFailed(SnapshotError):
    """A bundle or channel source cannot be read (whole); nothing was committed."""


class FormatLimit(SnapshotError):
    """A value does not fit the on-flash format (FORMAT.md gives every field's limits);
    raised where the bytes are packed, before anything is written."""


class NoChain(SnapshotError):
    """The device holds no snapshot chain (never formatted, or something else is on it)."""


class StockBoot(SnapshotError):
    """`snapshot mount`: the device holds no chain to boot, nor the old fstools chain, or
    cannot be opened or read; nothing was mounted, and the preinit hook boots the stock
    way."""
    exit_code = 6


class Busy(SnapshotError):
    """Another snapshot command is writing to the same device."""
    exit_code = 3


class FlashFull(SnapshotError):
    """The new record does not fit; nothing was committed, the old state stands."""


class RecordDamaged(SnapshotError):
    """A record failed a check: torn, bad CRC, uncorrectable bit flips, or reused blocks."""

    def __init__(self, device: str, what: str, block: int | None, reason: str):
        where = f" (block {block})" if block is not None else ""
        super().__init__(f"{device}: {what}{where} is damaged: {reason}")
        self.what = what
        self.block = block
        self.reason = reason


class ChainDamaged(SnapshotError):
    """The chain has a damaged record; writing past it needs `check --repair`."""
    exit_code = 4


class AnchorWornOut(SnapshotError):
    """No block of the anchor area can be written any more."""


class StockMark(NoChain):
    """A stock OpenWrt tool marked the partition (factory reset, sysupgrade): the chain on it
    no longer counts (DESIGN.md §11)."""

    def __init__(self, device: str, kind: str, what: str):
        super().__init__(f"{device}: the partition starts with {what}, written by a stock "
                         f"tool, so the chain on it no longer counts; the next boot "
                         + ("starts an empty chain" if kind == "deadc0de" else
                            "uses it the stock way"))
        self.kind = kind
