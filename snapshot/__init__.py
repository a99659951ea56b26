"""snapshot: power-cut-safe snapshots of OpenWrt overlay state on raw MTD flash."""
__version__ = "0.1.0"
