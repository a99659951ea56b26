"""Rolling a bundle out to a fleet: a signed channel file on any static web server, units that
pull it, and waves that the publisher promotes one at a time (DESIGN.md §16).

    channel.json        {"format": 1, "version": N, "published": T, "expires": E,
                         "rollouts": [ROLLOUT, ...]}
    channel.json.sig    its usign signature (as an opkg feed's Packages.sig)
    bundles/ID.snb      the bundles

A ROLLOUT is {"id", "bundle" (a URL relative to the channel's), "sha256" and "length" (of
the bundle file), "base" (base_id of the bundle's base), "message", "waves" (group names, in
order), "promoted" (how many of them may apply it), "max_failed" (failed trials a wave may
have before the next is refused)}. One rollout per base: publishing a bundle for a base
replaces the one there was. Every save bumps `version` and signs a new `expires`; `fleet
resign` does only that, before the channel expires.

A unit (`config fleet` in /etc/config/snapshot: channel, group, delay, confirm) polls: it
fetches the channel and verifies it with the channel keys (never a bundle key), refuses a
version lower than the highest it accepted or an expired one (by a clock known to be set),
finds the rollout for its base whose promoted waves include its group, and after a random
delay of up to `delay` seconds downloads the bundle (at most its length, checked against its
hash and id) before it takes the device, then applies it: unless it holds it already or the
bundle's trial failed here. What it accepted and what failed here stay on flash, in the
anchor's fleet entry (FORMAT.md §3), across reboots and rollbacks. With
`confirm operator` its health watch never confirms a bundle's trial: the operator does
(`fleet confirm`), or rolls it back (`fleet rollback`); a failed check or the watch's window
still rolls it back.
"""
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path

from snapshot import config, operations
from snapshot.errors import SnapshotError
from snapshot.fleet import bundle as bundles
from snapshot.fleet import memory
from snapshot.fleet.memory import FleetError
from snapshot.store import trial as trials
from snapshot.store.chain import Chain, commit
from snapshot.store.format import MAX_CHANNEL_VERSION, MAX_TIME, Fleet, is_bundle_id

FORMAT = 1
CHANNEL = "channel.json"
MAX_CHANNEL = 1 << 20
#: How long a saved channel stays valid unless the publisher says otherwise: `fleet resign`
#: renews it (from cron on the publisher's machine).
EXPIRES_IN = 7 * 24 * 3600
#: A unit's clock this far behind a time it knows passed (the channel's signed `published`,
#: the firmware's build) is not set, and expiries are not checked against it (DESIGN.md §16).
CLOCK_SLACK = 3600
def base_id(hashes: list[str]) -> str:
    """The name of a base in a channel: 16 hex digits of SHA-256 over its snapshots' hashes."""
    return hashlib.sha256(",".join(hashes).encode()).hexdigest()[:16]


# -- the publisher's side ---------------------------------------------------------------------

def _load(channel: Path) -> dict:
    path = channel / CHANNEL
    if not path.exists():
        return {"format": FORMAT, "version": 0, "published": 0, "rollouts": []}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise FleetError(f"{path}: not a channel file: {e}") from None
    if data.get("format") != FORMAT:
        raise FleetError(f"{path}: channel format {data.get('format')} is not {FORMAT}")
    return data


def _save(channel: Path, data: dict, key: Path, expires_in: int = EXPIRES_IN) -> None:
    """Write the channel and its signature, one version higher than it was and valid for
    `expires_in` seconds; each replaced whole (rename), the signature last, so a unit
    polling meanwhile sees the old pair or a mismatch it refuses. A rollout without its
    file's hash and length (a channel an older snapshot wrote) gets them here."""
    if expires_in <= 0:
        raise FleetError("the channel must expire some time after now (--expires-in)")
    version = data.get("version", 0) + 1
    if not isinstance(version, int) or version > MAX_CHANNEL_VERSION:
        raise FleetError(f"the channel's version {version!r} is not a number up to "
                         f"{MAX_CHANNEL_VERSION}")
    for rollout in data["rollouts"]:
        if "sha256" not in rollout or "length" not in rollout:
            rollout.update(_file_digest(channel / rollout["bundle"]))
    data["version"] = version
    data["published"] = int(time.time())
    data["expires"] = data["published"] + int(expires_in)
    text = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    signature = bundles.sign_bytes(text, key)
    for name, content in ((CHANNEL, text), (f"{CHANNEL}.sig", signature)):
        tmp = channel / f".{name}.new"
        tmp.write_bytes(content)
        os.replace(tmp, channel / name)


