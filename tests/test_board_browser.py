"""Browser tests of ``tunesmith board``: Playwright drives Debian's Chromium against the board
served by uvicorn on a free loopback port, as a person would use it (issue 21).

They need ``/usr/bin/chromium`` (``scripts/setup.sh`` installs it where apt-get is usable) and the
``playwright`` package (the dev extra); without either the module skips with a message saying which.
Playwright's own browser download cannot work here, hence ``executable_path``.

One board, one browser and a few runs serve the whole module: three tiny runs trained in-process
(two on the same data, one on other data), a run launched from the form, and a slower one to watch,
stop and resume. The tests run in file order (``--dist loadfile``) and later ones reuse the runs.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from tests.conftest import sentiment_rows, tiny_config
from tests.makers import DATA_FILE, tiny_task_config, write_examples

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no {CHROMIUM}: the browser tests skip (apt-get install chromium; scripts/setup.sh tries it)",
                allow_module_level=True)  # fmt: skip
sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install 'tunesmith[dev]'")

# As the machine notes say: without the background-networking flags Chromium keeps trying hosts
# that this closed network refuses; --no-sandbox because the tests run as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}
MAX_UPLOAD = 4096
"""The board's upload limit in these tests: small, so that a too-large upload is cheap to make."""
WAIT_MS = 120_000
"""The longest a step that waits for a training subprocess may take."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(app) -> tuple[str, object, threading.Thread]:
    """``app`` served by uvicorn in a daemon thread; returns (base URL, server, thread)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the board did not start within 30 s"
    return f"http://127.0.0.1:{port}", server, thread


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def build_runs(model: Path, data: Path, runs: Path) -> None:
    """Three finished tiny runs: ``alpha`` and ``beta`` on the same data (beta with another learning
    rate), ``gamma`` on other data (its comparison with alpha must warn)."""
    from tunesmith import api

    for name, file, rate in (("alpha", "train.csv", 3e-3), ("beta", "train.csv", 1e-3), ("gamma", "other.csv", 3e-3)):
        config = tiny_config(model, data / file, runs / name, train={"num_epochs": 1, "learning_rate": rate})
        api.train(config)


@pytest.fixture(scope="module")
def board(tmp_path_factory, tiny_model_dir):
    """The board over a runs folder with three finished runs and a data folder; yields its URL and paths."""
    from tunesmith.board.app import create_app
    from tunesmith.board.context import Board

    root = tmp_path_factory.mktemp("board")
    runs, data = root / "runs", root / "data"
    write_csv(data / "train.csv", sentiment_rows(60))
    write_csv(data / "other.csv", sentiment_rows(60, seed=7))
    write_csv(data / "slow.csv", sentiment_rows(400, seed=3))
    runs.mkdir()
    build_runs(tiny_model_dir, data, runs)
    state = Board(runs_dir=runs, data_dirs=[data, tiny_model_dir], max_upload_bytes=MAX_UPLOAD)  # the model too
    app = create_app(state)
    url, server, thread = serve(app)
    yield SimpleNamespace(url=url, runs=runs, data=data, model=tiny_model_dir, root=root, state=state)
    for job in state.jobs.jobs():  # a failed test may leave a training process behind
        if job.state == "running":
            state.jobs.stop(job.id)
            state.jobs.wait(job.id, timeout=40)
    server.should_exit = True
    thread.join(timeout=10)
    state.jobs.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own context: no cookies shared between tests) at 1280x800."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def tree_snapshot(root: Path) -> set[str]:
    """Every path under ``root`` (to show that a refused request wrote nothing)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def job_row(page, run_name: str, kind: str = "train"):
    """The jobs table's newest row of ``kind`` for the run ``run_name`` (the table lists newest first)."""
    rows = page.locator("#jobs-table tbody tr").filter(has=page.locator("td:nth-child(3)", has_text=run_name))
    return rows.filter(has=page.locator("td:nth-child(2)", has_text=re.compile(f"^{kind}$"))).first


def fill_launch_form(page, board, run_name: str, **fields: str) -> None:
    """The launch page with its form filled: the tiny model, one epoch of train.csv unless ``fields`` say otherwise."""
    page.goto(f"{board.url}/launch")
    values = {"train": "train.csv", "model": str(board.model), "epochs": "1", "batch_size": "8", "max_length": "32"}
    page.fill("#run-name", run_name)
    for field, value in (values | fields).items():
        page.fill(f"#{field}", value)


