"""Turn a device specification into an open Flash: `/dev/mtdN`, `mtd:NAME`, or the path of
a simulated image. With no specification, the partition the kernel command line names
(fstools_overlay_name=), else rootfs_data."""
import os
import stat

from mtd.errors import FlashOpenError
from mtd.flash import Flash
from mtd.sim import SimFlash, is_sim_image


def open_flash(spec: str | None, writable: bool = False) -> Flash:
    if spec and not spec.startswith("mtd:"):
        try:
            mode = os.stat(spec).st_mode
        except FileNotFoundError:
            raise FlashOpenError(f"{spec}: no such device or image") from None
        except PermissionError:
            raise FlashOpenError(f"{spec}: permission denied") from None
        if stat.S_ISREG(mode) and is_sim_image(spec):
            return SimFlash(spec, writable)
        if not stat.S_ISCHR(mode):
            raise FlashOpenError(f"{spec}: not an MTD device or a simulated flash image")
    # Imported only for a real device: loading the compiled bindings costs start-up.
    from mtd.device import MtdDevice, default_partition_name
    if not spec:
        return MtdDevice.by_name(default_partition_name(), writable)
    if spec.startswith("mtd:"):
        return MtdDevice.by_name(spec[4:], writable)
    return MtdDevice(spec, writable)
