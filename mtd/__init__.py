"""Flash access: the Flash protocol, Linux MTD devices (cffi) and a flash simulator; and
the mount calls boot makes (mtd.mount, cffi too)."""
from mtd.errors import FlashOpenError, FlashViolation, MtdError
from mtd.flash import Bitflips, Flash, FlashType, Geometry, Stats
from mtd.locate import open_flash

__all__ = ["Bitflips", "Flash", "FlashOpenError", "FlashType", "FlashViolation", "Geometry",
           "MtdError", "SimFlash", "Stats", "open_flash"]


def __getattr__(name: str):
    # The simulator is imported when first asked for: a router's commands never use it.
    if name == "SimFlash":
        from mtd.sim import SimFlash
        return SimFlash
    raise AttributeError(f"module 'mtd' has no attribute {name!r}")