def _file_digest(path: Path) -> dict:
    """{"sha256", "length"} of a bundle file, as a rollout names it."""
    digest, length = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(bundles.CHUNK):
                digest.update(chunk)
                length += len(chunk)
    except OSError as e:
        raise FleetError(f"{path}: {e.strerror}") from None
    return {"sha256": digest.hexdigest(), "length": length}


def publish(channel: Path, bundle_file: Path, waves: list[str], key: Path,
            max_failed: int = 0, expires_in: int = EXPIRES_IN) -> dict:
    """Put the bundle in the channel and start its rollout with the first wave."""
    if not waves or any(not w or "," in w for w in waves):
        raise FleetError("name the waves in order, e.g. --waves canary,rest")
    with open(bundle_file, "rb") as f:
        made = bundles.read_head(f, str(bundle_file))
    if not made.signature:
        raise FleetError(f"{bundle_file} is not signed: units refuse unsigned bundles")
    channel.mkdir(parents=True, exist_ok=True)
    (channel / "bundles").mkdir(exist_ok=True)
    data = _load(channel)
    target = channel / "bundles" / f"{made.id}.snb"
    shutil.copyfile(bundle_file, target.with_name(f".{target.name}.new"))
    os.replace(target.with_name(f".{target.name}.new"), target)
    rollout = {"id": made.id, "bundle": f"bundles/{made.id}.snb", **_file_digest(target),
               "base": base_id(made.manifest["base"]), "message": made.manifest["message"],
               "waves": waves, "promoted": 1, "max_failed": max_failed}
    data["rollouts"] = [r for r in data["rollouts"] if r["base"] != rollout["base"]] + [rollout]
    _save(channel, data, key, expires_in)
    return rollout


def outcome(unit: dict, bundle_id: str) -> str:
    """Where a unit's `status --json` says it stands with a bundle: confirmed, trial, failed
    or not applied."""
    applied = unit.get("bundle") or {}
    note = unit.get("last_rollback") or {}
    failed = (unit.get("fleet") or {}).get("failed_here")
    failed = failed if isinstance(failed, list) else ()
    if applied.get("id") == bundle_id and applied.get("state") in ("confirmed", "trial"):
        return applied["state"]
    if note.get("bundle") == bundle_id or applied.get("id") == bundle_id or \
            bundle_id in failed:
        return "failed"
    return "not applied"


def promote(channel: Path, report: dict, key: Path, bundle_id: str | None = None,
            expires_in: int = EXPIRES_IN) -> dict:
    """Let the next wave apply the rollout, unless a wave already promoted has more failed
    trials than `max_failed`, or trials still pending, or units that have not applied it
    (by the report: `report` below). Refused with the numbers, nothing changed."""
    data = _load(channel)
    rollouts = [r for r in data["rollouts"] if bundle_id in (None, r["id"])]
    if len(rollouts) != 1:
        raise FleetError(f"{len(rollouts)} rollouts match; name the bundle (--bundle ID)")
    rollout = rollouts[0]
    if rollout["promoted"] >= len(rollout["waves"]):
        raise FleetError(f"bundle {rollout['id']} is promoted to every wave already")
    done = rollout["waves"][:rollout["promoted"]]
    units = {name: u for name, u in report["units"].items() if u.get("group") in done}
    states = {name: outcome(u, rollout["id"]) for name, u in units.items()}
    failed = sorted(n for n, s in states.items() if s == "failed")
    waiting = sorted(n for n, s in states.items() if s in ("trial", "not applied"))
    nxt = rollout["waves"][rollout["promoted"]]
    if len(failed) > rollout["max_failed"]:
        raise FleetError(f"not promoting {nxt}: {len(failed)} failed trial"
                         f"{'s' * (len(failed) != 1)} in {', '.join(done)} ({', '.join(failed)}),"
                         f" more than the {rollout['max_failed']} allowed")
    if waiting:
        raise FleetError(f"not promoting {nxt}: {len(waiting)} unit"
                         f"{'s' * (len(waiting) != 1)} of {', '.join(done)} have not decided "
                         f"yet ({', '.join(waiting)})")
    if not units:
        raise FleetError(f"not promoting {nxt}: the report has no unit of {', '.join(done)}")
    rollout["promoted"] += 1
    _save(channel, data, key, expires_in)
    return {"id": rollout["id"], "promoted": rollout["waves"][:rollout["promoted"]],
            "confirmed": len(units) - len(failed), "failed": failed}


