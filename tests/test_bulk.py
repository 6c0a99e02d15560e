"""Prediction over files of any size: chunked reading of every streamed format (rows numbered,
errors named), predictions written as they go in the file's order and equal to ``predict``'s,
an output that appears only when complete, and exports predicting like runs."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tests.makers import write_table
from tunesmith import api
from tunesmith.cli import app
from tunesmith.data.stream import chunks, count_rows
from tunesmith.errors import TunesmithError
from tunesmith.ship.bulk import predict_file
from tunesmith.ship.export import export


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".txt"])
def test_every_format_streams_in_numbered_chunks(tmp_path, suffix):
    texts = [f"text number {i}" for i in range(25)]
    path = tmp_path / f"in{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(texts[:10]) + "\n\n" + "\n".join(texts[10:]) + "\n", encoding="utf-8")  # a blank line
    elif suffix == ".tsv":
        pd.DataFrame({"text": texts}).to_csv(path, sep="\t", index=False)
    else:
        write_table(path, [{"text": t, "n": i} for i, t in enumerate(texts)])
    found = list(chunks(path, 10))
    assert [len(c.frame) for c in found] == [10, 10, 5] and [c.first_row for c in found] == [1, 11, 21]
    assert sum((c.frame["text"].tolist() for c in found), []) == texts
    assert found[2].where == "rows 21-25"
    assert count_rows(path) == (25 if suffix == ".parquet" else None)


def test_a_bad_file_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"bad.jsonl, line 2"):
        list(chunks(bad, 10))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text\ncaf\xe9\n")
    with pytest.raises(TunesmithError, match=r"latin.csv: not UTF-8"):
        list(chunks(latin, 10))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match="holds no rows"):
        list(chunks(empty, 10))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("bulk")
    data = write_table(root / "data.csv", sentiment_rows(60, seed=4))
    return api.train(tiny_config(tiny_model_dir, data, root / "run", train={"num_epochs": 1})).run_dir


def test_predictions_stream_in_order_and_equal_predicts(run_dir, tmp_path):
    texts = [r["text"] for r in sentiment_rows(23, seed=9)]
    source = write_table(tmp_path / "texts.parquet", [{"id": i, "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "out" / "predictions.jsonl"
    assert predict_file(run_dir, source, out, chunk_rows=5, progress=False) == 23
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == api.predict(run_dir, texts)  # the same rows, in the file's order
    assert [p.name for p in out.parent.iterdir()] == ["predictions.jsonl"]  # no temporary file left
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # a file like any other, not mkstemp's 0600
    with pytest.raises(TunesmithError, match="exists"):  # never replaced
        predict_file(run_dir, source, out, progress=False)


def test_a_failure_mid_file_leaves_no_output(run_dir, tmp_path):
    source = write_table(tmp_path / "texts.jsonl", [{"text": "good"}] * 8)
    source.write_text(source.read_text() + '{"text": "cut off\n', encoding="utf-8")  # line 9: not JSON
    out = tmp_path / "predictions.jsonl"
    with pytest.raises(TunesmithError, match="texts.jsonl, line 9"):  # after the first chunk was written
        predict_file(run_dir, source, out, chunk_rows=4, progress=False)
    assert list(tmp_path.iterdir()) == [source]


def test_an_export_predicts_a_file_from_the_cli(run_dir, tmp_path):
    export(run_dir, tmp_path / "onnx", fmt="onnx", log=lambda m: None)
    texts = [r["text"] for r in sentiment_rows(12, seed=2)]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "onnx"), "--input", str(source)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["label"] for r in rows] == [r["label"] for r in api.predict(run_dir, texts)]


def test_onnx_file_picks_the_exports_fp32_model(run_dir, tmp_path):
    export(run_dir, tmp_path / "onnx", fmt="onnx", quantize="int8", log=lambda m: None)
    source = write_table(tmp_path / "texts.csv", [{"text": r["text"]} for r in sentiment_rows(8, seed=6)])
    out = tmp_path / "fp32.jsonl"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "onnx"), "--input", str(source), "--output", str(out),
                                      "--onnx-file", "model.onnx"])  # fmt: skip
    assert result.exit_code == 0, result.output
    fp32 = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    assert fp32 == [r["label"] for r in api.predict(run_dir, [r["text"] for r in sentiment_rows(8, seed=6)])]
    refused = CliRunner().invoke(
        app, ["predict", str(tmp_path / "onnx"), "--text", "good", "--onnx-file", "model.onnx"]
    )
    assert (
        refused.exit_code == 2 and "--onnx-file and --backend choose the model for --input FILE alone" in refused.output
    )
