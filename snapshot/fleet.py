"""Rolling a bundle out to a fleet: a signed channel file on any static web server, units that
pull it, and waves that the publisher promotes one at a time (DESIGN.md §16).

    channel.json        {"format": 1, "published": T, "rollouts": [ROLLOUT, ...]}
    channel.json.sig    its usign signature (as an opkg feed's Packages.sig)
    bundles/ID.snb      the bundles

A ROLLOUT is {"id", "bundle" (a URL relative to the channel's), "base" (base_id of the
bundle's base), "message", "waves" (group names, in order), "promoted" (how many of them may
apply it), "max_failed" (failed trials a wave may have before the next is refused)}. One
rollout per base: publishing a bundle for a base replaces the one there was.

A unit (`config fleet` in /etc/config/snapshot: channel, group, delay, confirm) polls: it
fetches and verifies the channel, finds the rollout for its base whose promoted waves include
its group, and applies its bundle after a random delay of up to `delay` seconds, unless it
holds it already or the bundle's trial failed here (the rollback's note names it). With
`confirm operator` its health watch never confirms a bundle's trial: the operator does
(`fleet confirm`), or rolls it back (`fleet rollback`); a failed check or the watch's window
still rolls it back.
"""
import hashlib
import json
import os
import random
import shutil
import time
import urllib.parse
from pathlib import Path

from snapshot import bundle as bundles
from snapshot import config, operations
from snapshot import trial as trials
from snapshot.chain import Chain, commit
from snapshot.errors import SnapshotError

FORMAT = 1
CHANNEL = "channel.json"
MAX_CHANNEL = 1 << 20
DEFAULTS = {"channel": "", "group": "", "delay": "600", "confirm": "watch"}
CONFIRMERS = ("watch", "operator")


class FleetError(SnapshotError):
    """A channel that cannot be read or trusted, or a promotion refused."""


def base_id(hashes: list[str]) -> str:
    """The name of a base in a channel: 16 hex digits of SHA-256 over its snapshots' hashes."""
    return hashlib.sha256(",".join(hashes).encode()).hexdigest()[:16]


def settings(path: str | None = None) -> dict[str, str]:
    """The `config fleet` section's options over DEFAULTS."""
    found = next((opts for kind, _, opts in config.sections(path) if kind == "fleet"), {})
    options = {**DEFAULTS, **found}
    if options["confirm"] not in CONFIRMERS:
        raise FleetError(f"option confirm in `config fleet` is {options['confirm']!r}: it is "
                         f"{' or '.join(CONFIRMERS)}")
    return options


# -- the publisher's side ---------------------------------------------------------------------

def _load(channel: Path) -> dict:
    path = channel / CHANNEL
    if not path.exists():
        return {"format": FORMAT, "published": 0, "rollouts": []}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise FleetError(f"{path}: not a channel file: {e}") from None
    if data.get("format") != FORMAT:
        raise FleetError(f"{path}: channel format {data.get('format')} is not {FORMAT}")
    return data


def _save(channel: Path, data: dict, key: Path) -> None:
    """Write the channel and its signature; each replaced whole (rename), the signature
    last, so a unit polling meanwhile sees the old pair or a mismatch it refuses."""
    data["published"] = int(time.time())
    text = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    signature = bundles.sign_bytes(text, key)
    for name, content in ((CHANNEL, text), (f"{CHANNEL}.sig", signature)):
        tmp = channel / f".{name}.new"
        tmp.write_bytes(content)
        os.replace(tmp, channel / name)


def publish(channel: Path, bundle_file: Path, waves: list[str], key: Path,
            max_failed: int = 0) -> dict:
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
    rollout = {"id": made.id, "bundle": f"bundles/{made.id}.snb",
               "base": base_id(made.manifest["base"]), "message": made.manifest["message"],
               "waves": waves, "promoted": 1, "max_failed": max_failed}
    data["rollouts"] = [r for r in data["rollouts"] if r["base"] != rollout["base"]] + [rollout]
    _save(channel, data, key)
    return rollout


def outcome(unit: dict, bundle_id: str) -> str:
    """Where a unit's `status --json` says it stands with a bundle: confirmed, trial, failed
    or not applied."""
    applied = unit.get("bundle") or {}
    note = unit.get("last_rollback") or {}
    if applied.get("id") == bundle_id and applied.get("state") in ("confirmed", "trial"):
        return applied["state"]
    if note.get("bundle") == bundle_id or applied.get("id") == bundle_id:
        return "failed"
    return "not applied"


def promote(channel: Path, report: dict, key: Path, bundle_id: str | None = None) -> dict:
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
    _save(channel, data, key)
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

