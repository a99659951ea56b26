"""A package transaction as a snapshot of its own (snapshot/packages/transaction.py,
DESIGN.md §12), on the simulator with plain directories standing in for the volatile layer's upper dir. The
router-level scenarios, with the real apk and opkg, are in test_upgrade.py."""
import shutil
from pathlib import Path

import pytest

from mtd import SimFlash
from snapshot import operations
from snapshot.errors import SnapshotError
from snapshot.packages import transaction
from snapshot.store.chain import Chain
from snapshot.store.format import CONFIRMED, TRIAL
from snapshot.tree import restore
from sweep import GEOMETRIES, tree


def write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def merged(chain: Chain, work: Path, tried: bool) -> dict:
    """What a boot of the chain shows above the squashfs: the snapshots, then the volatile
    record on top (files only: a stand-in for the two overlay layers)."""
    lower, upper = work / "lower", work / "upper"
    for d in (lower, upper):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    operations.apply_snapshots(chain, lower, tried=tried)
    operations.apply_volatile(chain, upper, tried=tried)
    view = {k: v for k, v in tree(lower).items() if v[0] == "file"}
    view.update({k: v for k, v in tree(upper).items() if v[0] == "file"})
    return view


@pytest.fixture(params=GEOMETRIES)
def router(request, tmp_path):
    """A chain with one snapshot and a saved volatile record, and the running upper dir:
    the volatile record as booted plus one change made since, not saved."""
    g, bad = GEOMETRIES[request.param]
    image = tmp_path / "flash.img"
    SimFlash.create(image, g, bad_blocks=bad)
    saved = {"etc/config/network": "saved\n", "etc/config/extra": "x\n"}
    with SimFlash(image, writable=True) as flash:
        operations.format_device(flash)
        operations.push(Chain(flash), write(tmp_path / "s1", {"etc/base": "1\n"}), "base")
        operations.save(Chain(flash), write(tmp_path / "v", saved))
    upper = write(tmp_path / "running", {**saved, "etc/unsaved": "made since\n"})
    return image, upper, tmp_path


def test_the_snapshot_holds_the_transaction_and_the_volatile_stays_on_top(router):
    image, upper, work = router
    before = transaction.manifest(upper)
    with SimFlash(image) as flash:
        old = merged(Chain(flash), work / "old", tried=True)
    # The transaction: a new package's files, a file the saved configuration also holds
    # rewritten, one it holds removed.
    write(upper, {"srv/pkg/bin": "v1\n", "etc/config/network": "from the package\n"})
    (upper / "etc/config/extra").unlink()
    paths, gone = transaction.changed(before, transaction.manifest(upper))
    # The directories whose entries changed come along (their mtime moved).
    assert {"srv", "srv/pkg", "srv/pkg/bin", "etc/config/network"} <= paths
    assert paths - {"srv", "srv/pkg", "srv/pkg/bin", "etc/config/network"} <= \
        {"etc", "etc/config"}
    assert gone == {"etc/config/extra"}
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        transaction.store(chain, upper, paths, gone, "add pkg 1.0", 3)
        chain = Chain(flash)
        layout = [(r.entry.type, r.entry.seq, r.entry.state, r.entry.fallback)
                  for r in chain.records]
        assert layout == [(1, 1, CONFIRMED, False), (1, 2, TRIAL, False),
                          (2, 1, CONFIRMED, True), (2, 2, CONFIRMED, False)]
        assert chain.trial.entry.message == "add pkg 1.0"
        # The trial boots what ran after the transaction (but the change never saved);
        trial = merged(chain, work / "trial", tried=True)
        # a failed trial boots exactly what ran before it.
        failed = merged(chain, work / "failed", tried=False)
    assert trial == {k: v for k, v in tree(upper).items()
                     if v[0] == "file" and k != "etc/unsaved"} | {"etc/base": old["etc/base"]}
    assert failed == old
    assert "etc/unsaved" not in trial and "etc/unsaved" not in failed


def test_saved_files_beside_the_transaction_s_stay_on_top(router):
    """A package's new conffile changes /etc/config's entry (its mtime); the saved files in
    /etc/config that the transaction did not touch still boot with the trial, as they ran
    after it (the real router's apk: tests/test_router.py)."""
    image, upper, work = router
    before = transaction.manifest(upper)
    write(upper, {"etc/config/pkg": "the package's\n"})
    paths, gone = transaction.changed(before, transaction.manifest(upper))
    assert "etc/config" in paths
    with SimFlash(image, writable=True) as flash:
        transaction.store(Chain(flash), upper, paths, gone, "add pkg 1.0", 3)
        trial = merged(Chain(flash), work / "trial", tried=True)
    assert trial["etc/config/network"] == tree(upper)["etc/config/network"]
    assert trial["etc/config/extra"] == tree(upper)["etc/config/extra"]
    assert "etc/config/pkg" in trial


def test_the_snapshot_holds_nothing_but_the_transaction(router):
    image, upper, work = router
    before = transaction.manifest(upper)
    write(upper, {"srv/pkg/bin": "v1\n"})
    paths, gone = transaction.changed(before, transaction.manifest(upper))
    with SimFlash(image, writable=True) as flash:
        chain = Chain(flash)
        transaction.store(chain, upper, paths, gone, "add pkg 1.0", 3)
    only = work / "snapshot-2"
    only.mkdir()
    with SimFlash(image) as flash:
        chain = Chain(flash)
        restore.apply(chain.payload(chain.snapshots[1]), chain.snapshots[1].entry.compression,
                      only)
    assert sorted(tree(only)) == ["srv", "srv/pkg", "srv/pkg/bin"]


def test_a_second_change_is_refused_while_the_first_is_on_trial(router):
    image, upper, work = router
    before = transaction.manifest(upper)
    write(upper, {"srv/a": "1\n"})
    paths, gone = transaction.changed(before, transaction.manifest(upper))
    with SimFlash(image, writable=True) as flash:
        transaction.store(Chain(flash), upper, paths, gone, "add a 1", 3)
        with pytest.raises(SnapshotError, match="on trial"):
            transaction.store(Chain(flash), upper, paths, gone, "add b 1", 3)


def test_an_automatic_snapshot_on_trial_absorbs_the_next_transaction(router):
    image, upper, work = router
    before = transaction.manifest(upper)
    write(upper, {"srv/a": "1\n"})
    paths, gone = transaction.changed(before, transaction.manifest(upper))
    with SimFlash(image, writable=True) as flash:
        transaction.store(Chain(flash), upper, paths, gone, "add a 1", 3)
        write(upper, {"srv/b": "2\n"})
        paths, gone = transaction.changed(before, transaction.manifest(upper))
        chain = Chain(flash)
        transaction.store(chain, upper, paths, gone, "add a 1, add b 2", 3,
                          replace=chain.trial)
        chain = Chain(flash)
        assert [r.entry.message for r in chain.snapshots] == ["base", "add a 1, add b 2"]
        assert len(chain.volatiles) == 2
        trial = merged(chain, work / "t", tried=True)
        failed = merged(chain, work / "f", tried=False)
    assert {"srv/a", "srv/b"} <= set(trial) and not {"srv/a", "srv/b"} & set(failed)


def test_a_message_names_the_changes_and_fits():
    names = [f"package-{i} 1.0-r0 -> 2.0-r0" for i in range(40)]
    text = transaction.message(names, "upgrade")
    assert len(text.encode()) <= 255 and text.startswith("upgrade: package-0 1.0-r0 -> 2.0-r0")
    assert text.endswith("more")
    assert transaction.message(["add foo 1.0"]) == "add foo 1.0"
