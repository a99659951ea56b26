"""Turn a device specification into an open Flash: `/dev/mtdN`, `mtd:NAME`, `/dev/ubiX_Y`,
`ubi:NAME`, or the path of a simulated image. With no specification, the overlay partition
fstools would take: the name the kernel command line gives (fstools_overlay_name=), else
rootfs_data; an MTD partition of that name, else a UBI volume of that name."""
import os
import stat

from mtd.errors import FlashOpenError
from mtd.flash import Flash


#: The character devices of MTD partitions, /dev/mtdN (linux/major.h: MTD_CHAR_MAJOR).
MTD_CHAR_MAJOR = 90


def open_flash(spec: str | None, writable: bool = False) -> Flash:
    # Each kind's module imported only when that kind is opened: loading the compiled
    # bindings (and a UBI router's sysfs lookups) is start-up every command pays.
    if spec and not spec.startswith(("mtd:", "ubi:")):
        try:
            st = os.stat(spec)
        except FileNotFoundError:
            raise FlashOpenError(f"{spec}: no such device or image") from None
        except PermissionError:
            raise FlashOpenError(f"{spec}: permission denied") from None
        if stat.S_ISREG(st.st_mode):
            # A router never opens an image.
            from mtd.sim import SimFlash, is_sim_image
            if is_sim_image(spec):
                return SimFlash(spec, writable)
        if not stat.S_ISCHR(st.st_mode):
            raise FlashOpenError(f"{spec}: not an MTD device, a UBI volume or a simulated "
                                 f"flash image")
        if os.major(st.st_rdev) == MTD_CHAR_MAJOR:
            from mtd.device import MtdDevice
            return MtdDevice(spec, writable)
    if spec and spec.startswith("mtd:"):
        from mtd.device import MtdDevice
        return MtdDevice.by_name(spec[4:], writable)
    if spec and spec.startswith("ubi:"):
        from mtd import ubi
        return ubi.UbiVolume.by_name(spec[4:], writable)
    from mtd.device import MtdDevice, default_partition_name, partitions
    if spec:
        from mtd import ubi
        if ubi.is_volume(spec):
            return ubi.UbiVolume(spec, writable)
        return MtdDevice(spec, writable)
    name = default_partition_name()
    if name in partitions():
        return MtdDevice.by_name(name, writable)
    from mtd import ubi   # only now: a NOR router's commands never import it
    if ubi.volume_exists(name):
        return ubi.UbiVolume.by_name(name, writable)
    raise FlashOpenError(f"no MTD partition and no UBI volume named {name!r}")
