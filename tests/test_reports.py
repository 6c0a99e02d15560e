"""HTML reports: per run, comparing runs, per study."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.cli import app


def test_run_report_and_comparison(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(80, seed=5)).assign(group=["a", "b"] * 40).to_csv(data, index=False)
    runs = []
    for name, rate in (("slow", 1e-3), ("fast", 3e-3)):
        config = tiny_config(tiny_model_dir, data, tmp_path / name, train={"learning_rate": rate},
                             data={"train": str(data), "val_fraction": 0.2, "test_fraction": 0.25, "slice_column": "group"})  # fmt: skip
        runs.append(api.train(config).run_dir)
    page = (tmp_path / "fast" / "report.html").read_text()
    metrics = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    for expected in (
        "Learning curves",
        "Errors (test)",
        "Calibration (test)",
        "Per group slice",
        "95% interval",
        f"{metrics['test']['accuracy']:.4f}",
        "data:image/png;base64,",
    ):
        assert expected in page, expected
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(tmp_path / "compare.html")])
    assert result.exit_code == 0, result.output
    compared = json.loads((tmp_path / "compare.json").read_text())
    assert [d["key"] for d in compared["differences"]] == ["train.learning_rate"]
    assert compared["scores"][1]["accuracy"] == metrics["test"]["accuracy"]  # a number, not text
    assert "Validation curves" in (tmp_path / "compare.html").read_text()
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a finished run directory" in missing.output
    (tmp_path / "fast" / "report.html").unlink()
    assert CliRunner().invoke(app, ["report", str(tmp_path / "fast")]).exit_code == 0
    assert (tmp_path / "fast" / "report.html").exists()
