# Stand-in for OpenWrt's include/package.mk (tests/openwrt_package/harness.mk): its build
# directories, and a BuildPackage that reads a package's definition the way OpenWrt's does
# (evaluating Package/NAME) and records the fields below instead of building anything.

PKG_BUILD_DIR ?= $(BUILD_DIR)/$(PKG_NAME)$(if $(PKG_VERSION),-$(PKG_VERSION))
PKG_INSTALL_DIR ?= $(PKG_BUILD_DIR)/ipkg-install

PACKAGE_FIELDS:=SECTION CATEGORY TITLE DEPENDS CONFLICTS
BUILT_PACKAGES:=

define BuildPackage
  $(foreach field,$(PACKAGE_FIELDS),$(eval $(field):=))
  $(eval $(Package/$(1)))
  $(foreach field,$(PACKAGE_FIELDS),$(eval $(1).$(field):=$($(field))))
  BUILT_PACKAGES+=$(1)
endef
