"""Checkpoints are read back without unpickling anything, checked against their manifest, and a
damaged newest checkpoint gives way to the one before it; one process trains a run at a time."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.train.checkpoint import (
    MANIFEST,
    DamagedCheckpoint,
    LoopState,
    load_checkpoint,
    load_latest_checkpoint,
    save_best_weights,
    save_checkpoint,
    write_manifest,
)

CLI = [sys.executable, "-m", "tunesmith.cli"]


class _Payload:
    """Creates ./PWNED when unpickled: what a hostile checkpoint file would do."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler) -> None:
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _save(directory: Path, step: int, parts, keep: int = 5) -> Path:
    model, optimizer, scheduler = parts
    return save_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                           state=LoopState(step=step), keep=keep)  # fmt: skip


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_a_checkpoint_restores_weights_optimizer_schedule_and_every_rng_exactly(tmp_path):
    parts = _parts()
    _train_step(*parts)
    path = _save(tmp_path, 1, parts)
    assert not (path / "rng.pt").exists() and json.loads((path / "rng.json").read_text())["torch"]
    assert set(json.loads((path / MANIFEST).read_text())["files"]) == {
        "model.pt", "optimizer.pt", "scheduler.pt", "rng.json", "state.json"
    }  # fmt: skip
    expected_draws = _draws()
    _train_step(*parts)
    expected_weight = parts[0].weight.detach().clone()

    fresh = _parts()
    _draws(), _draws()  # move every generator on: the checkpoint must put them back
    state = load_checkpoint(path, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert state.step == 1
    assert _draws() == expected_draws
    _train_step(*fresh)
    assert torch.equal(fresh[0].weight, expected_weight)
    assert fresh[2].get_last_lr() == parts[2].get_last_lr()


@pytest.mark.parametrize("name", ["model.pt", "optimizer.pt", "scheduler.pt", "rng.json", "state.json"])
@pytest.mark.parametrize("manifest", ["stale", "rewritten"])
def test_a_pickle_payload_in_any_checkpoint_file_is_refused_and_never_runs(tmp_path, monkeypatch, name, manifest):
    monkeypatch.chdir(tmp_path)
    parts = _parts()
    path = _save(tmp_path / "checkpoints", 1, parts)
    torch.save({"state": _Payload()}, path / name)
    if manifest == "rewritten":  # whoever can write the file can write the manifest too
        write_manifest(path)
    with pytest.raises(DamagedCheckpoint, match=name if manifest == "rewritten" else "do not match manifest.json"):
        load_checkpoint(path, model=parts[0], optimizer=parts[1], scheduler=parts[2])
    assert not (tmp_path / "PWNED").exists()


def test_a_checkpoint_from_before_safe_checkpoints_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parts = _parts()
    path = _save(tmp_path / "checkpoints", 1, parts)
    (path / MANIFEST).unlink()
    (path / "rng.json").unlink()
    torch.save({"python": _Payload()}, path / "rng.pt")  # the old format: a pickled rng.pt
    with pytest.raises(TunesmithError, match="older than safe checkpoints") as error:
        load_latest_checkpoint(tmp_path / "checkpoints", model=parts[0], optimizer=parts[1], scheduler=parts[2],
                               log=lambda message: None)  # fmt: skip
    assert "no checkpoint in" in str(error.value) and "train again" in str(error.value)
    assert not (tmp_path / "PWNED").exists()


def test_a_file_added_to_a_checkpoint_is_refused(tmp_path):
    parts = _parts()
    path = _save(tmp_path, 1, parts)
    (path / "deepspeed").mkdir()
    torch.save({"x": 1}, path / "deepspeed" / "mp_rank_00_model_states.pt")
    with pytest.raises(DamagedCheckpoint, match="not recorded: deepspeed/mp_rank_00_model_states.pt"):
        load_checkpoint(path, model=parts[0], optimizer=parts[1], scheduler=parts[2])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "model.pt").write_bytes((p / "model.pt").read_bytes()[:100]), "changed: model.pt"),
        (lambda p: (p / "state.json").write_text("{"), "changed: state.json"),
        (lambda p: (p / "scheduler.pt").unlink(), "missing: scheduler.pt"),
        (lambda p: (p / MANIFEST).unlink(), "manifest.json is missing"),
        (lambda p: (p / MANIFEST).write_text("[1, 2]"), "not a manifest tunesmith wrote"),
        (lambda p: ((p / "model.pt").write_bytes(b"garbage"), write_manifest(p)), "model.pt cannot be read"),
        (lambda p: ((p / "state.json").write_text('{"step": 1, "bogus": 2}'), write_manifest(p)), "loop position"),
        (lambda p: ((p / "rng.json").write_text('{"python": 1}'), write_manifest(p)), "random generator states"),
    ],
)
def test_resume_falls_back_to_the_checkpoint_before_a_damaged_one_and_says_why(tmp_path, damage, reason):
    parts = _parts()
    _train_step(*parts)
    first = _save(tmp_path, 1, parts)
    expected = parts[0].weight.detach().clone()
    _train_step(*parts)
    damage(_save(tmp_path, 2, parts))
    fresh, logged = _parts(), []
    found = load_latest_checkpoint(tmp_path, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2],
                                   log=logged.append)  # fmt: skip
    assert found is not None and found[0] == first and found[1].step == 1
    assert torch.equal(fresh[0].weight, expected)
    assert len(logged) == 1 and "step-00000002 is unusable" in logged[0] and reason in logged[0], logged


