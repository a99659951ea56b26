"""The router tier on a router's CPU: a mipsel malta guest (tests/mipsel_vm.py), 32-bit and
little-endian like MT7621, whose ioctl numbers MIPS encodes differently from x86. In one boot
it runs the Flash contract with the cffi bindings cross-built for it: the kernel tier's
contract tests on real nandsim, mtdram and block2mtd devices, and test_ubi's on a UBI volume
on nandsim. The guest's own pytest reports each outcome (tests/conftest.py, as in the x86
kernel tier), and each file's test here asserts that every test the host selects from it
passed there."""
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPORT_ENV, cannot_run
from kernel_vm import KernelTierUnavailable, KernelVMError

pytestmark = pytest.mark.router

ROOT = Path(__file__).resolve().parent.parent
#: The contract's files.
CONTRACT = ["tests/test_flash_contract.py", "tests/test_ubi.py"]
#: Their contract among their `kernel` tests: all of test_flash_contract's; test_ubi's others
#: (cut sweeps, ubifs converts) take many minutes under TCG, and the x86 kernel tier runs them.
SELECTION = ["-m", "kernel", "-k",
             "test_flash_contract or nandsim-ubi or found_by_name or unmapped", *CONTRACT]
TIMEOUT = 900
#: One line for the session's summary: the boot and the run, timed on the host.
SUMMARY: list[str] = []

MACHINE = """\
import json, platform, struct, sys
from mtd import _mtd_abi, _ubi_abi
print(json.dumps({"machine": platform.machine(), "pointer": struct.calcsize("P"),
                  "byteorder": sys.byteorder, "bindings": _mtd_abi.__file__,
                  "MEMERASE64": _mtd_abi.lib.MEMERASE64,
                  "MEMGETBADBLOCK": _mtd_abi.lib.MEMGETBADBLOCK,
                  "UBI_IOCEBISMAP": _ubi_abi.lib.UBI_IOCEBISMAP}))
"""


def mips_ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """An ioctl number as MIPS encodes it (asm/ioctl.h): 3 direction bits at the top, where
    read is 2 and write 4, and 13 size bits; x86 has 2 direction bits, read 2, write 1."""
    return direction << 29 | size << 16 | ord(kind) << 8 | nr


@pytest.fixture(scope="module")
def guest(tmp_path_factory) -> dict:
    """One boot: the machine's facts, then the contract's tests in one pytest, then
    power-off."""
    from mipsel_vm import PYTHON, MipselVM, job, stage

    results = tmp_path_factory.mktemp("mipsel")
    started = time.monotonic()
    try:
        vm = MipselVM()
        staged = stage(ROOT, results)
    except KernelTierUnavailable as e:
        cannot_run(f"mipsel guest unavailable: {e}")
    contract = [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                # The guest has no pytest-xdist, whose marker conftest.py sets.
                "-W", "ignore::pytest.PytestUnknownMarkWarning", *SELECTION]
    commands = [f"cut -d' ' -f1 /proc/uptime > {results}/booted",
                f"{PYTHON} -c {shlex.quote(MACHINE)} > {results}/machine.json",
                f"{REPORT_ENV}={results}/report.json {shlex.join(contract)}"]
    try:
        result = vm.run(job(staged, "\n".join(commands)), cwd=str(staged),
                        env={"PYTHONDONTWRITEBYTECODE": "1"}, timeout=TIMEOUT,
                        results_dir=results)
    except KernelVMError as e:
        pytest.fail(f"the mipsel guest did not run: {e}")
    elapsed = time.monotonic() - started
    try:
        booted = float((results / "booted").read_text())
        machine = json.loads((results / "machine.json").read_text())
    except (OSError, ValueError):
        pytest.fail(f"the mipsel guest's job failed (exit {result.returncode}):\n"
                    f"{result.output[-4000:]}")
    SUMMARY.append(f"mipsel guest (qemu malta, TCG): booted in {booted:.0f}s, ran the Flash "
                   f"contract in {elapsed - booted:.0f}s more, {elapsed:.0f}s in all")
    report = results / "report.json"
    return {"machine": machine,
            "outcomes": json.loads(report.read_text()) if report.exists() else None,
            "output": result.output}


@pytest.fixture(scope="module")
def expected() -> list[str]:
    """What the host selects with the same arguments."""
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                             "-p", "no:cacheprovider", *SELECTION],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    nodeids = [line for line in listed.stdout.splitlines() if "::" in line]
    assert nodeids, listed.stdout + listed.stderr
    return nodeids


def test_the_guest_is_32_bit_little_endian_mips_with_mipsel_bindings(guest):
    machine = guest["machine"]
    assert (machine["machine"], machine["pointer"], machine["byteorder"]) == ("mips", 4, "little")
    assert machine["bindings"].endswith(".cpython-311-mipsel-linux-gnu.so")


def test_the_bindings_carry_the_mips_ioctl_numbers(guest):
    """MEMERASE64 writes a 16-byte struct erase_info_user64, MEMGETBADBLOCK writes an 8-byte
    offset, UBI_IOCEBISMAP reads a 4-byte LEB number (mtd/*-user.h)."""
    machine = guest["machine"]
    assert machine["MEMERASE64"] == mips_ioc(4, "M", 20, 16) == 0x80104D14
    assert machine["MEMGETBADBLOCK"] == mips_ioc(4, "M", 11, 8) == 0x80084D0B
    assert machine["UBI_IOCEBISMAP"] == mips_ioc(2, "O", 5, 4) == 0x40044F05


@pytest.mark.parametrize("path", CONTRACT)
def test_the_flash_contract_passes_on_mipsel(guest, expected, path):
    """Every test the host selects from the file ran in the guest, and passed."""
    assert guest["outcomes"] is not None, f"no report from the guest:\n{guest['output'][-4000:]}"
    outcomes = {nodeid: o for nodeid, o in guest["outcomes"].items()
                if nodeid.startswith(f"{path}::")}
    failed = {nodeid: o["longrepr"] for nodeid, o in outcomes.items()
              if o["outcome"] != "passed"}
    assert not failed, "\n".join(f"{nodeid}: {text}" for nodeid, text in failed.items())
    assert sorted(outcomes) == sorted(n for n in expected if n.startswith(f"{path}::"))
