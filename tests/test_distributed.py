"""`tunesmith train --nproc 2`: two CPU processes (gloo) train one model data-parallel, with the
model replicated (DDP), sharded (FSDP2) or under a DeepSpeed ZeRO engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import sentiment_rows, tiny_config

CLI = [sys.executable, "-m", "tunesmith.cli"]


# FSDP with LoRA: frozen and trainable weights in the same sharded layers.
# DeepSpeed: ZeRO stage 2 (the default), gradients and optimizer state partitioned.
@pytest.mark.parametrize(("distributed", "strategy"), [("ddp", "full"), ("fsdp", "lora"), ("deepspeed", "full")])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, distributed, strategy):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(160, seed=4)).to_csv(data, index=False)
    runs = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        config = tiny_config(tiny_model_dir, data, tmp_path / name, model={"strategy": strategy},
                             train={"num_epochs": 2, "batch_size": 8, "gradient_accumulation_steps": 2},
                             runtime={"log_every_steps": 2, "distributed": distributed})  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*CLI, "train", str(path), "--nproc", str(nproc)], env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = tmp_path / name

    single = json.loads((runs["single"] / "metrics.json").read_text())
    ddp = json.loads((runs["ddp"] / "metrics.json").read_text())
    assert ddp["training"]["world_size"] == 2
    assert ddp["training"]["parallelism"] == distributed and single["training"]["parallelism"] == "none"
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


# The optimizer state lives in shards (FSDP) or per-rank partitions that DeepSpeed writes itself.
@pytest.mark.parametrize("distributed", ["fsdp", "deepspeed"])
def test_partitioned_run_killed_and_resumed_matches_uninterrupted(tmp_path, tiny_model_dir, distributed):
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(240, seed=5)).to_csv(data, index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(name: str) -> list[str]:
        config = tiny_config(tiny_model_dir, data, tmp_path / name,
                             train={"num_epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "eval_every_steps": 10},
                             runtime={"distributed": distributed, "checkpoint_every_steps": 5, "log_every_steps": 5})  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return [*CLI, "train", str(path), "--nproc", "2"]

    done = subprocess.run(command("straight"), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    process = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step-00000015").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # torchrun starts its workers in sessions of their own: kill the whole tree at once.
    tree = [process, *psutil.Process(process.pid).children(recursive=True)]
    for member in tree:
        member.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs([psutil.Process(p.pid) for p in tree[1:] if psutil.pid_exists(p.pid)], timeout=30)
    assert not (run / "model").exists(), "killed too late: the run had finished"

    resumed = subprocess.run([*CLI, "train", "--resume", str(run), "--nproc", "2"], env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    expected = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    got = load_file(run / "model" / "model.safetensors")
    assert expected.keys() == got.keys()
    assert max(float((expected[n] - got[n]).abs().max()) for n in expected) < 1e-5
    straight_metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    resumed_metrics = json.loads((run / "metrics.json").read_text())
    assert resumed_metrics["training"]["steps"] == straight_metrics["training"]["steps"]
    assert resumed_metrics["test"]["accuracy"] == pytest.approx(straight_metrics["test"]["accuracy"], abs=1e-9)
