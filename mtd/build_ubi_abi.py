"""cffi build script for the UBI volume ioctl bindings (registered in setup.py's
cffi_modules), built like mtd/build_abi.py: API mode against <mtd/ubi-user.h>, so struct
layouts and ioctl numbers are right for whatever architecture the package is built for.
"""
from pathlib import Path

import cffi

ffibuilder = cffi.FFI()
ffibuilder.cdef((Path(__file__).parent / "ubi_abi.h").read_text())
ffibuilder.set_source(
    "mtd._ubi_abi",
    """
    #include <stdint.h>
    #include <sys/ioctl.h>
    #include <mtd/ubi-user.h>
    """,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
