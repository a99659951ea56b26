# Stand-in for the packages feed's lang/python/python3-package.mk
# (tests/openwrt_package/harness.mk).
#
# Kept: PYTHON3_PKG_DIR, and Py3Package, which makes Package/NAME/install out of
# Py3Package/NAME/install (default: the build's /usr/bin) and Py3Package/NAME/filespec
# (default: all of PYTHON3_PKG_DIR; `+|PATH` copies PATH from the build, `-|PATH` leaves
# it out), then byte-compiles everything installed (legacy .pyc beside each module,
# compileall -b), deletes the .py sources and the empty directories, and points /usr/bin
# scripts at /usr/bin/python3.
#
# Not kept: the cross build and the -src package's install. The real Build/Compile makes a
# wheel with the target's compiler (python -m build --no-isolation) and Build/Install
# installs it under --prefix /usr (python -m installer); here the host interpreter's
# setuptools builds and installs the same modules under the same prefix (setup.py install:
# the test venv has no `wheel` package), so the compiled binding is the host's.

PYTHON3_VERSION:=$(shell $(HOST_PYTHON3_BIN) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYTHON3_PKG_DIR:=/usr/lib/python$(PYTHON3_VERSION)/site-packages

define Py3Build/Compile
	cd $(PKG_BUILD_DIR) && $(HOST_PYTHON3_BIN) setup.py -q build
endef

define Py3Build/Install
	cd $(PKG_BUILD_DIR) && $(HOST_PYTHON3_BIN) setup.py -q install --skip-build \
		--root=$(PKG_INSTALL_DIR) --prefix=/usr --single-version-externally-managed
endef

PYTHON3_PKG_BUILD?=1
ifeq ($(strip $(PYTHON3_PKG_BUILD)),1)
  Build/Compile=$(Py3Build/Compile)
  Build/Install=$(Py3Build/Install)
endif

# One filespec entry as a shell command: $(1) the entry, $(2) the build's install
# directory, $(3) the package's root.
py3_entry_op=$(word 1,$(subst |, ,$(1)))
py3_entry_path=$(word 2,$(subst |, ,$(1)))
define py3_filespec_entry
$(if $(filter +,$(call py3_entry_op,$(1))),\
  if [ -d $(2)$(call py3_entry_path,$(1)) ]; then \
    $(INSTALL_DIR) $(3)$(call py3_entry_path,$(1)) && \
    $(CP) $(2)$(call py3_entry_path,$(1))/. $(3)$(call py3_entry_path,$(1))/; \
  else \
    $(INSTALL_DIR) $(3)$(dir $(call py3_entry_path,$(1))) && \
    $(CP) $(2)$(call py3_entry_path,$(1)) $(3)$(dir $(call py3_entry_path,$(1))); \
  fi,\
$(if $(filter -,$(call py3_entry_op,$(1))),\
  rm -rf $(3)$(call py3_entry_path,$(1)),\
$(error $(1): this stand-in knows only + and - filespec entries)))
endef

define Py3Package
  ifeq ($(origin Py3Package/$(1)/filespec),undefined)
    Py3Package/$(1)/filespec=+|$$(PYTHON3_PKG_DIR)
  endif

  ifndef Py3Package/$(1)/install
    define Py3Package/$(1)/install
	if [ -d $(PKG_INSTALL_DIR)/usr/bin ]; then \
		$(INSTALL_DIR) $$(1)/usr/bin && $(CP) $(PKG_INSTALL_DIR)/usr/bin/* $$(1)/usr/bin/; \
	fi
    endef
  endif

  ifndef Package/$(1)/install
    define Package/$(1)/install
	$$(call Py3Package/$(1)/install,$$(1))
	$$(foreach entry,$$(Py3Package/$(1)/filespec),$$(call py3_filespec_entry,$$(entry),$(PKG_INSTALL_DIR),$$(1)) && ) true
	$(HOST_PYTHON3_BIN) -m compileall -q -r 20 -b -d / $$(1)
	$(FIND) $$(1) -type f -name '*.py' -delete
	$(FIND) $$(1) -mindepth 1 -type d -empty -delete
	if [ -d $$(1)/usr/bin ]; then \
		$(SED) '1s,^#!.*python.*,#!/usr/bin/python3,' $$(1)/usr/bin/*; \
	fi
    endef
  endif
endef