def test_no_usable_checkpoint_is_one_clear_error_and_no_checkpoint_starts_over(tmp_path):
    parts = _parts()
    for step in (1, 2):
        (_save(tmp_path, step, parts) / "model.pt").write_bytes(b"")
    with pytest.raises(TunesmithError, match="no checkpoint in .* can be resumed from") as error:
        load_latest_checkpoint(tmp_path, model=parts[0], optimizer=parts[1], scheduler=parts[2], log=print)
    assert "step-00000002" in str(error.value) and "step-00000001" in str(error.value)
    assert load_latest_checkpoint(tmp_path / "none", model=parts[0], optimizer=parts[1], scheduler=parts[2]) is None


def test_pruning_after_a_fallback_keeps_the_good_checkpoints(tmp_path):
    parts = _parts()
    _save(tmp_path, 1, parts)
    (_save(tmp_path, 3, parts) / "model.pt").write_bytes(b"")  # damaged: the resume fell back to step 1
    _save(tmp_path, 2, parts, keep=1)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002", "step-00000003"]
    found = load_latest_checkpoint(tmp_path, model=parts[0], optimizer=parts[1], scheduler=parts[2],
                                   log=lambda message: None)  # fmt: skip
    assert found[0].name == "step-00000002"


def test_damaged_best_weights_are_reported_before_training_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parts = _parts()
    _save(tmp_path, 1, parts)
    save_best_weights(tmp_path, parts[0])
    torch.save({"w": _Payload()}, tmp_path / "best.pt")
    with pytest.raises(TunesmithError, match="best.pt cannot be read.*delete .*best.pt to resume anyway"):
        load_latest_checkpoint(tmp_path, model=parts[0], optimizer=parts[1], scheduler=parts[2])
    assert not (tmp_path / "PWNED").exists()


@pytest.fixture
def interrupted_run(tmp_path, tiny_model_dir, sentiment_csv) -> Path:
    """A tiny finished run made to look interrupted (its final model and metrics removed)."""
    from tests.conftest import tiny_config
    from tunesmith.api import train

    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", model={"dropout": 0.1},
                         train={"num_epochs": 2}, runtime={"checkpoint_every_steps": 2, "keep_checkpoints": 2})  # fmt: skip
    run = train(config).run_dir
    shutil.copytree(run, tmp_path / "finished")
    shutil.rmtree(run / "model")
    (run / "metrics.json").unlink()
    return run


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_a_second_resume_of_a_run_in_training_is_refused(interrupted_run, tmp_path):
    metrics = (interrupted_run / "metrics.jsonl").read_bytes()
    with (interrupted_run / ".lock").open("a") as handle:  # as a training process holds it
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run([*CLI, "train", "--resume", str(interrupted_run)], env=_env(), capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "is being trained by another process" in done.stderr and "Traceback" not in done.stderr
    assert (interrupted_run / "metrics.jsonl").read_bytes() == metrics

    # A lock left by a killed process is no lock: the kernel released it.
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
                               str(interrupted_run / ".lock")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    from tunesmith.api import resume

    resume(interrupted_run)
    assert (interrupted_run / "model" / "model.safetensors").is_file()


def test_resume_from_an_earlier_checkpoint_when_the_latest_is_damaged_matches_the_uninterrupted_run(
    interrupted_run, tmp_path
):
    from safetensors.torch import load_file

    latest, earlier = sorted((interrupted_run / "checkpoints").glob("step-*"), reverse=True)
    (latest / "model.pt").write_bytes((latest / "model.pt").read_bytes()[:1000])
    done = subprocess.run([*CLI, "train", "--resume", str(interrupted_run)], env=_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"Checkpoint {latest.name} is unusable" in done.stderr and f"Resumed from {earlier}" in done.stderr
    expected = load_file(tmp_path / "finished" / "model" / "model.safetensors")
    got = load_file(interrupted_run / "model" / "model.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    straight = json.loads((tmp_path / "finished" / "metrics.json").read_text())
    assert json.loads((interrupted_run / "metrics.json").read_text())["test"] == straight["test"]


def test_deepspeed_partitions_load_without_unpickling_code(tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from tunesmith.train.zero import load_without_code

    monkeypatch.chdir(tmp_path)
    # What a ZeRO stage 2 optimizer partition holds besides tensors and plain data.
    partition = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
                 "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "state": torch.ones(3)}  # fmt: skip
    torch.save(partition, tmp_path / "good.pt")
    loaded = load_without_code(str(tmp_path / "good.pt"), map_location=lambda storage, location: storage)
    assert loaded["zero_stage"] == ZeroStageEnum.gradients and loaded["param_slice_mappings"][0]["w"].numel == 4
    torch.save({"optimizer_state_dict": _Payload()}, tmp_path / "bad.pt")
    with pytest.raises(TunesmithError, match="bad.pt holds objects a DeepSpeed checkpoint of tunesmith never holds"):
        load_without_code(str(tmp_path / "bad.pt"))
    assert not (tmp_path / "PWNED").exists()
