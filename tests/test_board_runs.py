"""The board's runs pages (``board/runs_pages.py``) over real tiny runs and fabricated ones
(killed, failed, running), through FastAPI's TestClient: the runs table (status, scores, sort,
filter), a run's page, its server-sent metrics, its predictions worst first, compare, and paths
that try to leave the runs folder."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.board.app import create_app
from tunesmith.board.context import Board
from tunesmith.evaluate.predictions import predictions_path, read_predictions

ROW = re.compile(r'<tr class="run-row" data-path="([^"]+)" data-status="([^"]+)">')


class Jobs:
    """A stand-in for ``board.jobs.JobQueue``: what the runs pages ask of it."""

    def __init__(self, states: dict[Path, str], logs: dict[Path, Path]):
        self.states, self.logs = states, logs

    def jobs(self):
        return [SimpleNamespace(run_dir=str(path), state=state) for path, state in self.states.items()]

    def log_for(self, run_dir):
        return self.logs.get(Path(run_dir).resolve())


def fabricate(root: Path, name: str, source: Path, *, checkpoint: bool, records: list[dict] | None = None) -> Path:
    """A run directory as an unfinished run leaves it: its config and task (from a real run),
    a checkpoint or none, some metrics.jsonl records; made long enough ago not to be starting."""
    run = root / name
    run.mkdir(parents=True)
    for file in ("config.yaml", "task.json", "data_manifest.json"):
        shutil.copy(source / file, run / file)
    (run / ".lock").touch()
    if checkpoint:
        (run / "checkpoints" / "step-2").mkdir(parents=True)
        for file in ("state.json", "manifest.json"):
            (run / "checkpoints" / "step-2" / file).write_text("{}")
    if records is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    old = time.time() - 3600
    for path in (run / "config.yaml", run):
        os.utime(path, (old, old))
    return run


@pytest.fixture(scope="module")
def board(tmp_path_factory, tiny_model_dir):
    """Two real runs on different data (a, b), a copy of a in a study folder, a killed run, a
    failed one, one whose board job failed, and a running one (its lock held by this test)."""
    root = tmp_path_factory.mktemp("board-runs")
    runs = root / "runs"
    for name, seed in (("a", 0), ("b", 1)):
        data = root / f"{name}.csv"
        pd.DataFrame(sentiment_rows(60, seed=seed)).to_csv(data, index=False)
        api.train(tiny_config(tiny_model_dir, data, runs / name, train={"num_epochs": 1}))
    shutil.copytree(runs / "a", runs / "study" / "trials" / "trial-000")
    records = [{"step": 1, "epoch": 0, "split": "train", "loss": 0.7, "samples_per_second": 80.0},
               {"step": 2, "epoch": 0, "split": "train", "loss": 0.6, "samples_per_second": 80.0}]  # fmt: skip
    fabricate(runs, "killed", runs / "a", checkpoint=True, records=records)
    fabricate(runs, "failed", runs / "a", checkpoint=False)
    fabricate(runs, "resume-failed", runs / "a", checkpoint=True)
    live = fabricate(runs, "live", runs / "a", checkpoint=False, records=records)
    job_log = root / "job.log"
    job_log.write_text("".join(f"line {i}\n" for i in range(300)))
    jobs = Jobs({(runs / "resume-failed").resolve(): "failed"}, {live.resolve(): job_log})
    lock = (live / ".lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as RunDir.lock holds it while a run trains
    client = TestClient(create_app(Board(runs_dir=runs, jobs=jobs)), base_url="http://localhost")
    yield SimpleNamespace(client=client, runs=runs, lock=lock, live=live)
    lock.close()


def listed(page: str) -> dict[str, str]:
    return dict(ROW.findall(page))


def test_runs_table_lists_every_run_with_its_status_and_scores(board):
    page = board.client.get("/")
    assert page.status_code == 200
    assert listed(page.text) == {
        "a": "finished", "b": "finished", "study/trials/trial-000": "finished", "killed": "killed",
        "failed": "failed", "resume-failed": "failed", "live": "running",
    }  # fmt: skip
    metrics = json.loads((board.runs / "a" / "metrics.json").read_text())
    metric = metrics["training"]["metric"]
    test, interval = metrics["test"][metric], metrics["test"]["confidence_intervals"][metric]
    row = page.text[page.text.index('data-path="a"') :].split("</tr>")[0]
    assert f"{test:.4f} ({interval['low']:.4f}–{interval['high']:.4f})" in row and metric in row


def test_runs_table_sorts_and_filters(board):
    names = list(listed(board.client.get("/runs/table", params={"sort": "path", "desc": "false"}).text))
    assert names == sorted(names) and len(names) == 7
    names = list(listed(board.client.get("/runs/table", params={"sort": "path", "desc": "true"}).text))
    assert names == sorted(names, reverse=True)
    finished = listed(board.client.get("/runs/table", params={"status": "finished"}).text)
    assert set(finished.values()) == {"finished"} and len(finished) == 3
    assert list(listed(board.client.get("/runs/table", params={"q": "trials"}).text)) == ["study/trials/trial-000"]
    by_test = list(listed(board.client.get("/runs/table", params={"sort": "test", "desc": "true"}).text))
    assert set(by_test[:3]) == {"a", "b", "study/trials/trial-000"}  # runs without a test score go last


def test_run_page_progress_log_report_and_files(board):
    page = board.client.get("/runs/a").text
    for element in ('id="run-curve-loss"', 'id="run-curve-validation"', 'id="run-progress"', 'id="run-report-frame"',
                    'id="run-predictions"'):  # fmt: skip
        assert element in page, element
    steps = json.loads((board.runs / "a" / "metrics.json").read_text())["training"]["steps"]
    assert f'data-done="{steps}" data-total="{steps}"' in page
    report = board.client.get("/runs/a/report")
    assert report.status_code == 200 and "Learning curves" in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert board.client.get("/runs/a/files/training_curves.png").headers["content-type"] == "image/png"
    assert board.client.get("/runs/a/files/config.yaml").status_code == 404  # only its images
    live = board.client.get("/runs/live/progress").text
    assert 'data-status="running"' in live and "samples/s" in live and "left" in live
    log = board.client.get("/runs/live/log").text
    assert "line 299" in log and "line 99\n" not in log  # the last 200 lines of the job's log
    assert 'id="run-resume"' in board.client.get("/runs/killed").text


def events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event in ``text``."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            found.append((fields.get("event", "message"), json.loads(fields["data"])))
    return found


def test_events_stream_metrics_jsonl_then_end(board):
    records = [json.loads(line) for line in (board.runs / "a" / "metrics.jsonl").read_text().splitlines()]
    sent = events(board.client.get("/runs/a/events").text)
    assert [data for name, data in sent if name == "message"] == records
    assert sent[-1] == ("end", {"status": "finished"})
    first = len((board.runs / "a" / "metrics.jsonl").read_text().splitlines(keepends=True)[0].encode())
    later = events(board.client.get("/runs/a/events", params={"offset": first}).text)
    assert [d for n, d in later if n == "message"] == records[1:]


def test_events_follow_a_running_run_until_it_stops(board):
    extra = {"step": 3, "epoch": 0, "split": "validation", "macro_f1": 0.5}

    def finish() -> None:  # the run logs one more record, then its process ends (the lock goes)
        time.sleep(1.0)
        with (board.live / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(extra) + "\n")
        time.sleep(0.6)
        fcntl.flock(board.lock, fcntl.LOCK_UN)

    worker = threading.Thread(target=finish)
    worker.start()
    try:
        sent = events(board.client.get("/runs/live/events").text)
    finally:
        worker.join()
        fcntl.flock(board.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert [d["step"] for n, d in sent if n == "message"] == [1, 2, 3]
    assert sent[-1] == ("end", {"status": "failed"})  # no checkpoint, nothing more: it failed


def test_predictions_worst_first(board):
    found = read_predictions(predictions_path(board.runs / "a", "test")).rows
    wrong = int((found["row_metric"] < 1).sum())
    page = board.client.get("/runs/a/predictions", params={"split": "test"}).text
    rows = re.findall(r'<tr class="prediction-row( prediction-wrong)?" data-row="(\d+)">', page)
    assert len(rows) == len(found) and [bool(w) for w, _ in rows] == [True] * wrong + [False] * (len(found) - wrong)
    confidence = dict(zip(found["row"], found["confidence"]))
    shown = [confidence[int(r)] for w, r in rows if w]
    assert shown == sorted(shown, reverse=True)  # the most confident mistakes first


def test_compare_scores_and_warns_on_different_test_data(board):
    page = board.client.get("/compare", params=[("run", "a"), ("run", "b")])
    assert page.status_code == 200
    assert 'id="compare-scores"' in page.text and 'id="compare-warning"' in page.text
    assert "data.train" in page.text  # a config key that differs
    same = board.client.get("/compare", params=[("run", "a"), ("run", "study/trials/trial-000")]).text
    assert 'id="compare-warning"' not in same and 'class="compare-paired-row"' in same
    unfinished = board.client.get("/compare", params=[("run", "a"), ("run", "killed")])
    assert unfinished.status_code == 400 and "not a finished run directory" in unfinished.text


@pytest.mark.parametrize("path", ["/runs/..%2F..%2Fetc", "/runs/%2Fetc%2Fpasswd", "/runs/outside", "/runs/a/files/..%2Fconfig.yaml",
                                  "/runs/nowhere", "/compare?run=a&run=..%2Fa"])  # fmt: skip
def test_paths_outside_the_runs_folder_are_refused(board, path, tmp_path):
    if not (board.runs / "outside").is_symlink():  # a link inside the runs folder to a run outside it
        shutil.copytree(board.runs / "a", tmp_path / "elsewhere", ignore=shutil.ignore_patterns("model", "checkpoints"))
        (board.runs / "outside").symlink_to(tmp_path / "elsewhere")
    answer = board.client.get(path)
    assert answer.status_code == 404 and 'id="error"' in answer.text


def test_a_symlinked_report_is_not_served_and_a_junk_last_event_id_starts_over(board, tmp_path):
    secret = tmp_path / "secret.html"
    secret.write_text("<p>not the run's</p>")
    (board.runs / "failed" / "report.html").symlink_to(secret)
    try:
        answer = board.client.get("/runs/failed/report")
        assert answer.status_code == 404 and "not the run" not in answer.text
    finally:
        (board.runs / "failed" / "report.html").unlink()
    records = [json.loads(line) for line in (board.runs / "a" / "metrics.jsonl").read_text().splitlines()]
    sent = events(board.client.get("/runs/a/events", headers={"Last-Event-ID": "abc"}).text)
    assert [data for name, data in sent if name == "message"] == records
