"""What a batch shows: JSON lines on a pipe (every one JSON, each job's events tagged with its
index), and on a terminal one bar over the jobs with each running job's step. Fast: events by hand."""
import io
import json

from blender_sds.engine.batch.progress import BatchProgress, JobBoard


def events():
    board = JobBoard()
    board.report(3, {"type": "attempt", "pid": 11})
    board.report(3, {"type": "start", "steps": 400, "start_step": 0})
    board.report(5, {"type": "stage", "name": "loading guidance"})
    board.report(3, {"type": "progress", "step": 120, "steps": 400, "loss": 1.0})
    drained = board.drain()
    assert board.drain() == []  # drained once
    return drained


def test_json_lines(capsys):
    out = io.StringIO()
    progress = BatchProgress("json", stdout=out)
    progress.start(jobs=6, to_run=2, skipped=3, failed_before=1, out="/o")
    for event in events():
        progress.event(event)
    progress.job_done({"index": 3, "folder": "003-a-seed0", "status": "complete", "message": ""})
    progress.close({"complete": 5, "failed": 1, "skipped": 3, "seconds": 2.5}, "/o/summary.json")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["type"] for line in lines] == ["batch", "attempt", "start", "stage", "progress", "job_done", "summary"]
    assert [line.get("job") for line in lines[1:5]] == [3, 3, 5, 3]
    assert lines[0] == {"type": "batch", "jobs": 6, "run": 2, "skipped": 3, "failed_before": 1, "out": "/o"}
    assert lines[-1] == {"type": "summary", "complete": 5, "failed": 1, "skipped": 3, "seconds": 2.5,
                         "summary": "/o/summary.json"}
    assert capsys.readouterr().err == ""


def test_the_bar_shows_each_running_job(capsys):
    progress = BatchProgress("bar")
    progress.start(jobs=6, to_run=2, skipped=3, failed_before=1, out="/o")
    for event in events():
        progress.event(event)
    assert progress.running == {3: "120/400", 5: "loading guidance"}
    assert "003 120/400, 005 loading guidance" in str(progress.bar)
    progress.job_done({"index": 5, "folder": "005-a-seed0", "status": "failed", "message": "out of memory"})
    assert progress.bar.n == 1 and progress.running == {3: "120/400"}
    progress.close({"complete": 4, "failed": 2, "skipped": 3, "seconds": 1.0}, "/o/summary.json")
    err = capsys.readouterr()
    assert err.out == ""
    assert "6 jobs: 2 to run, 3 complete already, 1 failed before" in err.err
    assert "005-a-seed0 failed: out of memory" in err.err and "4 complete (3 of them from before), 2 failed" in err.err