def fetch_channel(url: str, keys_dir: Path) -> dict:
    """The channel at `url`, verified against the trusted keys."""
    from snapshot import fetch
    text, signature = (fetch.read_whole(name, MAX_CHANNEL) for name in (url, f"{url}.sig"))
    if not bundles.verify_bytes(text, signature, keys_dir):
        raise FleetError(f"{url}: the channel's signature does not verify against "
                         f"{keys_dir}")
    try:
        data = json.loads(text)
        assert data["format"] == FORMAT and isinstance(data["rollouts"], list)
    except (ValueError, KeyError, AssertionError, TypeError):
        raise FleetError(f"{url}: not a channel file") from None
    return data


def withdraw(channel: Path, key: Path, bundle_id: str) -> dict:
    """Take the bundle's rollout out of the channel, so that no unit applies it any more (the
    bundle file stays, for a unit in the middle of its download). Nothing changes when the
    channel does not have it."""
    data = _load(channel)
    kept = [r for r in data["rollouts"] if r["id"] != bundle_id]
    if len(kept) == len(data["rollouts"]):
        raise FleetError(f"bundle {bundle_id} is not in the channel {channel}")
    data["rollouts"] = kept
    _save(channel, data, key)
    return {"id": bundle_id, "withdrawn": True}


def choose(data: dict, base: str, group: str) -> dict | None:
    """The rollout for this base whose promoted waves include this group."""
    for rollout in data["rollouts"]:
        if rollout["base"] == base and group in rollout["waves"][:rollout["promoted"]]:
            return rollout
    return None


def poll(chain_opener, options: dict, fleet: dict, max_attempts: int, log,
         now: bool = False, sleep=time.sleep) -> dict:
    """One poll: what it did, as `fleet poll --json` prints it. `chain_opener()` opens the
    writable chain (a context manager)."""
    if not fleet["channel"]:
        raise FleetError("no channel is configured (option channel in `config fleet`)")
    if not fleet["group"]:
        raise FleetError("no group is configured (option group in `config fleet`)")
    delay = config.number(fleet, "delay", 0)
    data = fetch_channel(fleet["channel"], Path(options["keys_dir"]))
    with chain_opener() as chain:
        if chain.trial is not None:
            return {"action": "none", "reason": "a trial is pending"}
        mine = base_id(bundles.base(chain))
        rollout = choose(data, mine, fleet["group"])
        if rollout is None:
            return {"action": "none", "reason": f"nothing for base {mine} in group "
                                                f"{fleet['group']}"}
        note = chain.note
        if note is not None and bundles.tag_of(note.message) == rollout["id"]:
            log(f"fleet: bundle {rollout['id']} was rolled back here ({note.message}); not "
                f"applying it again")
            return {"action": "none", "reason": f"bundle {rollout['id']} failed here",
                    "bundle": rollout["id"]}
    wait = random.uniform(0, delay) if delay and not now else 0
    if wait:
        log(f"fleet: bundle {rollout['id']} for group {fleet['group']}: applying in "
            f"{wait:.0f} s")
        sleep(wait)
    url = urllib.parse.urljoin(fleet["channel"], rollout["bundle"])
    with chain_opener() as chain:
        result = bundles.apply_from(url, chain, options, max_attempts, log)
    return {"action": "applied" if result["applied"] else "none", "bundle": rollout["id"],
            **result}


# -- the operator's decision, on the unit -------------------------------------------------------

def _bundle_trial(chain: Chain, bundle_id: str):
    trial = chain.trial
    return trial if trial is not None and bundles.tag_of(trial.entry.message) == bundle_id \
        else None


def _not_on_trial(chain: Chain, bundle_id: str) -> str:
    """Why `bundle_id` is not on trial here, for a refusal or a no-op."""
    applied = bundles.applied(chain)
    note = chain.note
    if note is not None and bundles.tag_of(note.message) == bundle_id:
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
        applied = bundles.applied(chain)
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
        applied = bundles.applied(chain)
        if applied and applied["id"] == bundle_id and applied["state"] == "confirmed":
            raise FleetError(f"not rolling back: bundle {bundle_id} is confirmed here "
                             f"(snapshot {applied['snapshot']}); `snapshot rollback --to "
                             f"{applied['snapshot'] - 1}` does it, and drops this unit's "
                             f"volatile record too")
        return {"bundle": bundle_id, "action": "none", "reason": _not_on_trial(chain, bundle_id)}
    what = trials.name(chain, trial)
    commit(chain, *trials.fail(chain, f"{what}: rolled back by the operator", when))
    return {"bundle": bundle_id, "action": "rolled back", "what": what}
