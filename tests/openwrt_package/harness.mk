# Runs the feed package's own recipes outside an OpenWrt buildroot (tests/package_stage.py):
#
#   make -C openwrt-package/snapshot -f tests/openwrt_package/harness.mk \
#       WORK=DIR HOST_PYTHON3_BIN=PYTHON prepare|compile|install|info
#
#   prepare  Build/Prepare: the source into $(PKG_BUILD_DIR)
#   compile  Build/Compile, then Build/Install: the Python packages into $(PKG_INSTALL_DIR)
#   install  Package/snapshot/install into the staging root $(WORK)/root
#   info     what BuildPackage read of each package, one file per field in $(WORK)/info
#
# What this proves: the Makefile's recipes, evaluated by GNU make with OpenWrt's
# INSTALL_DIR, INSTALL_BIN, INSTALL_DATA and INSTALL_CONF, put every file at its path with
# its mode, and its definitions say what the test reads (DEPENDS, conffiles, postinst).
# What it cannot prove: that an OpenWrt buildroot builds the package. The buildroot's
# include files are stand-ins (topdir/; each says what it keeps of the real one), and the
# Python packages are built for this host by its interpreter, not cross-compiled.

ifeq ($(WORK),)
  $(error WORK=DIR is required)
endif
ifeq ($(HOST_PYTHON3_BIN),)
  $(error HOST_PYTHON3_BIN=PYTHON is required)
endif

TOPDIR:=$(abspath $(dir $(lastword $(MAKEFILE_LIST)))topdir)
STAGE:=$(WORK)/root

include Makefile

.PHONY: prepare compile install info

prepare:
	rm -rf $(PKG_BUILD_DIR)
	$(call Build/Prepare)

compile:
	$(call Build/Compile)
	$(call Build/Install)

install:
	rm -rf $(STAGE)
	$(INSTALL_DIR) $(STAGE)
	$(call Package/$(PKG_NAME)/install,$(STAGE))

# Written while the recipe is expanded (make's file function), hence no shell commands.
info:
	$(shell mkdir -p $(WORK)/info)
	$(foreach package,$(BUILT_PACKAGES),$(foreach field,$(PACKAGE_FIELDS),\
		$(file >$(WORK)/info/$(package).$(field),$($(package).$(field)))))
	$(file >$(WORK)/info/built,$(BUILT_PACKAGES))
	$(file >$(WORK)/info/$(PKG_NAME).conffiles,$(Package/$(PKG_NAME)/conffiles))
	$(file >$(WORK)/info/$(PKG_NAME).postinst,$(Package/$(PKG_NAME)/postinst))
	@:
