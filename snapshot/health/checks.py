"""Health checks: is this router still doing its job? Each check is run once per round and says
pass or fail, with one line of detail; a required check's failure counts against a change on
trial (snapshot/health/watch.py), a wanted one's is only reported.

Checks come from `config check` sections of /etc/config/snapshot (the defaults file documents
each type and option) and from the executables in `option health_dir`. Each runs with a
timeout; a check that cannot run (its tool missing, a bad option) fails, with the reason.
"""
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import NamedTuple

from snapshot import config

DEFAULT_TIMEOUT = 10


class Result(NamedTuple):
    name: str
    required: bool
    ok: bool
    detail: str          # one line: what was found, or why it failed

    def as_dict(self) -> dict:
        return self._asdict()


class Check(NamedTuple):
    name: str
    kind: str
    required: bool
    timeout: float
    options: dict[str, str]


class CheckFailed(Exception):
    """A check that found the router unhealthy, or could not look: the message says which."""


#: The options of a `config check` section: COMMON, and those of its type (the defaults
#: file documents them). A check of an unknown type fails when it runs, saying so.
COMMON = ("type", "required", "timeout")
OPTIONS = {"batman": ("meshif", "min_neighbours", "fresh", "originator", "gateway"),
           "babel": ("min_neighbours", "socket"), "ping": ("host", "count"),
           "service": ("name",)}


def configured(path: str | None = None) -> list[Check]:
    """The checks of the configuration file, then those of health_dir."""
    found = []
    for name, options in config.checks(path):
        kind = options.get("type", "")
        if kind in OPTIONS:
            config.unknown(path, "check", name, options, COMMON + OPTIONS[kind])
        found.append(Check(name or kind, kind, options.get("required", "1") != "0",
                           float(options.get("timeout", DEFAULT_TIMEOUT)), options))
    directory = Path(config.load(path)["health_dir"])
    for folder, required in ((directory, True), (directory / "wanted.d", False)):
        if folder.is_dir():
            for script in sorted(folder.iterdir()):
                if script.is_file() and os.access(script, os.X_OK):
                    found.append(Check(script.name, "script", required, DEFAULT_TIMEOUT * 6,
                                       {"path": str(script)}))
    return found


def run(checks: list[Check]) -> list[Result]:
    """One round: every check, in order."""
    results = []
    for check in checks:
        try:
            detail = KINDS[check.kind](check) if check.kind in KINDS else _unknown(check)
            ok = True
        except CheckFailed as e:
            detail, ok = str(e), False
        results.append(Result(check.name, check.required, ok, detail))
    return results


def healthy(results: list[Result]) -> bool:
    return all(r.ok for r in results if r.required)


def _unknown(check: Check) -> str:
    raise CheckFailed(f"unknown check type {check.kind!r} (batman, babel, ping, service, or "
                      f"a script in health_dir)")


def _run(argv: list[str], check: Check) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=check.timeout)
    except FileNotFoundError:
        raise CheckFailed(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{' '.join(argv)} did not answer in {check.timeout:g} s") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _count(check: Check, key: str, default: int) -> int:
    try:
        return int(check.options.get(key, default))
    except ValueError:
        raise CheckFailed(f"option {key} {check.options[key]!r} is not a number") from None


# -- batman-adv --------------------------------------------------------------------------------

# A row of `batctl n -H`: BATMAN_IV "IF  MAC  0.560s ...", BATMAN_V "MAC  0.560s (...) [IF]".
_MAC = re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}")
_SEEN = re.compile(r"(\d+)\.(\d{3})s")


def batman(check: Check) -> str:
    """Neighbours seen in the last `fresh` seconds (batman-adv lists a lost one for up to
    200 s, BATADV_PURGE_TIMEOUT), at least `min_neighbours`; then `originator` and
    `gateway` if asked for."""
    meshif = check.options.get("meshif", "bat0")
    fresh_ms = _count(check, "fresh", 10) * 1000
    wanted = _count(check, "min_neighbours", 1)
    neighbours = _batman_table(check, meshif, "nj", "n")
    live = sorted({n["neigh_address"] for n in neighbours
                   if n.get("last_seen_msecs", fresh_ms + 1) <= fresh_ms})
    if len(live) < wanted:
        raise CheckFailed(f"{meshif}: {len(live)} batman-adv neighbours seen in the last "
                          f"{fresh_ms // 1000} s, {wanted} wanted"
                          + (f" ({len(neighbours)} listed)" if neighbours else ""))
    found = f"{meshif}: {len(live)} batman-adv neighbours ({', '.join(live)})"
    originator = check.options.get("originator", "").lower()
    if originator:
        originators = _batman_table(check, meshif, "oj", "o")
        if not any(o.get("orig_address") == originator and
                   o.get("last_seen_msecs", fresh_ms + 1) <= fresh_ms for o in originators):
            raise CheckFailed(f"{meshif}: originator {originator} not seen in the last "
                              f"{fresh_ms // 1000} s")
        found += f"; originator {originator} reachable"
    if check.options.get("gateway", "0") == "1":
        gateways = _run(["batctl", "meshif", meshif, "gwl", "-H"], check)
        if gateways.returncode != 0 or not gateways.stdout.strip():
            raise CheckFailed(f"{meshif}: no batman-adv gateway known")
        found += "; a gateway is known"
    return found


def _batman_table(check: Check, meshif: str, json_command: str, text_command: str) -> list:
    """A neighbour or originator table as JSON objects: batctl's JSON command where it has
    one (batctl 2021.1 and later), else parsed from the text table."""
    done = _run(["batctl", "meshif", meshif, json_command], check)
    if done.returncode == 0:
        try:
            table = json.loads(done.stdout or "[]")
            if isinstance(table, list):
                return table
        except ValueError:
            pass
    done = _run(["batctl", "meshif", meshif, text_command, "-H"], check)
    if done.returncode != 0:
        raise CheckFailed(f"batctl meshif {meshif} {text_command}: "
                          f"{_last_line(done.stderr) or 'failed'}")
    return parse_batman_text(done.stdout, "orig_address" if text_command == "o" else
                             "neigh_address")


def parse_batman_text(text: str, key: str) -> list[dict]:
    """`batctl n -H` or `batctl o -H` rows as {key: MAC, last_seen_msecs: ...}, for either
    routing algorithm: the first MAC on the row and the first `S.mmms` time."""
    rows = []
    for line in text.splitlines():
        mac, seen = _MAC.search(line.lower()), _SEEN.search(line)
        if mac and seen:
            rows.append({key: mac.group(0),
                         "last_seen_msecs": int(seen.group(1)) * 1000 + int(seen.group(2))})
    return rows


# -- babel -------------------------------------------------------------------------------------

_NEIGHBOUR = re.compile(r"^add neighbour \S+ address (\S+) if (\S+) reach ([0-9a-f]{4})")


def babel(check: Check) -> str:
    """Neighbours babeld hears (a non-zero reachability), at least `min_neighbours`."""
    wanted = _count(check, "min_neighbours", 1)
    where = check.options.get("socket", "")
    if not where:
        neighbours = _babel_ubus(check)
    else:
        neighbours = _babel_socket(check, where)
    if len(neighbours) < wanted:
        raise CheckFailed(f"babeld hears {len(neighbours)} neighbours, {wanted} wanted")
    return f"babeld hears {len(neighbours)} neighbours ({', '.join(sorted(neighbours))})"


def _babel_ubus(check: Check) -> list[str]:
    done = _run(["ubus", "call", "babeld", "get_neighbours"], check)
    if done.returncode != 0:
        raise CheckFailed(f"ubus call babeld get_neighbours: "
                          f"{_last_line(done.stderr) or 'failed'} (set option socket to use "
                          f"babeld's local interface)")
    try:
        families = json.loads(done.stdout)
    except ValueError:
        raise CheckFailed("ubus call babeld get_neighbours: not JSON") from None
    return [f"{address}%{n.get('dev', '?')}" for family in families.values()
            for address, n in family.items() if _reach(n.get("hello-reach"))]


def _reach(value) -> int:
    """babeld's reachability bitmap: a hex string on its local interface, a number in JSON."""
    return int(value, 16) if isinstance(value, str) else int(value or 0)


def _babel_socket(check: Check, where: str) -> list[str]:
    """`dump` over babeld's local interface (-g or -G): a unix socket path, or host:port."""
    try:
        if where.startswith("/"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = where
        else:
            host, _, port = where.rpartition(":")
            address = (host.strip("[]") or "::1", int(port))
            conn = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        with conn:
            conn.settimeout(check.timeout)
            conn.connect(address)
            greeting = _babel_until_ok(conn)
            if not greeting.startswith("BABEL"):
                raise CheckFailed(f"{where}: not babeld's local interface")
            conn.sendall(b"dump\n")
            dump = _babel_until_ok(conn)
    except (OSError, ValueError) as e:
        raise CheckFailed(f"babeld at {where}: {getattr(e, 'strerror', None) or e}") from None
    found = []
    for line in dump.splitlines():
        m = _NEIGHBOUR.match(line)
        if m and _reach(m.group(3)):
            found.append(f"{m.group(1)}%{m.group(2)}")
    return found


def _babel_until_ok(conn: socket.socket) -> str:
    """What babeld sends up to its `ok` line (or `no`/`bad`, which end a reply too)."""
    data = b""
    while not re.search(rb"(^|\n)(ok|no[^\n]*|bad)\n$", data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


# -- ping, service, scripts --------------------------------------------------------------------

def ping(check: Check) -> str:
    host = check.options.get("host", "")
    if not host:
        raise CheckFailed("option host is empty")
    count = _count(check, "count", 3)
    done = _run(["ping", "-c", str(count), "-W", "1", host], check)
    if done.returncode != 0:
        raise CheckFailed(f"{host} does not answer ({_last_line(done.stdout) or 'no reply'})")
    return f"{host} answers ({_last_line(done.stdout)})"


def service(check: Check) -> str:
    name = check.options.get("name", "")
    if not name:
        raise CheckFailed("option name is empty")
    done = _run(["ubus", "call", "service", "list", json.dumps({"name": name})], check)
    if done.returncode != 0:
        raise CheckFailed(f"ubus call service list: {_last_line(done.stderr) or 'failed'}")
    try:
        instances = json.loads(done.stdout or "{}").get(name, {}).get("instances", {})
    except (ValueError, AttributeError):
        raise CheckFailed("ubus call service list: not the JSON procd answers") from None
    running = [i for i, info in instances.items() if info.get("running")]
    if not running:
        raise CheckFailed(f"service {name} has no running instance")
    return f"service {name} runs ({', '.join(running)})"


def script(check: Check) -> str:
    done = _run([check.options["path"]], check)
    line = _last_line(done.stdout + "\n" + done.stderr)
    if done.returncode != 0:
        raise CheckFailed(f"exit {done.returncode}" + (f": {line}" if line else ""))
    return line or "exit 0"


KINDS = {"batman": batman, "babel": babel, "ping": ping, "service": service, "script": script}
