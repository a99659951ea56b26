"""cffi build script for the MTD ioctl bindings (registered in setup.py's cffi_modules).

API mode: the C compiler reads <mtd/mtd-user.h>, so struct layouts and ioctl numbers are
right for whatever architecture the package is built for.
"""
from pathlib import Path

import cffi

ffibuilder = cffi.FFI()
ffibuilder.cdef((Path(__file__).parent / "mtd_abi.h").read_text())
ffibuilder.set_source(
    "mtd._mtd_abi",
    """
    #include <stdint.h>
    #include <sys/ioctl.h>
    #include <mtd/mtd-user.h>
    """,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