def points(page, key: str) -> int:
    """How many points a run page's uPlot curve holds (run.html sets ``data-points`` as it draws)."""
    return int(page.get_attribute(f"#run-curve-{key}", "data-points") or 0)


def wait_points(page, key: str, above: int) -> int:
    """Waits (no reload) until the ``key`` curve holds more than ``above`` points; returns how many."""
    page.wait_for_function(f"() => +document.querySelector('#run-curve-{key}').dataset.points > {above}",
                           timeout=WAIT_MS)  # fmt: skip
    return points(page, key)


def open_when_there(page, url: str) -> None:
    """Opens ``url`` once it answers (a launched run's page exists once its process made the run directory)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.goto(url).status == 404:
        assert time.monotonic() < deadline, f"{url} still answers 404"
        time.sleep(0.2)


def test_launch_watch_stop_and_resume_a_run_from_the_browser(board, page):
    """The launch form (its YAML box: 400 rows, three epochs of batch 4, a loss point every 2 steps,
    a checkpoint every 10) queues a job; the run page's loss curve grows live; Stop on the jobs page
    leaves it resumable; Resume finishes it. The runs page, opened before, lists it without a reload."""
    from tunesmith.runs import RunDir

    index = page.context.new_page()
    index.goto(board.url)
    sync_api.expect(index.locator("#runs-table")).to_contain_text("alpha")
    config = tiny_config(board.model, board.data / "slow.csv", board.runs / "ignored",
                         data={"val_fraction": 0.1, "test_fraction": 0.1}, train={"num_epochs": 3, "batch_size": 4},
                         runtime={"checkpoint_every_steps": 10, "log_every_steps": 2})  # fmt: skip
    page.goto(f"{board.url}/launch")
    page.fill("#run-name", "watched")
    page.check("#source-yaml")
    page.fill("#launch-yaml", yaml.safe_dump(config, sort_keys=False))
    page.click("#launch-submit")
    page.wait_for_url(re.compile(r"/jobs#job-"))
    row = job_row(page, "watched")
    sync_api.expect(row).to_have_attribute("data-state", re.compile("queued|running"))

    run_page = page.context.new_page()
    open_when_there(run_page, f"{board.url}/runs/watched")
    first = wait_points(run_page, "loss", 6)  # past step 12: the step-10 checkpoint is written
    assert wait_points(run_page, "loss", first) > first  # new points over server-sent events, no reload
    page.bring_to_front()  # a page in the background gets no animation frames: Playwright's click waits for them
    row.get_by_role("button", name="Stop").click()
    sync_api.expect(page.locator("#jobs-message")).to_contain_text("is stopping")
    sync_api.expect(row).to_have_attribute("data-state", "stopped", timeout=WAIT_MS)
    sync_api.expect(run_page.locator("#run-curves")).to_have_attribute("data-ended", "killed")
    run = RunDir(board.runs / "watched")
    assert not run.finished and run.has_checkpoint()
    row.get_by_role("button", name="Resume").click()
    sync_api.expect(page.locator("#jobs-message")).to_contain_text("resume watched")
    sync_api.expect(job_row(page, "watched", kind="resume")).to_have_attribute("data-state", "finished",
                                                                              timeout=WAIT_MS)  # fmt: skip
    assert run.finished
    sync_api.expect(index.locator("#runs-table")).to_contain_text("watched")


def test_a_finished_run_shows_its_scores_report_and_predictions(board, page):
    page.goto(f"{board.url}/runs/alpha")
    sync_api.expect(page.locator("#run-status")).to_have_text("finished")
    sync_api.expect(page.locator("#run-test")).to_have_text(re.compile(r"^\d\.\d{4} \(\d\.\d{4}–\d\.\d{4}\)$"))
    assert wait_points(page, "loss", 0) >= 1  # the whole curve of a finished run, from metrics.jsonl
    report = page.frame_locator("#run-report-frame")
    sync_api.expect(report.locator("body")).to_contain_text("macro_f1")
    predictions = page.locator("#run-predictions table")
    sync_api.expect(predictions).to_be_visible()
    assert predictions.locator("tbody tr").count() >= 1


def test_compare_shows_both_runs_their_paired_difference_and_warns_on_other_data(board, page):
    page.goto(f"{board.url}/compare?run=alpha&run=beta")
    scores = page.locator("#compare-scores")
    sync_api.expect(scores.locator("tr[data-run=alpha]").first).to_be_visible()
    sync_api.expect(scores.locator("tr[data-run=beta]").first).to_be_visible()
    paired = page.locator("#compare-paired tr[data-run=beta]").first
    sync_api.expect(paired).to_contain_text(re.compile(r"[+-]\d\.\d{4}"))
    sync_api.expect(page.locator("#compare-warning")).to_have_count(0)
    page.goto(f"{board.url}/compare?run=alpha&run=gamma")
    sync_api.expect(page.locator("#compare-warning")).to_be_visible()
    sync_api.expect(page.locator("#compare-scores tr[data-run=gamma]").first).to_be_visible()


def test_the_playground_predicts_what_is_typed(board, page):
    page.goto(f"{board.url}/runs/alpha/try")
    page.fill("#try-text", "good great lovely day")
    page.click("#try-submit")
    result = page.locator("#try-prediction")
    sync_api.expect(result).to_be_visible()
    sync_api.expect(result).to_contain_text(re.compile("positive|negative"))
    page.fill("#try-text", "   ")
    page.click("#try-submit")
    sync_api.expect(page.locator("#try-error")).to_contain_text("is empty")


@pytest.fixture(scope="module")
def chat_run(board, tiny_llama_dir) -> str:
    """A tiny instruction-tuned causal LM (``chat``) in the board's runs folder; returns a prompt."""
    from tunesmith import api

    data = write_examples("causal_lm", board.root / DATA_FILE["causal_lm"], 24)
    config = tiny_task_config("causal_lm", tiny_llama_dir, data, board.runs / "chat")
    config["train"].update(num_epochs=1)
    config["generation"].update(max_new_tokens=12)
    api.train(config)
    return "Item 3: repeat the word blue."


