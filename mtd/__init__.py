"""Flash access: the Flash protocol, Linux MTD devices (cffi) and a flash simulator; and
the mount calls boot makes (mtd.mount, cffi too)."""
from mtd.errors import FlashOpenError, FlashViolation, MtdError
from mtd.flash import Bitflips, Flash, FlashType, Geometry, Stats
from mtd.locate import open_flash
from mtd.sim import SimFlash

__all__ = ["Bitflips", "Flash", "FlashOpenError", "FlashType", "FlashViolation", "Geometry",
           "MtdError", "SimFlash", "Stats", "open_flash"]
