"""The board's launch form and job queue: real `tunesmith train` processes launched, stopped,
resumed and failing, over a TestClient; and what a refused launch leaves (nothing)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import sentiment_rows, tiny_config
from tunesmith.board.context import Board
from tunesmith.board.jobs import JobQueue
from tunesmith.runs import RunDir

pytest.importorskip("fastapi")


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    runs, data = tmp_path / "runs", tmp_path / "data"
    runs.mkdir()
    data.mkdir()
    pd.DataFrame(sentiment_rows(60)).to_csv(data / "sentiment.csv", index=False)
    pd.DataFrame({"text": ["a b c", "d e f"] * 20}).to_csv(data / "unlabelled.csv", index=False)
    return runs, data


def _client(runs: Path, data: Path, max_running: int = 1, models: tuple[Path, ...] = (), **options):
    """A TestClient over an app holding the jobs router alone (the other pages are other modules');
    ``models``: local model folders the board may name (beside ``data``)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tunesmith.board import jobs_pages

    board = Board(runs, [data, *models], **options)
    board.jobs = JobQueue(runs, max_running=max_running)
    app = FastAPI()
    app.include_router(jobs_pages.router(board))
    return TestClient(app), board


def _form(tiny_model_dir: Path, **fields) -> dict[str, str]:
    form = {"source": "form", "task": "single_label", "train": "sentiment.csv", "model": str(tiny_model_dir),
            "epochs": "1", "batch_size": "8", "max_length": "32", "learning_rate": "3e-3", "run_name": "form-run"}  # fmt: skip
    return {**form, **fields}


def _launch(client, form: dict, files: dict | None = None):
    return client.post("/launch", data=form, files=files or {"config_file": ("", b"")},
                       headers={"HX-Request": "true"})  # fmt: skip


def _job_id(response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["HX-Redirect"].split("#job-")[1]


def test_launched_jobs_run_apart_stop_resumably_resume_and_fail_alone(folders, tiny_model_dir):
    """One scenario, so that its four processes share two rounds: a form launch that is stopped
    and resumed to the end, beside a pasted config that fails at data time, and a queued job cancelled."""
    runs, data = folders
    client, board = _client(runs, data, max_running=2, models=(tiny_model_dir,))
    job_id = _job_id(_launch(client, _form(tiny_model_dir, epochs="40")))  # stopped long before its end
    bad = yaml.safe_dump(tiny_config(tiny_model_dir, "unlabelled.csv", "ignored/by-the-board"))
    failing = _job_id(_launch(client, {"source": "yaml", "config_yaml": bad, "run_name": "fails"}))
    queued = _job_id(_launch(client, _form(tiny_model_dir, run_name="waits")))
    assert board.jobs.get(queued).state == "queued"  # two running: the third waits its turn
    cancelled = client.post(f"/jobs/{queued}/stop")
    assert cancelled.status_code == 200 and board.jobs.get(queued).state == "cancelled"

    # No label column: the job fails at data time, in its own process; the board answers on.
    failed = board.jobs.wait(failing, timeout=90)
    assert failed.state == "failed" and failed.returncode == 2
    assert failed.error.startswith("error: ") and "label" in failed.error, failed.error
    assert not (runs / "fails").exists()  # it had not started: nothing left behind
    table = client.get("/jobs/table")
    assert table.status_code == 200 and f'id="job-{failing}" data-state="failed"' in table.text

    run = RunDir(runs / "form-run")
    deadline = time.monotonic() + 90
    while not run.has_checkpoint():  # the checkpoint of the first epoch's evaluation
        assert board.jobs.get(job_id).state == "running", Path(board.jobs.get(job_id).log).read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.post(f"/jobs/{job_id}/stop").status_code == 200  # SIGINT: the CLI's Ctrl-C
    job = board.jobs.wait(job_id, timeout=60)
    assert job.state == "stopped" and not run.finished and run.has_checkpoint(), Path(job.log).read_text()
    assert "is kept: continue it with tunesmith train --resume" in job.error
    assert not (runs / "waits").exists()
    assert f'id="resume-{job_id}"' in client.get("/jobs/table").text
    saved = yaml.safe_load((runs / ".board" / "configs" / f"{job_id}.yaml").read_text())
    assert saved["data"]["train"] == str((data / "sentiment.csv").resolve())  # confined, absolute

    # The test shortens the run's own config (40 epochs kept it busy long enough to be stopped).
    config = run.path / "config.yaml"
    config.write_text(config.read_text().replace("num_epochs: 40", "num_epochs: 2"))
    assert client.post("/runs/form-run/resume").status_code == 200
    resumed = board.jobs.jobs()[0]
    assert resumed.kind == "resume"
    done = board.jobs.wait(resumed.id, timeout=90)
    assert done.state == "finished" and done.returncode == 0, Path(done.log).read_text()
    assert (run.path / "model" / "config.json").is_file() and (run.path / "metrics.json").is_file()
    assert board.jobs.log_for(run.path) == Path(done.log)
    assert not any(p.name.startswith(".board") for p in run.path.iterdir())  # nothing of the board's in a run
    page = client.get("/jobs").text
    assert f'id="job-{done.id}" data-state="finished"' in page and 'href="/runs/form-run"' in page
    refused = client.post("/runs/form-run/resume")
    assert refused.status_code == 409 and "already finished; there is nothing to resume" in refused.text
    again = _launch(client, _form(tiny_model_dir))  # the same run name: refused, the run kept
    assert again.status_code == 409 and "already exists" in again.text
    reopened = JobQueue(runs)  # a restarted board finds the same jobs in runs/.board
    assert [(j.id, j.state) for j in reopened.jobs()] == [(j.id, j.state) for j in board.jobs.jobs()]
    reopened.close()


def test_board_beyond_loopback_needs_a_key(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    monkeypatch.delenv("TUNESMITH_BOARD_KEY", raising=False)
    result = CliRunner().invoke(app, ["board", "--runs", str(tmp_path / "runs"), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "pass --api-key KEY (or set TUNESMITH_BOARD_KEY)" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("fields", "status", "expected"),
    [
        ({"learning_rate": "-1"}, 422,
         "Invalid configuration in the launch form:\n  - train.learning_rate: Input should be greater than 0 (got -1)"),
        ({"strategy": "everything"}, 422, "model.strategy: Input should be &#39;full&#39;"),
        ({"train": "missing.csv"}, 422, "data.train: Data file not found"),
        ({"train": "../outside.csv"}, 422, "data.train: &#39;../outside.csv&#39; is outside the allowed folders"),
        ({"validation": "/etc/hostname"}, 422, "is outside the allowed folders"),
        ({"run_name": "../escape"}, 422, "run name &#39;../escape&#39;: use letters"),
        ({"source": "yaml", "config_yaml": "task:\n  type: nope\n"}, 422,
         "Invalid configuration in the pasted config:\n  - task.type: Input should be"),
        ({"source": "yaml", "config_yaml": "task: [a\n"}, 422, "the pasted config, line 2: not valid YAML"),
    ],
)  # fmt: skip
def test_a_refused_launch_says_why_and_writes_nothing(folders, tiny_model_dir, fields, status, expected):
    runs, data = folders
    (runs.parent / "outside.csv").write_text((data / "sentiment.csv").read_text())
    client, board = _client(runs, data, models=(tiny_model_dir,))
    response = _launch(client, _form(tiny_model_dir, **fields))
    assert response.status_code == status
    assert response.text.startswith('<p class="error" id="launch-error"'), response.text
    assert expected in response.text
    assert list(runs.iterdir()) == [] and board.jobs.jobs() == []


def test_an_upload_over_the_limit_is_refused_with_413(folders, tiny_model_dir):
    runs, data = folders
    client, board = _client(runs, data, max_upload_bytes=200)
    big = b"# padding\n" * 50 + b"task:\n  type: single_label\n"
    response = _launch(client, _form(tiny_model_dir, source="yaml"), {"config_file": ("big.yaml", big)})
    assert response.status_code == 413
    assert "big.yaml is larger than the board accepts (200 bytes" in response.text
    pasted = _launch(client, _form(tiny_model_dir, source="yaml", config_yaml=big.decode()))
    assert pasted.status_code == 413 and "the board&#39;s limit: 200 bytes" in pasted.text
    assert list(runs.iterdir()) == []


def test_the_launch_page_offers_every_kind_and_strategy_and_the_starter(folders):
    from tunesmith.config import TASK_TYPES

    client, _ = _client(*folders)
    page = client.get("/launch?task=regression").text
    assert 'id="launch-form"' in page and 'id="launch-error"' in page
    for value in (*TASK_TYPES, "full", "freeze", "gradual_unfreeze", "lora"):
        assert f'<option value="{value}"' in page
    assert "tunesmith starter config: regression" in page
    assert "type: seq2seq" in client.get("/launch/starter?task=seq2seq").text


def test_another_sites_page_cannot_launch(folders, tiny_model_dir):
    from fastapi.testclient import TestClient

    from tunesmith.board.app import create_app

    board = Board(folders[0], [folders[1]])
    board.jobs = JobQueue(folders[0])
    client = TestClient(create_app(board), base_url="http://localhost")  # the check is the whole app's, every page
    response = client.post("/launch", data=_form(tiny_model_dir), headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 403 and "another site" in response.text
    same = client.post("/jobs/nope/stop", headers={"Origin": "http://localhost"})  # same origin: judged on
    assert same.status_code == 404 and "no job nope" in same.text
    assert list(folders[0].iterdir()) == [] and board.jobs.jobs() == []


def test_a_restarted_board_settles_the_jobs_that_ended_unwatched(tmp_path):
    import json

    jobs = tmp_path / "runs" / ".board" / "jobs"
    jobs.mkdir(parents=True)
    gone = 2**22 + 12345  # above the largest pid Linux allows (2**22): no process has it
    for job_id, run in (("1-a", "missing-run"), ("2-b", "other")):
        record = {"id": job_id, "kind": "train", "run_dir": str(tmp_path / "runs" / run), "config": None,
                  "state": "running", "created": job_id, "pid": gone, "log": str(jobs / f"{job_id}.log")}  # fmt: skip
        (jobs / f"{job_id}.json").write_text(json.dumps(record))
    (jobs / "1-a.log").write_text("Splits: train 36\nerror: interrupted; the run is kept\n")
    (jobs / "junk.json").write_text("not json")  # not the queue's: skipped, left alone
    queue = JobQueue(tmp_path / "runs")
    try:
        assert {j.id: (j.state, j.error) for j in queue.jobs()} == {
            "1-a": ("stopped", "error: interrupted; the run is kept"),
            "2-b": ("stopped", "it ended while the board was not running"),
        }
        assert json.loads((jobs / "1-a.json").read_text())["state"] == "stopped"
        assert (jobs / "junk.json").read_text() == "not json"
    finally:
        queue.close()


def test_a_board_with_a_key_answers_only_with_it_and_keeps_it_in_a_cookie(folders):
    from fastapi.testclient import TestClient

    from tunesmith.board.app import COOKIE, create_app

    board = Board(folders[0], [folders[1]], api_key="s3cret")
    board.jobs = JobQueue(folders[0])
    client = TestClient(create_app(board))
    refused = client.get("/jobs")
    assert refused.status_code == 401 and "?key=" in refused.text
    assert client.get("/jobs", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/jobs", headers={"X-API-Key": "s3cret"}).status_code == 200
    first = client.get("/jobs?key=s3cret")  # the link a user opens once
    assert first.status_code == 200 and client.cookies.get(COOKIE) == "s3cret"
    assert client.get("/launch").status_code == 200  # the cookie alone from then on


@pytest.mark.parametrize("board_job", [True, False])
def test_a_board_job_takes_sigint_even_when_it_came_ignored(board_job):
    """`tunesmith board &` from a script passes SIGINT ignored to its jobs: a job (JOB_ENV set) takes
    it back as Ctrl-C, so Stop works; anyone else who ignores SIGINT keeps it ignored."""
    import os
    import subprocess
    import sys

    from tunesmith.board.jobs import JOB_ENV

    code = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); from tunesmith.cli import take_interrupts; "
            "take_interrupts(); print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != JOB_ENV} | ({JOB_ENV: "1"} if board_job else {})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(board_job)


def test_a_reused_pid_is_neither_waited_for_nor_signalled(tmp_path, monkeypatch):
    """After a reboot a running job's pid may name an unrelated process (here: this test's own):
    its start time differs, so a restarted board settles the job and never signals that process."""
    import json
    import os

    from tunesmith.board import jobs as jobs_module
    from tunesmith.errors import TunesmithError

    jobs = tmp_path / "runs" / ".board" / "jobs"
    jobs.mkdir(parents=True)
    record = {"id": "1-a", "kind": "train", "run_dir": str(tmp_path / "runs" / "r"), "config": None,
              "state": "running", "created": "1", "pid": os.getpid(), "pid_started": 1000.0,
              "log": str(jobs / "1-a.log")}  # fmt: skip
    (jobs / "1-a.json").write_text(json.dumps(record))
    signalled = []
    monkeypatch.setattr(jobs_module.os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    queue = JobQueue(tmp_path / "runs")
    try:
        assert queue.get("1-a").state == "stopped"  # not "running" forever, blocking the queue
        with pytest.raises(TunesmithError, match="nothing to stop"):
            queue.stop("1-a")
        queue._jobs["1-a"].state = "running"  # even a record still marked running is not signalled
        queue.stop("1-a")
        assert signalled == []
    finally:
        queue.close()


def test_a_runs_folder_with_yaml_characters_launches_into_itself(tmp_path, tiny_model_dir, monkeypatch):
    """The run folder reaches the job in its config file, never through a `--set` that YAML re-reads,
    so `my runs #2` (a comment to YAML) is kept whole."""
    from tunesmith.board import jobs as jobs_module
    from tunesmith.config import load_config

    argvs = []

    def popen(argv, **_):  # the command the job would run, read as the CLI reads it; nothing trains
        argvs.append(argv)
        raise OSError("not started by this test")

    monkeypatch.setattr(jobs_module.subprocess, "Popen", popen)

    runs, data = tmp_path / "my runs #2", tmp_path / "data: x"
    runs.mkdir()
    data.mkdir()
    pd.DataFrame(sentiment_rows(60)).to_csv(data / "sentiment.csv", index=False)
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tunesmith.board import jobs_pages

    board = Board(runs, [data, tiny_model_dir])
    board.jobs = JobQueue(runs)
    app = FastAPI()
    app.include_router(jobs_pages.router(board))
    client = TestClient(app)
    try:
        job = board.jobs.wait(_job_id(_launch(client, _form(tiny_model_dir))), timeout=30)
        [argv] = argvs
        assert argv[3:] == ["train", job.config]  # no --set: the config file names the run folder
        assert Path(load_config(job.config).runtime.output_dir) == (runs / "form-run").resolve()
        elsewhere = Path(job.config).read_text().replace("form-run", "other-run")
        with pytest.raises(Exception, match="must be the job's run directory"):
            board.jobs.submit_train(elsewhere, runs / "form-run-2")
    finally:
        board.jobs.close()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("forgetting.retain", "/etc/hostname", "forgetting.retain: &#39;/etc/hostname&#39; is outside the allowed"),
        ("forgetting.rehearsal", "../outside.csv", "forgetting.rehearsal: &#39;../outside.csv&#39; is outside"),
        ("runtime.deepspeed_config", "/etc/hostname", "runtime.deepspeed_config: &#39;/etc/hostname&#39; is outside"),
        ("model.name", "TINY", "is outside the allowed folders"),  # a local model folder the board may not name
        ("data.train", "package:tunesmith//etc/hostname", "the path after the package name must lie inside"),
    ],
)  # fmt: skip
def test_a_launch_names_no_local_file_outside_the_board_folders(folders, tiny_model_dir, key, value, expected):
    runs, data = folders
    client, board = _client(runs, data, models=() if key == "model.name" else (tiny_model_dir,))
    config = tiny_config(tiny_model_dir, "sentiment.csv", "ignored")
    section, name = key.split(".")
    config.setdefault(section, {})[name] = str(tiny_model_dir) if value == "TINY" else value
    response = _launch(client, {"source": "yaml", "config_yaml": yaml.safe_dump(config), "run_name": "r"})
    assert response.status_code == 422 and expected in response.text, response.text
    assert list(runs.iterdir()) == [] and board.jobs.jobs() == []


def _app_client(runs: Path, **options):
    from fastapi.testclient import TestClient

    from tunesmith.board.app import create_app

    board = Board(runs, **options)
    board.jobs = JobQueue(runs)
    return TestClient(create_app(board), base_url="http://localhost"), board


def test_a_keyless_board_answers_only_its_own_host_names(folders):
    client, _ = _app_client(folders[0])
    assert client.get("/jobs").status_code == 200
    assert client.get("/jobs", headers={"Host": "[::1]:8000"}).status_code == 200
    rebound = client.get("/jobs", headers={"Host": "attacker.example:8000"})  # DNS rebinding: a name re-pointed
    assert rebound.status_code == 400
    keyed, _ = _app_client(folders[0], api_key="k")  # the key protects it: any name, e.g. a LAN host's
    assert keyed.get("/jobs", headers={"Host": "box.lan", "X-API-Key": "k"}).status_code == 200


def test_an_opaque_origin_may_not_change_anything(folders):
    client, board = _app_client(folders[0])
    answer = client.post("/jobs/nope/stop", headers={"Origin": "null"})
    assert answer.status_code == 403 and "Origin: null" in answer.text


def test_a_request_body_over_the_limit_is_refused_with_413(folders):
    client, board = _app_client(folders[0], max_upload_bytes=100)
    limit = 100 + 64 * 1024
    declared = client.post("/launch", content=b"x" * (limit + 1), headers={"Content-Type": "text/plain"})
    assert declared.status_code == 413 and f"({limit} bytes;" in declared.text
    chunked = client.post("/launch", content=iter([b"x" * 40_000] * 3),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert chunked.status_code == 413 and f"({limit} bytes;" in chunked.text
    assert list(folders[0].iterdir()) == [] and board.jobs.jobs() == []
