"""Test tiers. Tests marked `kernel` need real kernel MTD devices, which only a qemu guest has
here (the host kernel has no MTD). On the host, every selected kernel test is replaced by a
stand-in that reports the result of the same test run inside one guest, booted once per
session; inside the guest (SNAPSHOT_KERNEL_GUEST=1) they run for real.

If the guest cannot boot, the kernel tests fail with the reason: the tier is never skipped
silently. Deselect it explicitly with `-m "not kernel"`.

scripts/test.sh runs the suite in two pytest-xdist workers (`-n 2 --dist loadgroup`): the
kernel tests as one group (one guest), each file of tests that boot their own guests as one
(their module fixtures boot a router once; the real router's, one per CPU), and the host
tests as one, so no two host tests ever run at the same time (some share /tmp/snapshot). The
summary lines each worker gathers (cut points, qemu kills, the guest's run) reach the
controller's terminal summary.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

IN_GUEST = os.environ.get("SNAPSHOT_KERNEL_GUEST") == "1"
# Set by .ci/run: there every tier must run, so one that cannot fails instead of skipping.
REQUIRE_ALL_TIERS = os.environ.get("SNAPSHOT_REQUIRE_ALL_TIERS") == "1"
REPORT_ENV = "SNAPSHOT_GUEST_REPORT"
GUEST_TIMEOUT = float(os.environ.get("SNAPSHOT_GUEST_TIMEOUT", "1800"))


def cannot_run(reason: str) -> None:
    """A test this machine cannot run: skipped with the reason, or failed where every tier
    must run (CI)."""
    (pytest.fail if REQUIRE_ALL_TIERS else pytest.skip)(reason)


class GuestTestFailed(Exception):
    """The test failed inside the guest; the message is the guest's failure report."""


class KernelTierFailed(Exception):
    """The guest could not run the kernel tier at all."""


class GuestRun:
    """One guest boot that runs every selected kernel test, started by the first stand-in."""

    def __init__(self, config, nodeids: list[str]):
        self.config = config
        self.nodeids = nodeids
        self.outcomes: dict | None = None
        self.error: str | None = None
        self.summary = ""

    def outcome(self, nodeid: str) -> dict:
        if self.outcomes is None and self.error is None:
            self._boot()
        if self.error is not None:
            raise KernelTierFailed(self.error)
        if nodeid not in self.outcomes:
            raise GuestTestFailed(f"{nodeid} did not run in the guest")
        return self.outcomes[nodeid]

    def _boot(self) -> None:
        from kernel_vm import KernelTierUnavailable, KernelVM, KernelVMError

        results = Path(tempfile.mkdtemp(prefix="snapshot-kernel-tier-"))
        report = results / "report.json"
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "kernel",
                *self.nodeids]
        started = time.monotonic()
        try:
            vm = KernelVM()
            result = vm.run(argv, cwd=str(self.config.rootpath),
                            env={REPORT_ENV: str(report), "PYTHONDONTWRITEBYTECODE": "1"},
                            timeout=GUEST_TIMEOUT, results_dir=results)
        except (KernelTierUnavailable, KernelVMError) as e:
            self.error = f"kernel tier could not run: {e}"
            return
        if not report.exists():
            self.error = (f"the guest produced no test report (exit {result.returncode}); "
                          f"its output:\n{result.output[-4000:]}")
            return
        self.outcomes = json.loads(report.read_text())
        counts = {}
        for outcome in self.outcomes.values():
            counts[outcome["outcome"]] = counts.get(outcome["outcome"], 0) + 1
        self.summary = (f"kernel tier: Linux {vm.kernel_version} guest under qemu ran "
                        f"{len(self.outcomes)} tests in {time.monotonic() - started:.0f}s: "
                        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                        + "; the slowest: " + ", ".join(
                            f"{nodeid.split('/')[-1]} {o.get('seconds', 0):.0f}s"
                            for nodeid, o in sorted(self.outcomes.items(),
                                                    key=lambda i: -i[1].get("seconds", 0))[:8]))