def report(statuses: dict[str, dict], bundle_id: str | None = None) -> dict:
    """One report of many units' `status --json` (read_status), by unit name, with each one's
    outcome of `bundle_id` (default: the bundle most units hold); a unit whose status could
    not be read stays `{"error": ...}`, naming its file."""
    if bundle_id is None:
        ids = [((s.get("bundle") or {}).get("id")) for s in statuses.values()
               if "error" not in s]
        ids = [i for i in ids if i]
        bundle_id = max(set(ids), key=ids.count) if ids else None
    units = {}
    for name, s in sorted(statuses.items()):
        if "error" in s:
            units[name] = {"error": s["error"]}
            continue
        fleet = s.get("fleet") or {}
        units[name] = {"group": fleet.get("group"), "bundle": s.get("bundle"),
                       "trial": s.get("trial"), "last_rollback": s.get("last_rollback"),
                       "fleet": {k: fleet.get(k) for k in ("channel_version", "channel_expires",
                                                           "failed_here", "last_poll")},
                       "outcome": outcome(s, bundle_id) if bundle_id else "not applied"}
    return {"bundle": bundle_id, "units": units}


#: A unit's `status --json` is a few KiB.
MAX_STATUS = 1 << 20


def read_status(path: Path) -> dict:
    """A unit's `snapshot status --json` file, or `{"error": "PATH: why"}` for one that cannot
    be read or is not one, so that report() reports the other units and names this file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATUS + 1)
    except OSError as e:
        return {"error": f"{path}: {e.strerror}"}
    if len(data) > MAX_STATUS:
        return {"error": f"{path}: larger than {MAX_STATUS} bytes: not a unit's status"}
    try:
        status = json.loads(data)
    except (ValueError, RecursionError):     # RecursionError: nested too deeply
        return {"error": f"{path}: not JSON"}
    # "error" is what report() keeps of an unreadable unit: no status has it.
    if not isinstance(status, dict) or "error" in status:
        return {"error": f"{path}: not a unit's status (not a JSON object of one)"}
    # The parts report() and promote() read, with the types `status --json` gives them.
    for key, fields in (("bundle", ("id", "state")), ("fleet", ("group",)),
                        ("last_rollback", ("reason", "bundle"))):
        part = status.get(key)
        if part is not None and not (isinstance(part, dict) and all(
                isinstance(part.get(f), (str, type(None))) for f in fields)):
            return {"error": f"{path}: not a unit's status ({key} is not what "
                             f"`snapshot status --json` gives)"}
    return status


def read_report(path: Path) -> dict:
    """The report `fleet report -o` wrote, for promote; FleetError, naming the file, unless
    it is one: a JSON object whose units are each an object, with the parts promote reads of
    the types report() gives them."""
    try:
        report = json.loads(path.read_bytes())
    except OSError as e:
        raise FleetError(f"{path}: {e.strerror}") from None
    except (ValueError, RecursionError):     # RecursionError: nested too deeply
        report = None
    units = report.get("units") if isinstance(report, dict) else None
    if not isinstance(units, dict) or not all(
            isinstance(u, dict) and isinstance(u.get("group"), (str, type(None)))
            and all(isinstance(u.get(k), (dict, type(None)))
                    for k in ("bundle", "last_rollback", "fleet"))
            for u in units.values()):
        raise FleetError(f"{path}: not a report of `snapshot fleet report`")
    return report


# -- the unit's side --------------------------------------------------------------------------

def fetch_channel(url: str, channel_keys: Path, bundle_keys: Path) -> dict:
    """The channel at `url`, signed by a key of the channel role (`channel_keys`) that is not
    also trusted for bundles (`bundle_keys`), with every field a unit reads well formed."""
    from snapshot.fleet import fetch
    text, signature = (fetch.read_whole(name, MAX_CHANNEL) for name in (url, f"{url}.sig"))
    try:
        key = bundles.fingerprint(signature)
    except bundles.BundleRefused:
        raise FleetError(f"{url}: the channel's signature is not a usign signature") from None
    if (bundle_keys / key).is_file():
        raise FleetError(f"{url}: the channel is signed by key {key}, a bundle key "
                         f"({bundle_keys}): a bundle key never signs a channel")
    if not (channel_keys / key).is_file():
        raise FleetError(f"{url}: the channel is signed by key {key}, which {channel_keys} "
                         f"(option channel_keys_dir) does not trust")
    if not bundles.verify_bytes(text, signature, channel_keys / key):
        raise FleetError(f"{url}: the channel's signature does not verify against "
                         f"{channel_keys}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):     # RecursionError: nested too deeply
        data = None
    why = _malformed(data)
    if why:
        raise FleetError(f"{url}: not a channel this unit takes: {why}")
    return data


SHA256 = re.compile(r"[0-9a-f]{64}")


def _number(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _malformed(data) -> str | None:
    """Why parsed JSON is not a channel whose fields a unit may use, or None."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"its format is not {FORMAT}"
    if "version" not in data or "expires" not in data:
        return "it has no version or expiry (an older snapshot wrote it: `snapshot fleet " \
               "resign` signs it anew)"
    if not (_number(data["version"], 1, MAX_CHANNEL_VERSION)
            and _number(data.get("published"), 0, MAX_TIME)
            and _number(data["expires"], 0, MAX_TIME)):
        return "its version, published or expires is not a number in range"
    if not isinstance(data.get("rollouts"), list):
        return "its rollouts are not a list"
    for r in data["rollouts"]:
        if not (isinstance(r, dict) and isinstance(r.get("id"), str)
                and is_bundle_id(r["id"]) and isinstance(r.get("bundle"), str)
                and isinstance(r.get("sha256"), str) and SHA256.fullmatch(r["sha256"])
                and _number(r.get("length"), 0, MAX_TIME) and isinstance(r.get("base"), str)
                and isinstance(r.get("waves"), list)
                and all(isinstance(w, str) for w in r["waves"])
                and _number(r.get("promoted"), 0, len(r["waves"]))):
            return "a rollout lacks a field, or has one of the wrong type"
    return None


