"""/etc/config/snapshot: a section type or an option snapshot does not read gets one warning on
stderr naming the file, the section and the option, however often the file is read; every
option the defaults file documents is known."""
import subprocess
import sys

import pytest

from clirun import ok
from mtd import FlashType, Geometry, SimFlash
from snapshot import config
from snapshot.fleet import memory
from snapshot.health import checks as health
from test_config import DEFAULTS_FILE, FILES, config_file


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test warns as a new process would: nothing warned yet."""
    monkeypatch.setattr(config, "_warned", set())


def test_an_unknown_option_of_the_main_section_is_named_once_by_a_command(tmp_path):
    path = config_file(tmp_path, "config snapshot 'main'\n\toption compresion 'xz'\n"
                                 "\toption max_attempts '3'\n")
    image = tmp_path / "flash.img"
    SimFlash.create(image, Geometry(FlashType.NOR, 1 << 20, 64 << 10, 1, 0))
    ok(image, "format")
    source = tmp_path / "etc-config"
    # Each reads the file more than once: the compression, max_attempts.
    for args in (["push", "--from", str(source), "--trial"], ["save", "--from", str(source)]):
        done = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image), *args],
                              capture_output=True, text=True, timeout=60,
                              env={"SNAPSHOT_CONFIG": path, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        assert done.stderr == (f"warning: {path}: option 'compresion' in section snapshot "
                               f"'main' is unknown; it is ignored\n")


def test_an_unknown_section_type_is_named(tmp_path, capsys):
    path = config_file(tmp_path, "config snapshot 'main'\n\toption compression 'xz'\n"
                                 "config fleeet 'fleet'\n\toption group 'canary'\n"
                                 "config helth\n\toption type 'ping'\n")
    assert config.load(path)["compression"] == "xz"
    assert capsys.readouterr().err == (
        f"warning: {path}: section type 'fleeet' 'fleet' is unknown (snapshot reads snapshot, "
        f"check, fleet); it is ignored\n"
        f"warning: {path}: section type 'helth' is unknown (snapshot reads snapshot, check, "
        f"fleet); it is ignored\n")


def test_an_unknown_option_of_the_fleet_section_is_named(tmp_path, capsys):
    path = config_file(tmp_path, "config fleet 'fleet'\n\toption group 'canary'\n"
                                 "\toption chanel 'http://fleet/channel.json'\n")
    assert memory.settings(path)["channel"] == ""
    assert capsys.readouterr().err == (f"warning: {path}: option 'chanel' in section fleet "
                                       f"'fleet' is unknown; it is ignored\n")


def test_an_option_a_check_of_its_type_does_not_take_is_named(tmp_path, capsys):
    path = config_file(tmp_path, "config check 'uplink'\n\toption type 'ping'\n"
                                 "\toption host '192.0.2.1'\n\toption meshif 'bat0'\n"
                                 "config check\n\toption type 'service'\n"
                                 "\toption name 'uhttpd'\n\toption nmae 'x'\n")
    assert [c.name for c in health.configured(path)] == ["uplink", "service"]
    assert capsys.readouterr().err == (
        f"warning: {path}: option 'meshif' in section check 'uplink' is unknown; it is "
        f"ignored\n"
        f"warning: {path}: option 'nmae' in section check is unknown; it is ignored\n")


def test_control_characters_in_a_name_are_escaped(tmp_path, capsys):
    path = config_file(tmp_path, "config snapshot 'main'\n\toption 'a\x1b[2Jb' 'x'\n")
    config.load(path)
    assert capsys.readouterr().err == (f"warning: {path}: option 'a\\x1b[2Jb' in section "
                                       f"snapshot 'main' is unknown; it is ignored\n")


@pytest.mark.parametrize("case", ["defaults", "defaults-with-checks"])
def test_every_option_the_defaults_file_documents_is_known(tmp_path, capsys, case):
    """The example sections switched on too: the checks and the fleet."""
    path = config_file(tmp_path, FILES[case])
    config.load(path)
    memory.settings(path)
    health.configured(path)
    assert capsys.readouterr().err == ""
    assert DEFAULTS_FILE.read_text().count("option") > 30