class GuestItem(pytest.Item):
    """Stands on the host for a kernel test and reports its outcome in the guest."""

    def __init__(self, *, run: GuestRun, original: pytest.Item, **kwargs):
        super().__init__(**kwargs)
        self.run = run
        self.own_markers.extend(original.iter_markers())

    def runtest(self):
        outcome = self.run.outcome(guest_nodeid(self.nodeid))
        if outcome["outcome"] == "failed":
            raise GuestTestFailed(outcome["longrepr"])
        if outcome["outcome"] == "skipped":
            pytest.skip(f"skipped in the guest: {outcome['longrepr']}")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, (GuestTestFailed, KernelTierFailed)):
            return f"[in the qemu guest] {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.name} [kernel guest]"


def pytest_itemcollected(item):
    """The xdist group of each test (module doc)."""
    if item.get_closest_marker("kernel"):
        group = "kernel-guest"
    elif any(item.get_closest_marker(m) for m in ("kernel_boot", "router", "browser")):
        group = item.path.stem
        # The real router's CPUs (tests/test_router.py's `root`) boot side by side.
        if cpu := getattr(item, "callspec", None) and item.callspec.params.get("root"):
            group += f"-{cpu}"
            only = getattr(item.module, "X86_64_ONLY", {})
            if cpu != "x86_64" and (why := [only[f] for f in only if f in item.fixturenames]):
                item.add_marker(pytest.mark.skip(reason=f"x86_64 only: {why[0]}"))
    else:
        group = "host"
    item.add_marker(pytest.mark.xdist_group(group))


def guest_nodeid(nodeid: str) -> str:
    """The test's id in the guest: without the `@group` xdist adds for --dist loadgroup."""
    return nodeid.split("@", 1)[0]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    if IN_GUEST:
        return
    kernel = [i for i, item in enumerate(items) if item.get_closest_marker("kernel")]
    if not kernel:
        return
    run = GuestRun(config, [guest_nodeid(items[i].nodeid) for i in kernel])
    config.stash[GUEST_RUN] = run
    for i in kernel:
        original = items[i]
        items[i] = GuestItem.from_parent(original.parent, name=original.name, run=run,
                                         original=original)
        # The scheduler reads the group from the id.
        items[i]._nodeid = original.nodeid


GUEST_RUN = pytest.StashKey[GuestRun]()
#: Summary lines the xdist workers sent (pytest_testnodedown), for the controller's summary.
FROM_WORKERS: list[str] = []


def summary_lines(config) -> list[str]:
    lines = []
    sweep = sys.modules.get("sweep")
    if sweep is not None and sweep.CHECKED:
        lines.append(f"power-cut sweep: checked {sum(sweep.CHECKED.values())} cut points ("
                     + ", ".join(f"{k}: {n}" for k, n in sorted(sweep.CHECKED.items())) + ")")
    mipsel = sys.modules.get("test_mipsel")
    lines += mipsel.SUMMARY if mipsel else []
    run = config.stash.get(GUEST_RUN, None)
    if run is not None and (run.summary or run.error):
        lines.append(run.summary or run.error.splitlines()[0])
    return lines


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FROM_WORKERS.extend(getattr(node, "workeroutput", {}).get("snapshot_summary", []))


def pytest_terminal_summary(terminalreporter, config):
    for line in FROM_WORKERS + summary_lines(config):
        terminalreporter.write_line(line)


# -- inside the guest: record each test's outcome for the host --------------------------------

_guest_outcomes: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    if not IN_GUEST:
        return
    entry = _guest_outcomes.setdefault(report.nodeid, {"outcome": "passed", "longrepr": "",
                                                       "seconds": 0.0})
    entry["seconds"] += report.duration
    if report.failed:
        entry["outcome"] = "failed"
        entry["longrepr"] += f"[{report.when}] {report.longreprtext}\n"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["longrepr"] = report.longreprtext


def pytest_sessionfinish(session):
    # In an xdist worker: the summary lines go to the controller.
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["snapshot_summary"] = summary_lines(session.config)
    if IN_GUEST and os.environ.get(REPORT_ENV):
        Path(os.environ[REPORT_ENV]).write_text(json.dumps(_guest_outcomes))
