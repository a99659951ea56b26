"""Exceptions of the flash layer. Their messages are meant for users."""
import errno as errno_codes
import os


class MtdError(OSError):
    """A flash operation failed; names the device, the operation and the offset.

    Raised alike by the kernel MTD device and by the simulator, so that code above the Flash
    protocol handles one exception whatever backs it. `errno` says what went wrong: EIO for a
    failing or bad block, EINVAL for a misaligned request, ENOTTY for something that is not MTD.
    """

    def __init__(self, err: int, device: str, operation: str, offset: int | None = None,
                 detail: str | None = None):
        where = f" at 0x{offset:x}" if offset is not None else ""
        reason = detail or os.strerror(err)
        super().__init__(err, f"{device}: {operation}{where} failed: {reason}")
        self.device = device
        self.operation = operation
        self.offset = offset

    def __str__(self) -> str:
        return self.strerror


def from_errno(err: int, device: str, operation: str, offset: int | None = None) -> MtdError:
    """The one place an errno from the kernel becomes an exception, with a readable reason."""
    detail = {
        errno_codes.ENOTTY: "not an MTD device",
        errno_codes.EIO: "I/O error (failing or bad block)",
        errno_codes.EOPNOTSUPP: "not supported by this device",
        errno_codes.EACCES: "permission denied",
        errno_codes.EPERM: "permission denied (read-only or locked)",
        errno_codes.EROFS: "device is read-only",
        errno_codes.EBUSY: "busy: another process has it open",
        errno_codes.EBADMSG: "uncorrectable bit flips",
    }.get(err)
    return MtdError(err, device, operation, offset, detail)


class FlashViolation(Exception):
    """The simulator caught an operation real flash would silently corrupt data on.

    This is a bug in the caller (programming a NOR bit from 0 to 1, programming a NAND page
    twice between erases), never a user error, so it is deliberately not an MtdError.
    """


class FlashOpenError(Exception):
    """A device specification could not be opened: missing, not flash, not permitted."""


class FlashBusy(FlashOpenError):
    """The device is open for writing elsewhere and refuses a second writer (a UBI volume:
    a mounted ubifs, or another snapshot command). Exit status 3, as for a held lock."""
    exit_code = 3
