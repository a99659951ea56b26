"""The health watch over a change on trial (`snapshot watch`, run by the procd service after
boot): it runs the checks in rounds and decides, once, whether the trial is confirmed or
rolled back (DESIGN.md §10).

- Confirmed as soon as every required check has passed in `pass_rounds` rounds in a row.
- Rolled back once a required check has failed in `fail_rounds` rounds in a row (at least 2,
  so one bad round never rolls back) and `grace` seconds have passed, or when nothing is
  decided within `window` seconds (a check that flaps never confirms a trial).
- Nothing is ever decided about a confirmed state: with no trial pending the watch ends at
  once.
- A bundle's trial on a unit whose fleet has `option confirm operator` is never confirmed
  here: healthy rounds only wait for the operator's `snapshot fleet confirm`; failures and
  the window still roll it back (an operator who never comes back gets the old state).

The decision is one commit (trial.confirm, or trial.fail with a note of the reason); the
rollback then runs the hooks in `rollback_dir`, logs to syslog and reboots (snapshot/reboot.py:
only into the device this system booted from).
"""
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple

from snapshot import config
from snapshot.health import checks as health
from snapshot.health import results as kept
from snapshot.store import trial as trials
from snapshot.store.chain import commit


class Settings(NamedTuple):
    interval: float
    grace: float
    pass_rounds: int
    fail_rounds: int
    window: float
    rollback_dir: Path
    operator_confirms_bundles: bool = False

    @classmethod
    def load(cls, path: str | None = None) -> "Settings":
        from snapshot.fleet import memory
        options = config.load(path)
        return cls(config.number(options, "interval", 0), config.number(options, "grace", 0),
                   config.number(options, "pass_rounds", 1),
                   config.number(options, "fail_rounds", 2),
                   config.number(options, "window", 0), Path(options["rollback_dir"]),
                   memory.settings(path)["confirm"] == "operator")


class Decision(NamedTuple):
    verdict: str          # "confirmed", "rolled back", or "none" (nothing on trial)
    what: str             # the trial, as `list` names it
    reason: str           # why: the checks that passed, or the one that failed
    rounds: int


def watch(open_chain, checks: list[health.Check], settings: Settings, log: Callable,
          clock=time.monotonic, sleep=time.sleep) -> Decision:
    """Run rounds until the trial is decided; commit the decision. `open_chain()` gives a
    context manager yielding a writable, locked Chain: the chain is opened for each round's
    look and for the decision, never held while checks run."""
    started = clock()
    passed = failed = rounds = 0
    last_failure = ""
    waiting_said = False
    while True:
        with open_chain() as chain:
            if chain.trial is None:
                return Decision("none", "", "nothing is on trial", rounds)
            bundle = trials.bundle_of(chain.trial.entry.message)
        operator = bundle is not None and settings.operator_confirms_bundles
        results = health.run(checks)
        kept.keep(results)
        rounds += 1
        for r in results:
            log(f"health: {r.name}: {'pass' if r.ok else 'FAIL'}: {r.detail}",
                loud=not r.ok and r.required)
        if health.healthy(results):
            passed, failed = passed + 1, 0
        else:
            passed, failed = 0, failed + 1
            bad = next(r for r in results if r.required and not r.ok)
            last_failure = f"{bad.name}: {bad.detail}"
        elapsed = clock() - started
        if passed >= settings.pass_rounds and not operator:
            reason = f"every required check passed in {passed} rounds"
            return _decide(open_chain, "confirmed", reason, rounds, log)
        if passed >= settings.pass_rounds and not waiting_said:
            log(f"bundle {bundle}: healthy in {passed} rounds; the operator confirms it "
                f"(config fleet: confirm operator)")
            waiting_said = True
        if failed >= settings.fail_rounds and elapsed >= settings.grace:
            return _decide(open_chain, "rolled back", last_failure, rounds, log)
        if elapsed >= settings.window and rounds >= max(settings.pass_rounds,
                                                        settings.fail_rounds):
            reason = f"not confirmed within {settings.window:g} s" + \
                (f" (last failure: {last_failure})" if last_failure else "")
            return _decide(open_chain, "rolled back", reason, rounds, log)
        sleep(settings.interval)


def _decide(open_chain, verdict: str, reason: str, rounds: int, log: Callable) -> Decision:
    with open_chain() as chain:
        trial = chain.trial
        if trial is None:   # decided meanwhile (an operator's confirm or rollback)
            return Decision("none", "", "decided meanwhile", rounds)
        what = trials.name(chain, trial)
        if verdict == "confirmed":
            commit(chain, trials.confirm(chain))
        else:
            commit(chain, *trials.fail(chain, f"{what}: {reason}", int(time.time())))
    log(f"{verdict} {what}: {reason}", loud=verdict != "confirmed")
    return Decision(verdict, what, reason, rounds)


def run_hooks(directory: Path, decision: Decision, log: Callable) -> None:
    """The executables in `directory`, in name order, with the reason in SNAPSHOT_REASON. A
    hook that fails is logged; the rollback stands."""
    if not directory.is_dir():
        return
    env = dict(os.environ, SNAPSHOT_REASON=decision.reason, SNAPSHOT_TRIAL=decision.what)
    for hook in sorted(directory.iterdir()):
        if not (hook.is_file() and os.access(hook, os.X_OK)):
            continue
        try:
            done = subprocess.run([str(hook)], env=env, capture_output=True, text=True,
                                  timeout=60)
            if done.returncode != 0:
                log(f"rollback hook {hook.name} exited {done.returncode}", loud=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"rollback hook {hook.name} failed: {e}", loud=True)
