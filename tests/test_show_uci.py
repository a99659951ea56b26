"""`snapshot show N --uci`: what a snapshot changed in /etc/config, option by option, old
value to new, as the router's own uci (scripts/setup-openwrt-tools.sh) reads the files before
and after it."""
import json

import pytest

from mtd import FlashType, Geometry, SimFlash
from openwrt_tools import tool
from clirun import error_of, ok, run

KIB = 1024
NOR = Geometry(FlashType.NOR, 2048 * KIB, 64 * KIB, 1, 0)

ROM_NETWORK = """config interface 'loopback'
	option device 'lo'
	option proto 'static'

config interface 'lan'
	option proto 'static'
	option ipaddr '192.168.1.1'
	option netmask '255.255.255.0'
	option ip6assign '60'
"""
NEW_NETWORK = """config interface 'loopback'
	option device 'lo'
	option proto 'static'

config interface 'lan'
	option proto 'static'
	option ipaddr '10.0.0.1'
	option netmask '255.255.255.0'
	list dns '1.1.1.1'
	list dns 'it'\\''s'

config interface 'wan'
	option proto 'dhcp'
"""


def files(root, contents: dict):
    for name, text in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def chain(tmp_path, monkeypatch):
    """A rom with the stock network file; snapshot 1 changes the lan and adds a wan and a
    new config file; snapshot 2 changes the system file."""
    monkeypatch.setenv("PATH", str(tool("uci").parent))
    rom = files(tmp_path / "rom", {"etc/config/network": ROM_NETWORK,
                                   "etc/config/system": "config system\n\toption hostname 'OpenWrt'\n"})
    image = tmp_path / "flash.img"
    SimFlash.create(image, NOR)
    ok(image, "format")
    ok(image, "push", "--from", files(tmp_path / "s1", {
        "etc/config/network": NEW_NETWORK,
        "etc/config/mesh": "config mesh 'bat0'\n\toption routing 'batman'\n",
        "etc/config/bad.name": "config x\n"}), "-m", "lan")
    ok(image, "push", "--from", files(tmp_path / "s2", {
        "etc/config/system": "config system\n\toption hostname 'rooftop-7'\n"}), "-m", "name")
    return image, rom


def test_show_uci_names_each_option_changed_with_its_old_and_new_value(chain):
    image, rom = chain
    info = json.loads(ok(image, "show", "1", "--uci", "--rom", rom, "--json"))
    by_config = {c["config"]: c for c in info["uci"]}
    assert set(by_config) == {"network", "mesh"}     # bad.name is no UCI package name
    network = {c["option"]: (c["old"], c["new"]) for c in by_config["network"]["changes"]}
    assert network == {
        "network.lan.ipaddr": ("192.168.1.1", "10.0.0.1"),
        "network.lan.ip6assign": ("60", None),
        "network.lan.dns": (None, ["1.1.1.1", "it's"]),
        "network.wan": (None, "interface"),
        "network.wan.proto": (None, "dhcp"),
    }
    mesh = {c["option"]: (c["old"], c["new"]) for c in by_config["mesh"]["changes"]}
    assert mesh == {"mesh.bat0": (None, "mesh"), "mesh.bat0.routing": (None, "batman")}


def test_show_uci_reads_the_file_before_from_the_snapshots_below(chain):
    image, rom = chain
    text = ok(image, "show", "2", "--uci", "--rom", rom)
    assert "  modified  etc/config/system" in text
    assert "  uci system.@system[0].hostname: 'OpenWrt' -> 'rooftop-7'" in text
    assert "network" not in text


def test_show_uci_prints_each_change_as_uci_shows_values(chain):
    image, rom = chain
    lines = ok(image, "show", "1", "--uci", "--rom", rom).splitlines()
    assert "  uci network.lan.ipaddr: '192.168.1.1' -> '10.0.0.1'" in lines
    assert "  uci network.lan.dns: added '1.1.1.1' 'it'\\''s'" in lines
    assert "  uci network.lan.ip6assign: removed (was '60')" in lines
    assert "  uci network.wan: added section interface" in lines


def test_a_file_uci_cannot_read_is_named_and_not_compared(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tool("uci").parent))
    image = tmp_path / "flash.img"
    SimFlash.create(image, NOR)
    ok(image, "format")
    ok(image, "push", "--from", files(tmp_path / "s1", {
        "etc/config/broken": "config 'unterminated\n"}), "-m", "broken")
    text = ok(image, "show", "1", "--uci", "--rom", tmp_path / "no-rom")
    assert "  uci broken: not compared: uci cannot read it" in text


def test_show_uci_without_uci_installed_is_one_error_line(chain, monkeypatch):
    image, rom = chain
    monkeypatch.setenv("PATH", "")
    assert "uci is not installed" in error_of(run(image, "show", "1", "--uci"))
