from snapshot.cli import run

run()
