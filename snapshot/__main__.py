"""`python -m snapshot`: the command, as snapshot.cli.door.run starts it (where /sbin/snapshot
and the installed script start)."""
from snapshot.cli.door import run

if __name__ == "__main__":
    run()
