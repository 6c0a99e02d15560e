"""The DeepSpeed config that tunesmith passes through: filled from the tunesmith config, and
refused when it contradicts it."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.train.checkpoint import LoopState, load_checkpoint, prepare_checkpoint, save_checkpoint
from tunesmith.train.zero import build_config


def build(source=None, **overrides):
    options = {"batch_size": 10, "accumulation": 2, "max_grad_norm": 1.0, "mixed_precision": "no", "world": 4}
    return build_config(None if source is None else str(source), **{**options, **overrides})


def write(tmp_path, content) -> str:
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_default_is_zero_stage_2_with_tunesmith_batch_sizes():
    config = build()
    assert config["zero_optimization"] == {"stage": 2}
    # A global batch of 10 over 4 ranks: at most 3 rows per rank and micro-batch.
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 3 * 2 * 4
    assert config["gradient_clipping"] == 1.0
    assert "fp16" not in config and "bf16" not in config
    assert build(max_grad_norm=None)["gradient_clipping"] == 0.0


def test_auto_values_and_user_sections_pass_through(tmp_path):
    source = write(tmp_path, {"zero_optimization": {"stage": 1, "overlap_comm": False},
                              "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": 1.0,
                              "bf16": {"enabled": "auto"}, "wall_clock_breakdown": True})  # fmt: skip
    config = build(source, mixed_precision="bf16")
    assert config["zero_optimization"] == {"stage": 1, "overlap_comm": False}
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["bf16"] == {"enabled": True}
    assert config["wall_clock_breakdown"] is True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"gradient_accumulation_steps": 4},
            "gradient_accumulation_steps=4 contradicts train.gradient_accumulation_steps",
        ),
        ({"train_batch_size": 64}, "train_batch_size=64 contradicts"),
        ({"gradient_clipping": 0.5}, "gradient_clipping=0.5 contradicts train.max_grad_norm"),
        ({"fp16": {"enabled": True}}, "fp16.enabled=True contradicts runtime.mixed_precision='no'"),
        ({"optimizer": {"type": "Adam"}}, "remove the 'optimizer' section"),
        ({"scheduler": {"type": "WarmupLR"}}, "remove the 'scheduler' section"),
        ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage=3 is not supported"),
        ({"zero_optimization": 2}, "'zero_optimization' must be an object"),
        ([1, 2], "must hold a JSON object"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_config_that_contradicts_tunesmith_is_refused(tmp_path, content, message):
    source = write(tmp_path, content)
    with pytest.raises(TunesmithError, match="runtime.deepspeed_config") as error:
        build(source)
    assert message in str(error.value)
    assert str(source) in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(TunesmithError, match="file not found: .*nowhere.json"):
        build(tmp_path / "nowhere.json")


def test_resuming_across_deepspeed_and_other_engines_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    plain = save_checkpoint(tmp_path / "plain", model=model, optimizer=optimizer, scheduler=scheduler,
                            state=LoopState(step=1), keep=1)  # fmt: skip
    with pytest.raises(TunesmithError, match="written by a ddp, fsdp or one-process run and this run is deepspeed"):
        load_checkpoint(plain, model=model, optimizer=None, scheduler=scheduler)
    prepare_checkpoint(tmp_path / "deep", 1)  # DeepSpeed would write its partitions here
    deep = save_checkpoint(tmp_path / "deep", model=model, optimizer=None, scheduler=scheduler,
                           state=LoopState(step=1), keep=1)  # fmt: skip
    assert not (deep / "optimizer.pt").exists()
    with pytest.raises(TunesmithError, match="written by a deepspeed run and this run is not"):
        load_checkpoint(deep, model=model, optimizer=optimizer, scheduler=scheduler)
