"""/etc/config/snapshot as snapshot reads it: through the router's own uci (built by
scripts/setup-openwrt-tools.sh) where uci is installed, with the file parser where it is not.
Every file here is read both ways, and both give the same sections."""
import subprocess
from pathlib import Path

import pytest

from openwrt_tools import tool
from snapshot import config

DEFAULTS_FILE = Path(__file__).parent.parent / "initscripts/etc/config/snapshot"


def uncommented(text: str) -> str:
    """The defaults file with its example check sections switched on."""
    return "".join(line[1:] if line.startswith(("#config", "#\t")) else line
                   for line in text.splitlines(keepends=True))


FILES = {
    "defaults": DEFAULTS_FILE.read_text(),
    "defaults-with-checks": uncommented(DEFAULTS_FILE.read_text()),
    "options-set": ("config snapshot 'main'\n"
                    "\toption device '/dev/mtd3'\n"
                    "\toption compression xz\n"
                    '\toption max_attempts "5"\n'
                    "\toption interval '10' # seconds\n"),
    "lists": ("config snapshot 'main'\n"
              "\tlist keep '/etc/config'\n"
              "\tlist keep '/root dir'\n"
              "\toption compression 'xz'\n"
              "\tlist single 'one'\n"),
    "quoting": ("config snapshot 'main'\n"
                "\toption health_dir '/etc/health checks/it'\\''s'\n"
                "\toption rollback_dir \"/etc/say \\\"hi\\\"\"\n"
                "\toption device 'say \"hi\"'\n"
                "\toption compression \"it's\"\n"
                "\toption grace 'a\\b $x `y` ;z'\n"
                "\toption window unquoted\\ space\n"),
    "anonymous": ("config snapshot\n"
                  "\toption compression 'xz'\n"
                  "\n"
                  "config check\n"
                  "\toption type 'ping'\n"
                  "\toption host '192.168.1.1'\n"
                  "\n"
                  "config check 'mesh'\n"
                  "\toption type 'batman'\n"
                  "\n"
                  "config check\n"
                  "\toption type 'service'\n"
                  "\toption name 'uhttpd'\n"),
    "empty-values": ("config snapshot 'main'\n"
                     "\toption compression 'xz'\n"
                     "\toption compression ''\n"
                     "\toption device ''\n"
                     "\toption window\n"),
    "uci-grammar": ("c snapshot 'main'; o compression xz # a comment; o grace '1'\n"
                    "\to device \"/dev/mtd\\3\"\n"
                    "\to health_dir /etc/a#b\n"
                    "\toption rollback_dir '/etc/x'\\''y'\"z\"w\n"
                    "\toption window '12';option interval 7\n"
                    "\toption grace 60; option keep 2\n"
                    "\toption pass_rounds 4;option fail_rounds 5\n"
                    "p snapshot\n"),
    "named-twice": ("config snapshot 'main'\n"
                    "\toption compression 'xz'\n"
                    "config check 'mesh'\n"
                    "\toption type 'batman'\n"
                    "config snapshot 'main'\n"
                    "\toption grace '60'\n"),
}


@pytest.fixture
def through_uci(monkeypatch, tmp_path):
    """config reads through the real uci, which keeps uncommitted changes in a private save
    directory; returns the uci binary."""
    uci = tool("uci")
    monkeypatch.setenv("PATH", str(uci.parent))
    monkeypatch.setattr(config, "SAVE_DIR", str(tmp_path / "uci-save"))
    return uci


def config_file(tmp_path: Path, text: str) -> str:
    directory = tmp_path / "etc-config"
    directory.mkdir(exist_ok=True)
    (directory / "snapshot").write_text(text)
    return str(directory / "snapshot")


