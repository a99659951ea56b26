"""The package as installed: compiled bytecode. Benchmarks that run `snapshot` as a user
would compile it first; an editable install under PYTHONDONTWRITEBYTECODE would otherwise
compile every module on every run, which no installed package does."""
import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_package() -> None:
    for package in ("snapshot", "mtd"):
        compileall.compile_dir(ROOT / package, quiet=1)
