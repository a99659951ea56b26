"""The bodies of the commands a router runs most: list and status (a person, and LuCI through
rpcd, every few seconds), mount (every boot), unpack, and bundle apply (a fleet's rollout).
The front door (door.py) calls them without importing click, the click group (listing.py,
chain.py, boot.py, bundle.py) with it; both give them the same arguments. list and status
read record headers only, and each imports nothing of the tree layer or the wings until it
needs it: on a router's CPU, start-up is most of a short command's run. Paths are strings
(os.path): pathlib's import, with re, enum and urllib.parse, would cost each boot's mount
more than Python's own start-up there."""
import os

from snapshot import overview
from snapshot.cli.plain import echo, human, print_json, when
from snapshot.errors import SnapshotError, StockBoot
from snapshot.store.chain import Chain, opened
from snapshot.text import SysLog


def list_chain(obj: dict, as_json: bool) -> None:
    with opened(obj["device"]) as dev:
        info = overview.listing(Chain(dev))
    if as_json:
        print_json(info)
        return
    echo(f"{'#':>3}  {'seq':>4}  {'size':>10}  {'flash':>10}  {'blocks':>6}  "
         f"{'created':<19}  {'state':<10}  message")
    for s in info["snapshots"]:
        echo(f"{s['index']:>3}  {s['seq']:>4}  {human(s['size']):>10}  "
             f"{human(s['flash_bytes']):>10}  {s['blocks']:>6}  {when(s['created'])}  "
             f"{_state(s):<10}  {s['message']}")
    for v in info["volatiles"] or [None]:
        echo(f"volatile: {human(v['size'])} in {v['blocks']} blocks "
             f"({human(v['flash_bytes'])} of flash), {_state(v)}"
             + (", kept in case the trial fails" if v["kept_for_rollback"] else "")
             if v else "volatile: none")
    note = info["last_rollback"]
    if note:
        echo(f"last rollback: {when(note['time'])}: {note['reason']}")
    echo(f"flash: {human(info['used_bytes'])} used, {human(info['free_bytes'])} free")
    records = info["snapshots"] + info["volatiles"]
    unread = sum(r["integrity"] == "header ok" for r in records)
    if unread:
        echo(f"payloads: {unread} of {len(records)} not read since boot (list reads headers "
             f"only; `snapshot check` reads them all)")



def _state(record: dict) -> str:
    """A record's state for `list`: where it stands in a trial, and any damage."""
    state = record["state"]
    if state == "trial":
        state += f" {record['attempts']}/{record['max_attempts']}"
    damaged = record["integrity"].startswith("damaged")
    return f"{state}, {record['integrity']}" if damaged else state


def show_status(obj: dict, as_json: bool) -> None:
    from snapshot import jobs
    from snapshot.fleet import memory as fleet
    from snapshot.health import results
    from snapshot.packages import state as packages
    with opened(obj["device"]) as dev:
        chain = Chain(dev)
        info = overview.status(chain)
        info["fleet"] = fleet.status(chain, fleet.settings())
    info["health"] = results.last()
    info["job"] = jobs.last()
    info["unsaved_change"] = packages.unsaved()
    if as_json:
        print_json(info)
        return
    echo(f"chain: {info['snapshots']} snapshots, "
         + ("a volatile record" if info["volatile"] else "no volatile record")
         + f", {human(info['free_bytes'])} free")
    trial = info["trial"]
    echo(f"on trial: {trial['what']}, boot {trial['attempts']} of "
         f"{trial['max_attempts']}" if trial else "on trial: nothing")
    applied = info["bundle"]
    if applied:
        echo(f"bundle: {applied['id']} (snapshot {applied['snapshot']}, "
             f"{applied['state']}): {applied['message']}")
    note = info["last_rollback"]
    echo(f"last rollback: {when(note['time'])}: {note['reason']}" if note
         else "last rollback: none")
    results = info["health"]
    if results:
        failing = [r["name"] for r in results["results"] if not r["ok"]]
        echo(f"health at {when(results['time'])}: "
             + (f"failing: {', '.join(failing)}" if failing else "every check passed"))
    job = info["job"]
    if job:
        result = job["result"] or {}
        echo(f"background job {job['id']} ({job['method']}): {job['state']}"
             + (f", {job['progress']}" if job["state"] == "running" and job.get("progress")
                else "")
             + (f": {result['error']}" if "error" in result else ""))
    change = info["unsaved_change"]
    if change:
        echo(f"unsaved package change: {change['what']} is installed in RAM but not "
             f"stored ({change['error']}); a reboot discards it")
    for layer, used in info["ram"].items():
        if used is not None:
            echo(f"RAM in {layer}: {human(used)}")
    channel, polled = info["fleet"], info["fleet"]["last_poll"]
    if channel["channel_version"]:
        echo(f"fleet channel: version {channel['channel_version']} accepted, valid until "
             f"{when(channel['channel_expires'])}")
    if polled:
        echo(f"fleet poll at {when(polled['time'])}: {polled['action']}"
             + (f": {polled['reason']}" if polled.get("reason") else ""))