def read_both_ways(path: str, uci: Path, monkeypatch) -> tuple[list, list]:
    """The sections of `uci export` of the file (uci must accept it), and config.sections(path),
    which parses the file itself when uci has no saved changes to it."""
    directory, name = Path(path).parent, Path(path).name
    exported = subprocess.run([uci, "-c", directory, "-t", config.SAVE_DIR, "export", name],
                              capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    return config._parse(exported.stdout), config.sections(path)


@pytest.mark.parametrize("case", FILES)
def test_uci_and_the_file_parser_read_the_same_sections(case, through_uci, tmp_path,
                                                        monkeypatch):
    path = config_file(tmp_path, FILES[case])
    via_uci, parsed = read_both_ways(path, through_uci, monkeypatch)
    assert via_uci == parsed


def test_the_defaults_file_reads_as_the_documented_defaults(through_uci, monkeypatch):
    via_uci, parsed = read_both_ways(str(DEFAULTS_FILE), through_uci, monkeypatch)
    assert via_uci == parsed
    assert config.load(str(DEFAULTS_FILE)) == config.DEFAULTS == \
        {"device": "", "compression": "gzip", "save_on_shutdown": "0", "max_attempts": "3",
         "health_dir": "/etc/snapshot/health.d", "rollback_dir": "/etc/snapshot/rollback.d",
         "interval": "30", "grace": "300", "pass_rounds": "3", "fail_rounds": "3",
         "window": "1800", "auto_snapshot": "1", "keep": "0",
         "keys_dir": "/etc/snapshot/keys", "board_file": "/tmp/sysinfo/board_name",
         "rom": "/rom", "channel_keys_dir": "/etc/snapshot/channel-keys"}
    assert config.checks(str(DEFAULTS_FILE)) == []


def test_the_documented_check_sections_read_as_named_checks(through_uci, tmp_path,
                                                           monkeypatch):
    path = config_file(tmp_path, FILES["defaults-with-checks"])
    assert [name for name, _ in config.checks(path)] == ["mesh", "babel", "uplink", "web"]
    # Their empty options (originator '', socket '') are left out, as uci leaves them out.
    assert dict(config.checks(path))["mesh"] == {
        "type": "batman", "meshif": "bat0", "min_neighbours": "1", "fresh": "10",
        "gateway": "0"}


def test_values_read_as_written_whatever_their_quoting(through_uci, tmp_path, monkeypatch):
    path = config_file(tmp_path, FILES["quoting"])
    via_uci, parsed = read_both_ways(path, through_uci, monkeypatch)
    assert via_uci == parsed == [("snapshot", "main", {
        "health_dir": "/etc/health checks/it's", "rollback_dir": '/etc/say "hi"',
        "device": 'say "hi"', "compression": "it's", "grace": "a\\b $x `y` ;z",
        "window": "unquoted space"})]


def test_lists_are_not_settings(through_uci, tmp_path, monkeypatch):
    path = config_file(tmp_path, FILES["lists"])
    via_uci, parsed = read_both_ways(path, through_uci, monkeypatch)
    assert via_uci == parsed == [("snapshot", "main", {"compression": "xz"})]


def test_an_option_with_an_empty_value_is_left_out(through_uci, tmp_path, monkeypatch):
    path = config_file(tmp_path, FILES["empty-values"])
    via_uci, parsed = read_both_ways(path, through_uci, monkeypatch)
    assert via_uci == parsed == [("snapshot", "main", {"compression": "xz"})]


def test_a_section_named_twice_is_one_section(through_uci, tmp_path, monkeypatch):
    path = config_file(tmp_path, FILES["named-twice"])
    via_uci, parsed = read_both_ways(path, through_uci, monkeypatch)
    assert via_uci == parsed == [("snapshot", "main", {"compression": "xz", "grace": "60"}),
                                 ("check", "mesh", {"type": "batman"})]


def test_anonymous_sections_read_as_unnamed_and_in_file_order(through_uci, tmp_path,
                                                              monkeypatch):
    path = config_file(tmp_path, FILES["anonymous"])
    assert config.load(path)["compression"] == "xz"
    assert config.checks(path) == [(None, {"type": "ping", "host": "192.168.1.1"}),
                                   ("mesh", {"type": "batman"}),
                                   (None, {"type": "service", "name": "uhttpd"})]


def test_uncommitted_changes_are_seen_through_uci(through_uci, tmp_path):
    path = config_file(tmp_path, FILES["options-set"])
    directory = str(Path(path).parent)
    for change in (["set", "snapshot.main.compression=gzip"],
                   ["set", "snapshot.uplink=check"], ["set", "snapshot.uplink.type=ping"],
                   ["delete", "snapshot.main.interval"]):
        subprocess.run([through_uci, "-c", directory, "-t", config.SAVE_DIR, *change],
                       check=True)
    assert Path(path).read_text() == FILES["options-set"]
    assert config.sections(path) == [
        ("snapshot", "main", {"device": "/dev/mtd3", "compression": "gzip",
                              "max_attempts": "5"}),
        ("check", "uplink", {"type": "ping"})]


def test_a_file_uci_cannot_name_is_read_by_the_file_parser(through_uci, tmp_path):
    # uci would take snapshot.uci for the section uci of the file snapshot beside it.
    config_file(tmp_path, FILES["options-set"])
    other = tmp_path / "etc-config" / "snapshot.uci"
    other.write_text("config snapshot 'main'\n\toption compression 'gzip'\n")
    assert config.sections(str(other)) == [("snapshot", "main", {"compression": "gzip"})]


def test_a_file_uci_refuses_is_read_as_far_as_it_parses(through_uci, tmp_path):
    path = config_file(tmp_path, "config snapshot 'main'\n"
                                 "\toption compression 'xz'\n"
                                 "\toption device 'unterminated\n"
                                 "\toption grace '60'\n")
    assert config.sections(path) == [("snapshot", "main", {"compression": "xz",
                                                           "grace": "60"})]


def test_a_missing_config_file_means_defaults(through_uci, tmp_path, monkeypatch):
    assert config.load(str(tmp_path / "none")) == config.DEFAULTS
    monkeypatch.setenv("PATH", "")
    assert config.load(str(tmp_path / "none")) == config.DEFAULTS


def test_a_read_without_saved_changes_runs_no_uci(through_uci, tmp_path, monkeypatch):
    """The file is parsed here: `snapshot list` on a router starts no process to read it."""
    path = config_file(tmp_path, FILES["options-set"])
    ran = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a) or real_run(*a, **k))
    assert config.load(path)["compression"] == "xz"
    assert ran == []
