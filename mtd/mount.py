"""mount(2), umount2(2) and pivot_root(2) through the cffi bindings, for boot: a system call
each, where mount(8) would cost a process each (DESIGN.md §8).

This is the only module that imports the compiled extension `mtd._mount_abi`.
"""
import os

from mtd._mount_abi import ffi, lib

RDONLY = lib.MS_RDONLY


class MountFailed(OSError):
    """A mount call failed; the message names the call as mount(8) would be run for it."""

    def __str__(self) -> str:
        return self.strerror


def _check(result: int, call: str) -> None:
    """The one place an errno from these calls becomes an exception."""
    if result != 0:
        err = ffi.errno
        raise MountFailed(err, f"{call}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, options: str = "", flags: int = 0) -> None:
    """Mount `source` (of type `fstype`, with the filesystem's `options`) at target."""
    _check(lib.mount(source.encode(), target.encode(), fstype.encode(), flags,
                     options.encode() if options else ffi.NULL),
           f"mount -t {fstype}{f' -o {options}' if options else ''} {source} {target}")


def bind(source: str, target: str) -> None:
    _check(lib.mount(source.encode(), target.encode(), ffi.NULL, lib.MS_BIND, ffi.NULL),
           f"mount --bind {source} {target}")


def move(source: str, target: str) -> None:
    _check(lib.mount(source.encode(), target.encode(), ffi.NULL, lib.MS_MOVE, ffi.NULL),
           f"mount --move {source} {target}")


def unmount(target: str, lazy: bool = False) -> None:
    """Unmount target; `lazy`: detach it now, even while busy (umount -l)."""
    _check(lib.umount2(target.encode(), lib.MNT_DETACH if lazy else 0),
           f"umount{' -l' if lazy else ''} {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(lib.pivot_root(new_root.encode(), put_old.encode()),
           f"pivot_root {new_root} {put_old}")