def test_chat_streams_the_reply_into_the_page(board, page, chat_run):
    from tunesmith import api

    page.goto(f"{board.url}/runs/chat/try")
    page.fill("#chat-input", chat_run)
    page.click("#chat-send")
    log = page.locator("#chat-log")
    sync_api.expect(log.locator(".chat-user")).to_contain_text(chat_run)
    sync_api.expect(log).to_have_attribute("data-state", "idle")  # the stream has ended, without an error
    expected = api.predict(board.runs / "chat", [chat_run])[0]["completion"]
    assert expected  # a reply to compare with: greedy decoding, as predict does
    sync_api.expect(log.locator(".chat-assistant span")).to_have_text(expected)


def launch_error(page) -> str:
    """Submits the launch form and returns the message shown in #launch-error."""
    page.click("#launch-submit")
    error = page.locator("#launch-error")
    sync_api.expect(error).to_be_visible()
    return error.inner_text()


def test_bad_launches_show_the_clis_message_and_write_nothing(board, page):
    from tunesmith.config import config_from_dict
    from tunesmith.errors import TunesmithError

    before = tree_snapshot(board.runs)
    fill_launch_form(page, board, "bad", epochs="-1")
    shown = launch_error(page)
    tree = {"task": {"type": "single_label"}, "data": {"train": str(board.data / "train.csv")},
            "train": {"num_epochs": -1}}  # fmt: skip
    with pytest.raises(TunesmithError) as expected:
        config_from_dict(tree, "the launch form")
    line = next(line for line in str(expected.value).splitlines() if "num_epochs" in line)
    assert line.strip() in shown  # the config models' own words

    fill_launch_form(page, board, "bad", train="missing.csv")
    assert re.search(r"not found: \S*missing\.csv", launch_error(page), re.I | re.S)
    fill_launch_form(page, board, "bad", train="/etc/hostname")
    assert "outside the allowed folders" in launch_error(page)
    page.goto(f"{board.url}/launch")
    page.set_input_files("#config-file", files=[{"name": "big.yaml", "mimeType": "text/yaml",
                                                 "buffer": b"# padding\n" * MAX_UPLOAD}])  # fmt: skip
    assert "larger than the board accepts" in launch_error(page)
    assert tree_snapshot(board.runs) == before  # no run, no job, no config file


def test_the_data_page_inspects_a_file_and_refuses_bad_paths(board, page):
    page.goto(f"{board.url}/data")
    page.fill("#data-path", "missing.csv")
    page.click("#data-submit")
    sync_api.expect(page.locator("#data-error")).to_contain_text("missing.csv")
    page.fill("#data-path", "/etc/hostname")
    page.click("#data-submit")
    sync_api.expect(page.locator("#data-error")).to_contain_text("outside the allowed folders")
    page.fill("#data-path", "train.csv")
    page.select_option("#data-label-errors", "off")
    page.click("#data-submit")
    sync_api.expect(page.frame_locator("#data-report").locator("body")).to_contain_text("train.csv", timeout=WAIT_MS)
