"""cffi build script for the MTD and UBI ioctl bindings (both registered in setup.py's
cffi_modules).

API mode: the C compiler reads <mtd/mtd-user.h> and <mtd/ubi-user.h>, so struct layouts and
ioctl numbers are right for whatever architecture the package is built for.
"""
from pathlib import Path

import cffi


def builder(module: str, declarations: str, header: str) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef((Path(__file__).parent / declarations).read_text())
    ffi.set_source(module, f"""
    #include <stdint.h>
    #include <sys/ioctl.h>
    #include <{header}>
    """)
    return ffi


ffibuilder = builder("mtd._mtd_abi", "mtd_abi.h", "mtd/mtd-user.h")
ubi_ffibuilder = builder("mtd._ubi_abi", "ubi_abi.h", "mtd/ubi-user.h")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    ubi_ffibuilder.compile(verbose=True)
