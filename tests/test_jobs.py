"""Background jobs (snapshot/jobs.py): what `status` says of one while it runs."""
import time

import pytest

from snapshot import jobs


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "DIRECTORY", tmp_path)
    monkeypatch.setattr(jobs, "RECORD", tmp_path / "job.json")
    monkeypatch.setattr(jobs, "LOCK", tmp_path / "job.lock")
    return tmp_path


def until(predicate, what):
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_running_job_shows_its_latest_progress_line_and_no_line_once_done(records):
    go = records / "go"

    def run():
        jobs.progress("upgrade: installing tcpdump", now=True)
        jobs.progress("upgrade: 64 KiB written")          # within a second: not written
        until(go.exists, "the test's go-ahead")
        return {"snapshot": 3}

    assert jobs.progress("outside a job: nothing") is None
    number = jobs.start("upgrade", run)
    until(lambda: jobs.last()["progress"] == "upgrade: installing tcpdump", "the progress")
    assert jobs.last()["state"] == "running"
    go.touch()
    until(lambda: jobs.last()["state"] == "done", "the job's end")
    assert jobs.last()["id"] == number and jobs.last()["result"] == {"snapshot": 3}


def test_progress_is_written_at_most_once_a_period(records, monkeypatch):
    monkeypatch.setattr(jobs, "_running", {"id": 1, "state": "running", "progress": None})
    monkeypatch.setattr(jobs, "_progress_written", 0.0)
    writes = []
    monkeypatch.setattr(jobs, "_write", lambda job: writes.append(job["progress"]))
    for n in range(100):
        jobs.progress(f"{n} KiB written")
    jobs.progress("storing", now=True)
    assert writes == ["0 KiB written", "storing"]
