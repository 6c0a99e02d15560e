"""`tunesmith train --nproc 2`: two CPU processes (gloo) train one model data-parallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import sentiment_rows, tiny_config

CLI = [sys.executable, "-m", "tunesmith.cli"]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(160, seed=4)).to_csv(data, index=False)
    runs = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        config = tiny_config(tiny_model_dir, data, tmp_path / name,
                             train={"num_epochs": 2, "batch_size": 8, "gradient_accumulation_steps": 2},
                             runtime={"log_every_steps": 2})  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*CLI, "train", str(path), "--nproc", str(nproc)], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = tmp_path / name

    single = json.loads((runs["single"] / "metrics.json").read_text())
    ddp = json.loads((runs["ddp"] / "metrics.json").read_text())
    assert ddp["training"]["world_size"] == 2
    checksums = ddp["training"]["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # both ranks hold the same weights
    assert json.loads((runs["ddp"] / "environment.json").read_text())["world_size"] == 2
    assert ddp["training"]["steps"] == single["training"]["steps"]
    assert abs(ddp["test"]["accuracy"] - single["test"]["accuracy"]) <= 0.05
    # Same global batches, same loss normalisation: the weights agree up to float reordering.
    a = load_file(runs["single"] / "model" / "model.safetensors")
    b = load_file(runs["ddp"] / "model" / "model.safetensors")
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert worst < 1e-3
    moved = max(float((a[n] - load_file(tiny_model_dir / "model.safetensors").get(n.replace("bert.", ""), a[n])).abs().max())
                for n in a)  # fmt: skip
    assert moved > 1e-3  # and they trained
    train_single = [json.loads(x) for x in (runs["single"] / "metrics.jsonl").read_text().splitlines()]
    train_ddp = [json.loads(x) for x in (runs["ddp"] / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["loss"], s["loss"]) for r, s in zip(train_ddp, train_single) if r["split"] == "train"]
    assert losses and all(abs(x - y) < 1e-3 for x, y in losses)
    assert torch.isfinite(torch.tensor([x for x, _ in losses])).all()
