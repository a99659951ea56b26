"""Changes on trial, on the simulator: push --trial and save --trial, confirm, what every other
write does while a trial is pending, boot counting and the fallback a boot makes (the flash
side of `snapshot mount`; tests/test_boot.py boots for real)."""
import json

import pytest

from mtd import FlashType, Geometry, SimFlash
from mtd.sim import CORRECTED
from snapshot import boot
from snapshot.store.chain import Chain
from snapshot.store.format import ANCHOR_HEADER, TRIAL
from clirun import error_of, invoke, ok, run
from sweep import damage_payload, make_tree, tree

KIB = 1024
GEOMETRIES = {
    "nor": Geometry(FlashType.NOR, 2048 * KIB, 64 * KIB, 1, 0),
    "nand": Geometry(FlashType.NAND, 8192 * KIB, 128 * KIB, 2048, 64),
}


@pytest.fixture(params=sorted(GEOMETRIES))
def image(request, tmp_path):
    """One confirmed snapshot and a volatile record: the state a trial starts from."""
    path = tmp_path / "flash.img"
    SimFlash.create(path, GEOMETRIES[request.param])
    ok(path, "format")
    ok(path, "push", "--from", str(make_tree(tmp_path / "s1", 1, 4)), "-m", "first")
    ok(path, "save", "--from", str(make_tree(tmp_path / "v1", 2, 1)))
    return path


def listing(image) -> dict:
    return json.loads(ok(image, "list", "--json"))


def states(image) -> list:
    info = listing(image)
    return ([(s["seq"], s["state"]) for s in info["snapshots"]],
            [(v["state"], v["kept_for_rollback"]) for v in info["volatiles"]])


def unpacked(image, tmp_path) -> tuple[dict, dict]:
    n = len(list(tmp_path.glob("out*")))
    out, vol = tmp_path / f"out{n}", tmp_path / f"vol{n}"
    ok(image, "unpack", "--to", str(out), "--volatile-to", str(vol))
    vol.mkdir(exist_ok=True)
    return tree(out), tree(vol)


def boot_decision(image) -> boot.BootReport:
    """What `snapshot mount` writes before it mounts anything: repair, then the trial."""
    report, lines = boot.BootReport(), []
    with SimFlash(image, writable=True) as flash:
        boot.prepare(flash, lambda line, loud=False: lines.append(line), report)
    report.problems.extend(lines)
    return report


def push_trial(image, tmp_path, seed=3):
    return ok(image, "push", "--trial", "--from", str(make_tree(tmp_path / f"t{seed}", seed, 4)),
              "-m", "the change")


# -- starting and confirming a trial ----------------------------------------------------------

def test_push_trial_puts_the_snapshot_on_trial_and_keeps_the_volatile(image, tmp_path):
    out = push_trial(image, tmp_path)
    assert out == "pushed snapshot 2, on trial: it boots at most 3 times unless `snapshot " \
                  "confirm` confirms it\n"
    assert states(image) == ([(1, "confirmed"), (2, "trial")], [("confirmed", True)])
    trial = listing(image)["snapshots"][1]
    assert (trial["attempts"], trial["max_attempts"]) == (0, 3)
    assert listing(image)["volatile"] is None   # what boots now: the trial, no volatile


def test_save_trial_keeps_the_previous_volatile_until_it_is_decided(image, tmp_path):
    ok(image, "save", "--trial", "--from", str(make_tree(tmp_path / "v2", 9, 1)))
    assert states(image) == ([(1, "confirmed")], [("confirmed", True), ("trial", False)])
    assert unpacked(image, tmp_path)[1] == tree(tmp_path / "v2")


def test_confirm_makes_the_trial_normal_and_drops_what_was_kept(image, tmp_path):
    push_trial(image, tmp_path)
    assert ok(image, "confirm") == "confirmed snapshot 2\n"
    assert states(image) == ([(1, "confirmed"), (2, "confirmed")], [])