def withdraw(channel: Path, key: Path, bundle_id: str, expires_in: int = EXPIRES_IN) -> dict:
    """Take the bundle's rollout out of the channel, so that no unit applies it any more (the
    bundle file stays, for a unit in the middle of its download). Nothing changes when the
    channel does not have it."""
    data = _load(channel)
    kept = [r for r in data["rollouts"] if r["id"] != bundle_id]
    if len(kept) == len(data["rollouts"]):
        raise FleetError(f"bundle {bundle_id} is not in the channel {channel}")
    data["rollouts"] = kept
    _save(channel, data, key, expires_in)
    return {"id": bundle_id, "withdrawn": True}


def resign(channel: Path, key: Path, expires_in: int = EXPIRES_IN) -> dict:
    """Sign the channel again as it is, one version higher with a new expiry: what keeps
    units taking it (run it well before `expires`, e.g. daily from cron)."""
    if not (channel / CHANNEL).exists():
        raise FleetError(f"{channel / CHANNEL}: no channel to sign (fleet publish makes one)")
    data = _load(channel)
    _save(channel, data, key, expires_in)
    return {"version": data["version"], "expires": data["expires"]}


def choose(data: dict, base: str, group: str) -> dict | None:
    """The rollout for this base whose promoted waves include this group."""
    for rollout in data["rollouts"]:
        if rollout["base"] == base and group in rollout["waves"][:rollout["promoted"]]:
            return rollout
    return None


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _built(rom: str) -> int:
    """The firmware's build time: the mtime of its root (an OpenWrt squashfs gives every file
    the build's SOURCE_DATE_EPOCH); 0 when it cannot be read."""
    try:
        return int(os.stat(rom).st_mtime)
    except OSError:
        return 0


def check_fresh(data: dict, memory: Fleet, now: float, built: int) -> bool:
    """Refuse (FleetError) a channel older than the newest this unit accepted, and one that
    expired by a clock known to be set. Returns whether the clock is: it is not when it
    reads earlier, by more than CLOCK_SLACK, than a time known to have passed (the firmware's
    build, the signed `published` of this channel or of the newest accepted one); expiries
    are then not checked (DESIGN.md §16)."""
    if data["version"] < memory.version:
        raise FleetError(f"channel version {data['version']} is older than version "
                         f"{memory.version}, which this unit accepted: a replayed channel; "
                         f"nothing was written")
    if now < max(built, memory.published, data["published"]) - CLOCK_SLACK:
        return False
    if now >= data["expires"]:
        raise FleetError(f"channel version {data['version']} expired at "
                         f"{_utc(data['expires'])}: the publisher has not signed it anew "
                         f"(`snapshot fleet resign`), or the server serves an old one; "
                         f"nothing was written")
    return True


def accepted(memory: Fleet, data: dict) -> Fleet:
    """The memory once this channel is accepted: its version, if it is higher."""
    if data["version"] <= memory.version:
        return memory
    return memory._replace(version=data["version"], published=data["published"],
                           expires=data["expires"])


