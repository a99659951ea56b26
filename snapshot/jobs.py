"""Long operations started over ubus (push, save): rpcd kills a plugin after 120 s, so they run
in a detached process and report through `snapshot status` (its `job`).

One job runs at a time. Its record is one JSON file in RAM, replaced whole (a temporary file
renamed into place), so a reader never sees half of it and a reboot forgets it:

    {"id": 3, "method": "push", "state": "running" | "done" | "lost", "pid": 1234,
     "started": 1700000000, "ended": 1700000042 | null, "result": {...} | null,
     "progress": "upgrade: 1.2 MiB written" | null}

`progress` is the job's last progress line (the one a terminal would show), rewritten at most
once a second (PROGRESS_EVERY) so that a long write costs a few record writes, not one a
block.

`result` is what the method would have answered had it run in the call (snapshot/rpcd.py).
"lost" means the process ended without a result (killed); the chain is then as its own rules
leave it after a cut (DESIGN.md), and `status` says which state it is in.
"""
import fcntl
import os
import time

from snapshot import kept
from snapshot.errors import Busy

DIRECTORY = "/tmp/snapshot"
RECORD = f"{DIRECTORY}/job.json"
# Held (flock) by the job's process for its whole life: a second job cannot start beside it.
LOCK = f"{DIRECTORY}/job.lock"
PROGRESS_EVERY = 1.0
# The job this process runs, if it is a job's process, and when its progress was last written.
_running: dict | None = None
_progress_written = 0.0


def start(method: str, run) -> int:
    """Run `run()` in a detached process (its own session, stdio on /dev/null); returns the
    job's id once its record says "running" (`run`: no arguments, returns a dict). Busy if a job is still running; then nothing
    starts."""
    os.makedirs(DIRECTORY, exist_ok=True)
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running = last()
            what = f"{running['method']} (job {running['id']})" if running else "a job"
            raise Busy(f"{what} is still running; see `snapshot status`") from None
        previous = last()
        job = {"id": previous["id"] + 1 if previous else 1, "method": method,
               "state": "running", "pid": None, "started": int(time.time()), "ended": None,
               "result": None, "progress": None}
        ready, written = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(ready)
                os.setsid()
                # The grandchild is nobody's child: rpcd neither waits for it nor kills it.
                if os.fork() == 0:
                    _detached(job, run, written)
            finally:
                os._exit(0)
        os.close(written)
        os.waitpid(child, 0)
        # End of file once the job wrote its record (or died before it could).
        os.read(ready, 1)
        os.close(ready)
    finally:
        os.close(lock)
    return job["id"]


def _detached(job: dict, run, written: int) -> None:
    """The job's process: it keeps the lock's descriptor (inherited) until it exits."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    global _running
    job["pid"] = os.getpid()
    _running = job
    _write(job)
    os.close(written)
    result = run()
    _write({**job, "state": "done", "ended": int(time.time()), "result": result})


def last() -> dict | None:
    """The newest job's record, or None if there is none."""
    job = _read()
    if job and job["state"] == "running" and not _alive(job["pid"]):
        # It may have finished between the read and the look: read once more.
        job = _read()
        if job and job["state"] == "running":
            job["state"] = "lost"
    return job


def progress(line: str, now: bool = False) -> None:
    """Note what the running job is doing, for `status` (at once with `now`, else at most
    every PROGRESS_EVERY seconds). Outside a job's process, nothing."""
    global _progress_written
    if _running is None:
        return
    if not now and time.monotonic() - _progress_written < PROGRESS_EVERY:
        return
    _running["progress"] = line
    _write(_running)
    _progress_written = time.monotonic()


def _read() -> dict | None:
    return kept.read(RECORD)


def _write(job: dict) -> None:
    kept.write(RECORD, job)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass   # another user's process: alive
    return True
