"""Training-loop behaviour: accumulation normalisation, early stopping, evaluation cadence."""

from __future__ import annotations

import json

import pandas as pd
import torch
from safetensors.torch import load_file

from tests.conftest import sentiment_rows, tiny_config
from tunesmith.api import train


def _final_weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def test_accumulation_gives_the_same_step_as_one_big_batch(tiny_model_dir, tmp_path):
    # 16 training rows, one step: batch 16 x 1 and batch 8 x 2 (and 5 x 4, uneven) see the same
    # examples in that step, so with plain SGD the updated weights must agree.
    train_file, val_file = tmp_path / "train.csv", tmp_path / "val.csv"
    pd.DataFrame(sentiment_rows(16)).to_csv(train_file, index=False)
    pd.DataFrame(sentiment_rows(4, seed=1)).to_csv(val_file, index=False)
    weights = []
    for name, batch_size, accumulation in (("one", 16, 1), ("two", 8, 2), ("four", 5, 4)):
        config = tiny_config(
            tiny_model_dir, train_file, tmp_path / name,
            data={"validation": str(val_file), "val_fraction": 0.0, "test_fraction": 0.0},
            train={"max_steps": 1, "batch_size": batch_size, "gradient_accumulation_steps": accumulation,
                   "optimizer": "sgd", "momentum": 0.0, "learning_rate": 0.5, "max_grad_norm": None,
                   "weight_decay": 0.0},
        )  # fmt: skip
        weights.append(_final_weights(train(config).run_dir))
    changed = [n for n in weights[0] if "classifier" in n]
    assert changed
    for other in weights[1:]:
        for name, tensor in weights[0].items():
            assert torch.allclose(tensor, other[name], atol=1e-5), name


def test_early_stopping_stops_when_the_metric_stalls(tiny_model_dir, tmp_path, sentiment_csv):
    # A learning rate this small cannot move the validation loss: patience 2 ends the run
    # two evaluations after the first.
    config = tiny_config(
        tiny_model_dir, sentiment_csv, tmp_path / "run",
        train={"num_epochs": 10, "learning_rate": 1e-12, "eval_every_steps": 1, "metric": "accuracy",
               "early_stopping": {"patience": 2}},
    )  # fmt: skip
    result = train(config)
    training = json.loads((result.run_dir / "metrics.json").read_text())["training"]
    assert training["stopped_early"]
    assert training["steps"] == 3
    assert training["best_step"] == 1
    evaluations = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evaluations if r["split"] == "validation"] == [1, 2, 3]


def test_same_seed_same_run_different_seed_different_run(tiny_model_dir, tmp_path, sentiment_csv):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / name, train={"num_epochs": 1},
                             runtime={"seed": seed}, model={"dropout": 0.1})  # fmt: skip
        runs[name] = _final_weights(train(config).run_dir)
    assert all(torch.equal(runs["a"][n], runs["b"][n]) for n in runs["a"])
    assert not all(torch.equal(runs["a"][n], runs["c"][n]) for n in runs["a"])


def test_early_stopping_without_a_validation_split_is_refused(tiny_model_dir, tmp_path, sentiment_csv):
    import pytest

    from tunesmith.errors import TunesmithError

    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", data={"val_fraction": 0.0},
                         train={"early_stopping": {"patience": 2}})  # fmt: skip
    with pytest.raises(TunesmithError, match="train.early_stopping.patience need a validation split"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_bad_lora_targets_leave_no_run_directory(tiny_model_dir, tmp_path, sentiment_csv):
    import pytest

    from tunesmith.errors import TunesmithError

    config = tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run",
                         model={"strategy": "lora", "lora": {"target_modules": ["no_such_module"]}})  # fmt: skip
    with pytest.raises(TunesmithError, match="model.lora.target_modules"):
        train(config)
    assert not (tmp_path / "run").exists()  # the same command can simply run again


def test_epochs_completed_counts_the_last_epoch(tiny_model_dir, tmp_path, sentiment_csv):
    result = train(tiny_config(tiny_model_dir, sentiment_csv, tmp_path / "run", train={"num_epochs": 2}))
    training = json.loads((result.run_dir / "metrics.json").read_text())["training"]
    assert training["epochs_completed"] == 2