def _wanted(chain: Chain, data: dict, group: str) -> tuple[dict | None, str]:
    """The rollout this unit should apply now, or None and why not."""
    if chain.trial is not None:
        return None, "a trial is pending"
    mine = base_id(bundles.base(chain))
    rollout = choose(data, mine, group)
    if rollout is None:
        return None, f"nothing for base {mine} in group {group}"
    if rollout["id"] in memory.failed_here(chain):
        return None, f"bundle {rollout['id']} failed here"
    return rollout, ""


def download(url: str, rollout: dict):
    """The bundle file the rollout names, in an unnamed temporary file (in /tmp, RAM on a
    router; gone with the process however it ends): at most the length the channel gives,
    and refused (FleetError) unless it has exactly that length and SHA-256. Flash is not
    touched, nor the device locked, while it waits on the network."""
    from snapshot.fleet import fetch
    length, where = rollout["length"], tempfile.gettempdir()
    st = os.statvfs(where)
    if length > st.f_bavail * st.f_frsize:
        raise FleetError(f"{url}: the bundle is {length} bytes and {where} has "
                         f"{st.f_bavail * st.f_frsize} free; nothing was written")
    f = tempfile.TemporaryFile(prefix="snapshot-bundle-")
    try:
        with fetch.open_source(url) as stream:
            digest, copied, more = bundles.copy_counted(stream, f.write, length)
        if copied < length:
            raise FleetError(f"{url}: {copied} bytes, and the channel gives {length}; nothing "
                             f"was written")
        if more:
            raise FleetError(f"{url}: longer than the {length} bytes the channel gives: not "
                             f"the bundle it names; nothing was written")
        if digest != rollout["sha256"]:
            raise FleetError(f"{url}: its SHA-256 is not the one the channel gives: not the "
                             f"bundle it names; nothing was written")
        f.seek(0)
        return f
    except OSError as e:
        f.close()
        raise FleetError(f"{url}: cannot keep the download in {where}: "
                         f"{e.strerror or e}; nothing was written") from None
    except BaseException:
        f.close()
        raise


def poll(chain_opener, options: dict, fleet: dict, max_attempts: int, log,
         now: bool = False, sleep=time.sleep, clock=time.time) -> dict:
    """One poll: what it did, as `fleet poll --json` prints it, kept in memory.LAST_POLL for
    `status`; a refusal (SnapshotError) is logged and kept there too, with nothing written.
    `chain_opener()` opens the writable chain (a context manager, which locks the device):
    only to read the chain and to commit, never while the poll waits on the network."""
    if not fleet["channel"]:
        raise FleetError("no channel is configured (option channel in `config fleet`)")
    if not fleet["group"]:
        raise FleetError("no group is configured (option group in `config fleet`)")
    delay = config.number(fleet, "delay", 0)
    try:
        done = _poll(chain_opener, options, fleet, max_attempts, log, delay, now, sleep,
                     clock)
    except SnapshotError as e:
        log(f"fleet: poll refused: {e}", loud=True)
        memory.keep_poll({"action": "refused", "reason": str(e)}, clock())
        raise
    memory.keep_poll(done, clock())
    return done


def _poll(chain_opener, options, fleet, max_attempts, log, delay, now, sleep, clock) -> dict:
    data = fetch_channel(fleet["channel"], Path(options["channel_keys_dir"]),
                         Path(options["keys_dir"]))
    built = _built(options["rom"])
    with chain_opener() as chain:
        memory = Fleet.of(chain.fleet)
        clock_set = check_fresh(data, memory, clock(), built)
        said = {"channel": {"version": data["version"], "expires": data["expires"],
                            "clock": "set" if clock_set else "not set"}}
        rollout, reason = _wanted(chain, data, fleet["group"])
        if rollout is None:
            if accepted(memory, data) != memory:
                commit(chain, [r.entry for r in chain.records],
                       fleet=accepted(memory, data).entry())
            return {"action": "none", "reason": reason, **said}
    wait = random.uniform(0, delay) if delay and not now else 0
    if wait:
        log(f"fleet: bundle {rollout['id']} for group {fleet['group']}: applying in "
            f"{wait:.0f} s")
        sleep(wait)
    url = urllib.parse.urljoin(fleet["channel"], rollout["bundle"])
    # Only a URL: a channel never makes a unit read one of its own files.
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FleetError(f"the channel's bundle {rollout['id']} is not at an http or https "
                         f"URL; nothing was written")
    with download(url, rollout) as f:
        try:
            made = bundles.read_head(f, url)
            if made.id != rollout["id"]:
                raise FleetError(f"{url} is bundle {made.id}, and the channel names "
                                 f"{rollout['id']}; nothing was written")
            bundles.check(made, bundles.Router(
                Path(options["keys_dir"]), bundles.board(Path(options["board_file"])),
                Path(options["rom"])))
            bundles.check_file(f, made, url)
        except bundles.BundleRefused as e:
            raise FleetError(str(e)) from None
        with chain_opener() as chain:
            # Another poll, or a decision, may have come meanwhile: everything again.
            memory = Fleet.of(chain.fleet)
            check_fresh(data, memory, clock(), built)
            again, reason = _wanted(chain, data, fleet["group"])
            if again is None or again["id"] != made.id:
                return {"action": "none", "reason": reason or "the channel changed", **said}
            result = bundles.apply(chain, f, made, max_attempts, url,
                                   fleet=accepted(memory, data).entry())
    log(f"fleet: bundle {made.id} applied as snapshot {result['snapshot']} on trial: "
        f"{made.manifest['message']}")
    return {"action": "applied", "bundle": made.id, **result, **said}


