"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import sentiment_rows, tiny_config

CLI = [sys.executable, "-m", "tunesmith.cli"]


def _write_config(tmp_path: Path, tiny_model_dir: Path, name: str) -> Path:
    data = tmp_path / "data.csv"
    if not data.exists():
        pd.DataFrame(sentiment_rows(400, seed=3)).to_csv(data, index=False)
    config = tiny_config(
        tiny_model_dir, data, tmp_path / name,
        model={"dropout": 0.1},  # dropout draws from the RNG: resume must restore it
        train={"num_epochs": 3, "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 1e-3,
               "eval_every_steps": 15},
        runtime={"checkpoint_every_steps": 5, "keep_checkpoints": 2, "log_every_steps": 3},
    )  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}


def _records(run: Path, split: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "per_second" not in k} for r in rows if r["split"] == split]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    straight = _write_config(tmp_path, tiny_model_dir, "straight")
    subprocess.run([*CLI, "train", str(straight)], check=True, env=_env(), capture_output=True)

    killed_config = _write_config(tmp_path, tiny_model_dir, "killed")
    run = tmp_path / "killed"
    process = subprocess.Popen([*CLI, "train", str(killed_config)], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-00000020").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "model").exists(), "killed too late: the run had finished"

    resumed = subprocess.run([*CLI, "train", "--resume", str(run)], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from" in resumed.stderr

    expected = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    got = load_file(run / "model" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] == got[name]).all(), name
    expected_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    got_metrics = json.loads((run / "metrics.json").read_text())
    assert got_metrics["test"] == expected_metrics["test"]
    assert got_metrics["validation"] == expected_metrics["validation"]
    assert got_metrics["training"] == expected_metrics["training"]
    # The log is continuous too: same train losses and validation scores, no duplicates.
    assert _records(run, "train") == _records(tmp_path / "straight", "train")
    assert _records(run, "validation") == _records(tmp_path / "straight", "validation")


def test_resume_of_a_finished_run_is_refused(tmp_path, tiny_model_dir, sentiment_csv):
    from tunesmith.api import resume, train
    from tunesmith.errors import TunesmithError

    result = train(tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "done", train={"num_epochs": 1}))
    with pytest.raises(TunesmithError, match="already finished"):
        resume(result.run_dir)
