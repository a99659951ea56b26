"""snapshot: power-cut-safe snapshots of OpenWrt overlay state on raw MTD flash.

The layers, lowest first (DESIGN.md, "The house"): errors and text; store/; tree/; the
engine (the modules here); the wings packages/, fleet/, health/; the faces cli/ and rpcd."""
__version__ = "0.1.0"
