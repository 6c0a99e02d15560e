"""The board's playground (predict with a run, chat with a chat model) and data page
(``tunesmith inspect`` on a confined file), through FastAPI's TestClient on the pages' router.

Two tiny runs (module-scoped) in one runs folder: a text classifier and a causal LM."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import sentiment_rows
from tests.makers import DATA_FILE, image_folder, tiny_task_config, write_examples
from tunesmith import api
from tunesmith.board import try_pages
from tunesmith.board.context import Board

PROMPT = "Item 3: repeat the word blue."


@pytest.fixture(scope="module")
def board(tmp_path_factory, tiny_model_dir, tiny_llama_dir) -> Board:
    """A runs folder with a trained classifier (``clf``) and a trained causal LM (``chat``), and a
    data folder beside it."""
    root = tmp_path_factory.mktemp("board-try")
    runs = root / "runs"
    train = write_examples("single_label", root / "train.csv", 24)
    config = tiny_task_config("single_label", tiny_model_dir, train, runs / "clf")
    config["train"].update(num_epochs=1)
    api.train(config)
    chat_data = write_examples("causal_lm", root / DATA_FILE["causal_lm"], 24)
    config = tiny_task_config("causal_lm", tiny_llama_dir, chat_data, runs / "chat")
    config["train"].update(num_epochs=1)
    config["generation"].update(max_new_tokens=12)
    api.train(config)
    (root / "data").mkdir()
    return Board(runs_dir=runs, data_dirs=[root / "data", tiny_model_dir], max_upload_bytes=2_000)


@pytest.fixture(scope="module")
def client(board):
    app = FastAPI()
    app.include_router(try_pages.router(board))
    with TestClient(app) as client:
        yield client


def test_playground_predicts_what_predict_says(client, board):
    page = client.get("/runs/clf/try")
    assert page.status_code == 200
    for ident in ("try-form", "try-text", "try-submit", "try-result"):
        assert f'id="{ident}"' in page.text
    text = "a wonderful and lovely day"
    expected = api.predict(board.runs_dir / "clf", [text])[0]
    answer = client.post("/runs/clf/try", data={"text": text})
    assert answer.status_code == 200, answer.text
    assert f'<dd id="try-value-label">{expected["label"]}</dd>' in answer.text
    assert 'id="try-table-scores"' in answer.text
    for label, probability in expected["scores"].items():
        assert f"<td>{label}</td><td>{probability:.4f}</td>" in answer.text


def test_playground_refuses_bad_input(client):
    empty = client.post("/runs/clf/try", data={"text": "   "})
    assert empty.status_code == 422 and '<p class="error" id="try-error">' in empty.text
    assert "&#39;text&#39; is empty" in empty.text
    big = client.post("/runs/clf/try", files={"file": ("big.png", b"\0" * 80_000, "image/png")})
    assert big.status_code == 413 and 'id="try-error"' in big.text and "the limit is 2,000" in big.text


@pytest.mark.parametrize(("path", "message"), [
    ("%2E%2E/runs/clf", "no absolute path, no '..'"),
    ("/etc", "no absolute path, no '..'"),
    ("outside/data", "is outside the runs folder"),  # through a link out of the runs folder
    ("nothing-here", "no run at 'nothing-here'"),
    ("clf/model", "no run at 'clf/model'"),
])  # fmt: skip
def test_run_paths_outside_the_runs_folder_are_refused(client, board, path, message):
    link = board.runs_dir / "outside"
    if not link.exists():
        link.symlink_to(board.runs_dir.parent, target_is_directory=True)
    for method in ("get", "post"):
        answer = getattr(client, method)(f"/runs/{path}/try")
        assert answer.status_code == 404 and message in answer.json()["detail"], answer.text


def test_playground_takes_an_image_as_serve_does(tmp_path_factory, tiny_cnn_dir):
    root = tmp_path_factory.mktemp("board-image")
    images = image_folder(root / "images", 4)
    config = tiny_task_config("image_classification", tiny_cnn_dir, images, root / "runs" / "cnn")
    config["train"].update(num_epochs=1)
    api.train(config)
    app = FastAPI()
    app.include_router(try_pages.router(Board(runs_dir=root / "runs", max_upload_bytes=20_000)))
    client = TestClient(app)
    assert 'id="try-file"' in client.get("/runs/cnn/try").text
    image = images / "vertical" / "1.png"
    expected = api.predict(root / "runs" / "cnn", [str(image)])[0]
    answer = client.post("/runs/cnn/try", files={"file": ("1.png", image.read_bytes(), "image/png")})
    assert answer.status_code == 200 and f'<dd id="try-value-label">{expected["label"]}</dd>' in answer.text
    broken = client.post("/runs/cnn/try", files={"file": ("cat.png", b"not an image", "image/png")})
    assert broken.status_code == 422 and 'id="try-error"' in broken.text and "image 1 (cat.png)" in broken.text
    big = client.post("/runs/cnn/try", files={"file": ("big.png", b"\0" * 30_000, "image/png")})
    assert big.status_code == 413 and "image 1 (big.png) is over 20,000 bytes" in big.text


def test_chat_streams_the_reply_predict_gives(client, board):
    page = client.get("/runs/chat/try")
    for ident in ("chat-input", "chat-send", "chat-log"):
        assert f'id="{ident}"' in page.text
    events = []
    body = {"messages": [{"role": "user", "content": PROMPT}]}
    with client.stream("POST", "/runs/chat/chat", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    deltas = [e["delta"] for e in events if "delta" in e]
    expected = api.predict(board.runs_dir / "chat", [PROMPT])[0]["completion"]
    assert expected and len(deltas) >= 2, (deltas, expected)
    assert "".join(deltas).strip() == expected and events[-1] == {"done": True, "text": expected}
    empty = client.post("/runs/chat/chat", json={"messages": [{"role": "user", "content": " "}]})
    assert empty.status_code == 422 and "is empty" in empty.json()["detail"]
    assert client.post("/runs/clf/chat", json=body).status_code == 422  # not a chat model


def test_data_page_inspects_a_confined_file(client, board, tiny_model_dir):
    rows = sentiment_rows(30)
    frame = pd.DataFrame(rows + rows[:2])  # two exact duplicates
    data = board.data_dirs[0] / "reviews.csv"
    frame.to_csv(data, index=False)
    held_out = board.data_dirs[0] / "held_out.csv"
    pd.DataFrame([rows[5], *sentiment_rows(4, seed=9)]).to_csv(held_out, index=False)  # one row leaked from train
    assert 'id="data-form"' in client.get("/data").text
    form = {"path": "reviews.csv", "heldout": str(held_out), "task": "single_label", "label_errors": "embedding",
            "settings": f"model.name={tiny_model_dir}\ninspect.folds=3"}  # fmt: skip
    answer = client.post("/data", data=form, headers={"HX-Request": "true"})
    assert answer.status_code == 200, answer.text
    assert "train: 32 rows, 0 junk, 2 exact duplicates" in answer.text
    assert "leaked from train: 1 exact" in answer.text and "likely label errors in train:" in answer.text
    reports = list((board.runs_dir / ".board" / "inspect").iterdir())
    assert len(reports) == 1 and (reports[0] / "report.html").is_file()
    assert (
        f'id="data-report" title="inspection report" src="/data/reports/{reports[0].name}/report.html"' in answer.text
    )
    shown = client.get(f"/data/reports/{reports[0].name}/report.html")
    assert shown.status_code == 200 and shown.text == (reports[0] / "report.html").read_text()
    assert shown.headers["content-security-policy"].startswith("default-src 'none'")  # no script runs in it
    assert "sandbox></iframe>" in answer.text  # nor in the frame that shows it
    assert sorted(p.name for p in board.data_dirs[0].iterdir()) == [
        "held_out.csv",
        "reviews.csv",
    ]  # nothing beside the user's file
    assert client.get(f"/data/reports/{reports[0].name}/%2E%2E/%2E%2E/%2E%2E/clf/config.yaml").status_code == 404


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/etc/hostname", 403, "outside the allowed folders"),
    ("../train.csv", 403, "outside the allowed folders"),
    ("missing.csv", 422, "missing.csv"),
])  # fmt: skip
def test_data_page_refuses_what_it_cannot_read(client, board, path, status, message):
    before = sorted(p.name for p in (board.runs_dir / ".board" / "inspect").glob("*")) if (
        board.runs_dir / ".board").exists() else []  # fmt: skip
    answer = client.post("/data", data={"path": path, "task": "single_label", "label_errors": "off"})
    assert answer.status_code == status and '<p class="error" id="data-error">' in answer.text
    assert message in answer.text
    after = sorted(p.name for p in (board.runs_dir / ".board" / "inspect").glob("*")) if (
        board.runs_dir / ".board").exists() else []  # fmt: skip
    assert after == before  # nothing written


@pytest.mark.parametrize(("setting", "status", "message"), [
    ("model.name=/etc", 403, "model.name: &#39;/etc&#39; is outside the allowed folders"),
    ("model.revision=x", 422, "give KEY=VALUE with a key under"),  # only model.name and model.max_length
])  # fmt: skip
def test_data_page_takes_no_setting_that_names_a_file_outside(client, setting, status, message):
    form = {"path": "reviews.csv", "task": "single_label", "label_errors": "off", "settings": setting}
    answer = client.post("/data", data=form)
    assert answer.status_code == status and '<p class="error" id="data-error">' in answer.text
    assert message in answer.text


def test_form_shapes_and_prediction_layout_follow_the_values():
    record = try_pages.InputForm("record", [("question", ""), ("context", "")])
    assert record.item({"question": "what colour ?", "context": "colour : red ."}) == {
        "question": "what colour ?", "context": "colour : red ."}  # fmt: skip
    pair = try_pages.InputForm("pair", [("text 1", ""), ("text 2", "")])
    assert pair.item({"text 1": "a cat", "text 2": "an animal"}) == ["a cat", "an animal"]
    with pytest.raises(try_pages.Refused, match="'context' is empty"):
        record.item({"question": "what ?", "context": ""})
    row = try_pages.InputForm("row", [("review", ""), ("stars", ""), ("channel", "")])
    assert row.item({"review": "good", "stars": "4", "channel": " "}) == {
        "review": "good",
        "stars": "4",
        "channel": None,
    }
    view = try_pages.prediction_view(
        {
            "text": "Alice in Paris",
            "entities": [
                {"text": "Alice", "label": "PER", "start": 0},
                {"text": "Paris", "label": "LOC", "start": 9, "score": 0.9},
            ],
        }
    )
    assert view["plain"] == [("text", "Alice in Paris")]
    assert view["tables"] == [{"key": "entities", "columns": ["text", "label", "start", "score"],
                               "rows": [["Alice", "PER", 0, ""], ["Paris", "LOC", 9, 0.9]]}]  # fmt: skip
