"""cffi build script for the kernel bindings: the MTD and UBI ioctls, and the mount calls
boot makes (all registered in setup.py's cffi_modules).

API mode: the C compiler reads <mtd/mtd-user.h>, <mtd/ubi-user.h> and <sys/mount.h>, so
struct layouts, ioctl numbers and flags are right for whatever architecture the package is
built for.
"""
from pathlib import Path

import cffi


def builder(module: str, declarations: str, source: str) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef((Path(__file__).parent / declarations).read_text())
    ffi.set_source(module, source)
    return ffi


def ioctls(header: str) -> str:
    return f"""
    #include <stdint.h>
    #include <sys/ioctl.h>
    #include <{header}>
    """


ffibuilder = builder("mtd._mtd_abi", "mtd_abi.h", ioctls("mtd/mtd-user.h"))
ubi_ffibuilder = builder("mtd._ubi_abi", "ubi_abi.h", ioctls("mtd/ubi-user.h"))
mount_ffibuilder = builder("mtd._mount_abi", "mount_abi.h", """
    #include <sys/mount.h>
    #include <sys/syscall.h>
    #include <unistd.h>

    static int pivot_root(const char *new_root, const char *put_old)
    {
        return syscall(SYS_pivot_root, new_root, put_old);
    }
    """)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    ubi_ffibuilder.compile(verbose=True)
    mount_ffibuilder.compile(verbose=True)
