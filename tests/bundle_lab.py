"""A reference router and a unit of the same firmware, for the bundle tests and the bundle
power-cut sweep: real usign keys (the tool built from the pinned source), a firmware root, a
board file and a configuration that points snapshot at them.

    lab = Lab.make(work)                   # keys, rom, board, config, PATH with usign
                                           # (a bundle key, a channel key, one untrusted)
    lab.reference(image)                   # snapshot 1 (the base) and 2 (the fix)
    lab.unit_from(image, unit)             # a unit: the reference's base, its own volatile
    lab.bundle(image, "2", out)            # `snapshot bundle create 2 -o out --key ...`
"""
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mtd import SimFlash, open_flash
from snapshot import operations
from snapshot.store.chain import Chain
from openwrt_tools import tool
from sweep import make_tree

BOARD = "sandbox,router-v1"


@dataclass
class Lab:
    work: Path
    secret: Path            # the fleet's key, trusted by the unit
    other: Path             # a key the unit does not trust
    keys_dir: Path
    rom: Path
    config: Path
    channel_secret: Path = Path()   # the fleet's channel key, trusted for channels only

    @classmethod
    def make(cls, work: Path) -> "Lab":
        work.mkdir(parents=True, exist_ok=True)
        usign = tool("usign")
        keys = work / "keys"
        keys.mkdir()
        for name in ("fleet", "other", "channel"):
            subprocess.run([usign, "-G", "-s", keys / f"{name}.sec", "-p", keys / f"{name}.pub",
                            "-c", f"{name} key"], check=True)
        trusted, channels = work / "trusted", work / "channel-keys"
        for public, where in ((keys / "fleet.pub", trusted), (keys / "channel.pub", channels)):
            where.mkdir()
            fingerprint = subprocess.run([usign, "-F", "-p", public], check=True,
                                         capture_output=True, text=True).stdout.strip()
            shutil.copy(public, where / fingerprint)
        rom = work / "rom"
        (rom / "etc").mkdir(parents=True)
        (rom / "etc/openwrt_release").write_text("DISTRIB_RELEASE='24.10.0'\n")
        (rom / "bin").mkdir()
        (rom / "bin/sh").symlink_to("busybox")
        (work / "board_name").write_text(BOARD + "\n")
        config = work / "snapshot.conf"
        config.write_text(f"config snapshot 'main'\n\toption keys_dir '{trusted}'\n"
                          f"\toption channel_keys_dir '{channels}'\n"
                          f"\toption board_file '{work}/board_name'\n"
                          f"\toption rom '{rom}'\n\toption max_attempts '3'\n")
        return cls(work, keys / "fleet.sec", keys / "other.sec", trusted, rom, config,
                   keys / "channel.sec")

    @property
    def env(self) -> dict:
        """What the CLI needs to find usign and this lab's configuration."""
        return {"SNAPSHOT_CONFIG": str(self.config),
                "PATH": f"{tool('usign').parent}:{os.environ['PATH']}"}

    def cli(self, image: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "snapshot", "--device", str(image),
                               *map(str, args)], env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=300)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def reference(self, image: Path, geometry=None, bad=()) -> None:
        """Snapshot 1 (the base every unit has), then 2 and 3 (fixes)."""
        if not image.exists():
            SimFlash.create(image, geometry, bad_blocks=list(bad))
        with open_flash(str(image), writable=True) as flash:
            operations.format_device(flash, force=True)
            operations.push(Chain(flash), make_tree(self.work / "base", 1, 60), "base")
        shutil.copyfile(image, self.work / "base.img")
        shutil.copyfile(f"{image}.sim.json", self.work / "base.img.sim.json")
        with open_flash(str(image), writable=True) as flash:
            fix = make_tree(self.work / "fix", 2, 40)
            (fix / "etc/config/fix").write_text("config fix\n")
            operations.push(Chain(flash), fix, "fix 1")
            more = make_tree(self.work / "fix2", 3, 10)
            (more / "etc/config/fix").write_text("config fix 2\n")
            operations.push(Chain(flash), more, "fix 2")

    def unit_from(self, unit: Path, volatile: bool = True) -> None:
        """A unit with the reference's base (snapshot 1, the same bytes) and, with
        `volatile`, its own unsaved configuration."""
        shutil.copyfile(self.work / "base.img", unit)
        shutil.copyfile(self.work / "base.img.sim.json", f"{unit}.sim.json")
        if volatile:
            with open_flash(str(unit), writable=True) as flash:
                own = self.work / f"own-{unit.stem}"
                (own / "etc/config").mkdir(parents=True, exist_ok=True)
                (own / "etc/config/system").write_text(f"config system\n\toption hostname "
                                                      f"'{unit.stem}'\n")
                # Fixed times: two units made from the same name are the same bytes.
                for path in (own, own / "etc", own / "etc/config", own / "etc/config/system"):
                    os.utime(path, (1_700_000_000, 1_700_000_000))
                operations.save(Chain(flash), own)

    def bundle(self, image: Path, snapshots: str, out: Path, key: Path | None = None,
               *more) -> Path:
        key = self.secret if key is None else key
        self.cli(image, "bundle", "create", snapshots, "-o", out, "--key", key, *more)
        return out


def cut_off(argv: list[str], env: dict, how: str, image: Path) -> None:
    """Run `argv` (a download into flash) and stop it mid-payload, by SIGKILL a second and a
    half in ("kill"; the server must trickle by then) or by a simulator power cut after the
    third flash operation ("powercut"); then check the state a boot shows is the one before,
    while blocks were written."""
    import signal
    import time
    from sweep import image_digest, visible
    before, digest = visible(str(image)), image_digest(image)
    if how == "kill":
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
        time.sleep(1.5)
        assert proc.poll() is None, "the download ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    else:
        done = subprocess.run(argv, env={**env, "MTDSIM_POWERCUT_AFTER": "3"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 99, done.stderr
    assert visible(str(image)) == before
    assert image_digest(image) != digest, "the cut came before any block was written"
