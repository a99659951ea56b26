"""The bodies of the commands a router runs most: list and status (a person, and LuCI through
rpcd, every few seconds) and mount (every boot). The front door (door.py) calls them without
importing click, the click group (listing.py, boot.py) with it; both give them the same
arguments. They read record headers only (list, status) and import nothing of the tree
layer or the wings until they need it: on a router's CPU, start-up is most of their run."""

from snapshot import overview
from snapshot.cli.plain import echo, human, print_json, when
from snapshot.errors import StockBoot
from snapshot.store.chain import Chain, opened


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
    from pathlib import Path
    from snapshot import boot   # here: every other command starts sooner
    sandbox = root is not None
    if sandbox:
        target = target.absolute()
        scratch = target.parent / f".{target.name}.snapshot"
    else:
        root, target, scratch = Path("/"), Path("/mnt"), Path("/tmp/.snapshot")
    target.mkdir(parents=True, exist_ok=True)
    try:
        boot.mount(obj["device"], root.absolute(), target, scratch,
                   boot.Log(kmsg=not sandbox), sandbox)
    except StockBoot as e:
        raise SystemExit(e.exit_code) from None   # logged; no `Error:`: nothing is wrong
    if not sandbox:
        boot.pivot(target)