def test_confirm_with_nothing_on_trial_says_so_and_writes_nothing(image):
    before = image.read_bytes()
    assert ok(image, "confirm") == "nothing is on trial\n"
    assert image.read_bytes() == before


def test_max_attempts_comes_from_the_configuration(image, tmp_path):
    config = tmp_path / "snapshot.conf"
    config.write_text("config snapshot 'main'\n\toption max_attempts '5'\n")
    source = make_tree(tmp_path / "t", 3, 4)
    result = invoke("--device", image, "push", "--trial", "--from", source,
                    env={"SNAPSHOT_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert listing(image)["snapshots"][1]["max_attempts"] == 5
    config.write_text("config snapshot 'main'\n\toption max_attempts '99'\n")
    result = invoke("--device", image, "save", "--trial", "--from", source,
                    env={"SNAPSHOT_CONFIG": str(config)})
    assert "option max_attempts '99' in the configuration is not a number from 1 to 15" in \
        error_of(result)


# -- what every other write does while a trial is pending -------------------------------------

@pytest.mark.parametrize("args", [["push"], ["push", "--trial"], ["save", "--trial"]],
                         ids=["push", "push-trial", "save-trial"])
def test_a_second_trial_or_a_push_is_refused_while_one_is_pending(image, tmp_path, args):
    push_trial(image, tmp_path)
    before = image.read_bytes()
    error = error_of(run(image, *args, "--from", str(make_tree(tmp_path / "x", 7, 1))))
    assert "snapshot 2 is on trial; confirm it (`snapshot confirm`) or roll it back" in error
    assert image.read_bytes() == before


def test_a_save_during_a_snapshot_trial_goes_with_the_trial(image, tmp_path):
    push_trial(image, tmp_path)
    ok(image, "save", "--from", str(make_tree(tmp_path / "v3", 5, 1)))
    assert states(image) == ([(1, "confirmed"), (2, "trial")],
                             [("confirmed", True), ("confirmed", False)])
    assert unpacked(image, tmp_path)[1] == tree(tmp_path / "v3")
    # If the trial fails, the volatile saved on top of it goes too; the kept one comes back.
    _set_attempts(image, 3)
    boot_decision(image)
    assert states(image) == ([(1, "confirmed"), (2, "failed")], [("confirmed", False)])
    assert unpacked(image, tmp_path)[1] == tree(tmp_path / "v1")


def test_a_save_during_a_volatile_trial_replaces_it_still_on_trial(image, tmp_path):
    ok(image, "save", "--trial", "--from", str(make_tree(tmp_path / "v2", 9, 1)))
    boot_decision(image)
    ok(image, "save", "--from", str(make_tree(tmp_path / "v3", 5, 1)))
    volatile = listing(image)["volatiles"][-1]
    assert (volatile["state"], volatile["attempts"]) == ("trial", 1)
    assert unpacked(image, tmp_path)[1] == tree(tmp_path / "v3")


@pytest.mark.parametrize("kind", ["push", "save"])
def test_rollback_of_a_pending_trial_gives_back_exactly_the_state_before_it(image, tmp_path,
                                                                            kind):
    before = unpacked(image, tmp_path)
    if kind == "push":
        push_trial(image, tmp_path)
    else:
        ok(image, "save", "--trial", "--from", str(make_tree(tmp_path / "v2", 9, 1)))
    assert "dropped" in ok(image, "rollback")
    assert states(image) == ([(1, "confirmed")], [("confirmed", False)])
    assert unpacked(image, tmp_path) == before


def test_a_repair_keeps_the_trial_on_trial_even_when_it_rewrites_it(image, tmp_path):
    push_trial(image, tmp_path)
    with SimFlash(image) as flash:
        record = Chain(flash).trial
        offset = flash.geometry.block_offset(record.blocks[0]) + record.layout.payload_offset
    SimFlash.add_faults(image, bitflips={offset + 10: CORRECTED})
    assert "rewrote snapshot 2" in ok(image, "check", "--repair")
    assert states(image) == ([(1, "confirmed"), (2, "trial")], [("confirmed", True)])


def test_a_damaged_trial_dropped_by_a_repair_gives_back_the_kept_volatile(image, tmp_path):
    push_trial(image, tmp_path)
    damage_payload(str(image), lambda chain: chain.trial)
    assert "dropped snapshot 2" in ok(image, "check", "--repair")
    assert states(image) == ([(1, "confirmed")], [("confirmed", False)])


# -- boot counting -----------------------------------------------------------------------------

def _set_attempts(image, attempts):
    """Make the pending trial look as if it had had `attempts` boots."""
    from snapshot.store.chain import commit
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        commit(chain, [r.entry.marked(attempts=attempts) if r.entry.state == TRIAL
                       else r.entry for r in chain.records])


def test_each_boot_of_a_trial_is_counted_before_it_is_applied(image, tmp_path):
    push_trial(image, tmp_path)
    for n in range(1, 4):
        report = boot_decision(image)
        assert report.tried and f"trying snapshot 2: boot {n} of 3" in report.problems
        assert listing(image)["snapshots"][1]["attempts"] == n


def test_after_max_attempts_the_next_boot_fails_the_trial_and_boots_the_state_before(
        image, tmp_path):
    before = unpacked(image, tmp_path)
    push_trial(image, tmp_path)
    for _ in range(3):
        boot_decision(image)
    report = boot_decision(image)
    assert report.rolled_back == "snapshot 2 was not confirmed in 3 boots"
    assert states(image) == ([(1, "confirmed"), (2, "failed")], [("confirmed", False)])
    assert listing(image)["last_rollback"]["reason"] == "snapshot 2 was not confirmed in 3 boots"
    assert unpacked(image, tmp_path) == before
    # A boot that has fallen back never tries the failed trial again, and writes nothing.
    flash_before = image.read_bytes()
    assert boot_decision(image).rolled_back is None
    assert image.read_bytes() == flash_before


def test_a_failed_volatile_trial_gives_back_the_previous_volatile(image, tmp_path):
    ok(image, "save", "--trial", "--from", str(make_tree(tmp_path / "broken", 9, 1)))
    for _ in range(4):
        boot_decision(image)
    assert states(image) == ([(1, "confirmed")], [("confirmed", False), ("failed", False)])
    assert unpacked(image, tmp_path)[1] == tree(tmp_path / "v1")


def test_rollback_of_a_failed_trial_removes_it(image, tmp_path):
    push_trial(image, tmp_path)
    _set_attempts(image, 3)
    boot_decision(image)
    assert ok(image, "rollback") == "dropped snapshot 2\n"
    assert states(image) == ([(1, "confirmed")], [("confirmed", False)])
    assert listing(image)["last_rollback"] is not None   # the note stays


def test_a_push_after_a_failed_trial_replaces_it(image, tmp_path):
    push_trial(image, tmp_path)
    _set_attempts(image, 3)
    boot_decision(image)
    ok(image, "push", "--from", str(make_tree(tmp_path / "s2", 6, 4)), "-m", "second")
    assert states(image)[0] == [(1, "confirmed"), (2, "confirmed")]
    assert listing(image)["snapshots"][1]["message"] == "second"


def test_a_boot_with_no_trial_pending_writes_nothing(image):
    before = image.read_bytes()
    for _ in range(3):
        boot_decision(image)
    assert image.read_bytes() == before


def test_counting_a_boot_appends_to_the_anchor_log_without_an_erase(image, tmp_path):
    push_trial(image, tmp_path)
    with SimFlash(image) as flash:
        erases = flash.stats().erases
    boot_decision(image)
    with SimFlash(image) as flash:
        assert flash.stats().erases == erases
        assert ANCHOR_HEADER.size < Chain(flash).scan.newest.end
