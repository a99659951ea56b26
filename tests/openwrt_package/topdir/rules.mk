# Stand-in for OpenWrt's rules.mk (tests/openwrt_package/harness.mk): the directories a
# package's recipes name, under the harness's WORK, and the tools they call, defined as
# OpenWrt defines them.

INCLUDE_DIR:=$(TOPDIR)/include
BUILD_DIR:=$(WORK)/build_dir

CP:=cp -fpR
LN:=ln -sf
FIND:=find
SED:=sed -i -e

INSTALL_BIN:=install -m0755
INSTALL_DIR:=install -d -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