# -- the operator's decision, on the unit -------------------------------------------------------

def _bundle_trial(chain: Chain, bundle_id: str):
    trial = chain.trial
    return trial if trial is not None and trials.bundle_of(trial.entry.message) == bundle_id \
        else None


def _not_on_trial(chain: Chain, bundle_id: str) -> str:
    """Why `bundle_id` is not on trial here, for a refusal or a no-op."""
    applied = trials.bundle_applied(chain)
    note = chain.note
    if note is not None and trials.bundle_of(note.message) == bundle_id:
        return f"bundle {bundle_id} was rolled back here ({note.message})"
    if applied and applied["id"] == bundle_id:
        return f"bundle {bundle_id} is {applied['state']} here (snapshot {applied['snapshot']})"
    if chain.trial is not None:
        return f"{trials.name(chain, chain.trial)} is on trial here, not bundle {bundle_id}"
    return f"bundle {bundle_id} is not on this unit"


def confirm(chain: Chain, bundle_id: str, health: dict | None, force: bool = False) -> dict:
    """Confirm the pending trial of `bundle_id` (one commit). Refused, nothing written, when
    another change is on trial, when the bundle is not on trial here, or when the watch's last
    round of checks this boot failed (unless `force`). Confirming it twice is a no-op."""
    trial = _bundle_trial(chain, bundle_id)
    if trial is None:
        applied = trials.bundle_applied(chain)
        if applied and applied["id"] == bundle_id and applied["state"] == "confirmed":
            return {"bundle": bundle_id, "action": "none", "reason": "confirmed already"}
        raise FleetError(f"not confirming: {_not_on_trial(chain, bundle_id)}")
    failing = [r for r in (health or {}).get("results", []) if r["required"] and not r["ok"]]
    if failing and not force:
        raise FleetError(f"not confirming bundle {bundle_id}: its last health check failed "
                         f"({failing[0]['name']}: {failing[0]['detail']}); --force confirms "
                         f"it anyway")
    return {"bundle": bundle_id, "action": "confirmed", "what": operations.confirm(chain)}


def rollback(chain: Chain, bundle_id: str, when: int) -> dict:
    """Fail the trial of `bundle_id` (one commit), as the watch does: the next boot is the
    state before it, this unit's own configuration included, and the note names the bundle,
    so that no poll applies it again. A confirmed bundle is refused (rolling it back drops the
    volatile record too: `snapshot rollback --to N` says so); one that is not here, or was
    rolled back already, is a no-op."""
    trial = _bundle_trial(chain, bundle_id)
    if trial is None:
        applied = trials.bundle_applied(chain)
        if applied and applied["id"] == bundle_id and applied["state"] == "confirmed":
            raise FleetError(f"not rolling back: bundle {bundle_id} is confirmed here "
                             f"(snapshot {applied['snapshot']}); `snapshot rollback --to "
                             f"{applied['snapshot'] - 1}` does it, and drops this unit's "
                             f"volatile record too")
        return {"bundle": bundle_id, "action": "none", "reason": _not_on_trial(chain, bundle_id)}
    what = trials.name(chain, trial)
    commit(chain, *trials.fail(chain, f"{what}: rolled back by the operator", when))
    return {"bundle": bundle_id, "action": "rolled back", "what": what}