def mount_root(obj: dict, root, target) -> None:
    """Boot: the chain over the squashfs, pivoted into (root and target None), or the
    sandbox form at `target` over `root` (paths); exit status 6 when there is no chain to
    boot."""
    from snapshot import boot   # here: every other command starts sooner
    sandbox = root is not None
    if sandbox:
        target = os.path.abspath(target)
        folder, name = os.path.split(target)
        scratch = os.path.join(folder, f".{name}.snapshot")
    else:
        root, target, scratch = "/", "/mnt", "/tmp/.snapshot"
    os.makedirs(target, exist_ok=True)
    try:
        boot.mount(obj["device"], os.path.abspath(root), target, scratch,
                   boot.Log(kmsg=not sandbox), sandbox)
    except StockBoot as e:
        raise SystemExit(e.exit_code) from None   # logged; no `Error:`: nothing is wrong
    if not sandbox:
        boot.pivot(target)


def unpack_chain(obj: dict, dest, upto: int | None, volatile_to, rom, force: bool) -> None:
    """Snapshots 1..upto (all by default) applied into `dest`, the volatile record into
    `volatile_to` if given, whiteouts with nothing to hide in `rom` left out (paths)."""
    from snapshot import operations
    for where in (dest, volatile_to):
        if not force and where is not None and os.path.isdir(where) and os.listdir(where):
            raise SnapshotError(f"{where} is not empty: the snapshots' files and whiteouts "
                                f"would replace what it holds; add --force to unpack into "
                                f"it anyway")
    with opened(obj["device"]) as dev:
        count = operations.unpack(Chain(dev), dest, upto, volatile_to, rom)
    echo(f"unpacked {count} snapshots into {dest}")


def apply_bundle(obj: dict, source: str, no_reboot: bool, as_json: bool) -> None:
    """The bundle at `source` (a file or a URL) applied as a snapshot on trial, then a
    reboot into it unless `no_reboot`."""
    from snapshot import config
    from snapshot.cli.stores import max_attempts_of, writing
    from snapshot.fleet import bundle as bundles
    from snapshot.reboot import reboot_into
    # The outcome is this command's own line (or its one `Error:` line): the log goes to
    # syslog only.
    log = SysLog(echo=False)
    max_attempts = max_attempts_of(True)
    with writing(obj, "bundle") as (chain, progress):
        result = bundles.apply_from(source, chain, config.load(), max_attempts, log, progress)
    if as_json:
        print_json(result)
    elif result["applied"] is None:
        echo(f"nothing to do: {result['already']}")
    else:
        echo(f"bundle {result['applied']} is snapshot {result['snapshot']}, on trial: it "
             f"boots at most {max_attempts} times unless it is confirmed")
    if result["applied"] and not no_reboot:
        # Said on stderr too: whether this machine reboots is the user's to know.
        reboot_into(obj["device"], "the bundle's trial", SysLog())
