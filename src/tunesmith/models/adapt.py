"""Adaptation strategies: which parameters train. Adding one is one branch in apply_strategy.

Parameters are grouped bottom to top as embeddings, transformer layer 0..L-1, head
(everything else: pooler, classifier, final norms). Freezing, gradual unfreezing and
layer-wise learning rates all work on these groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from tunesmith.config import ModelConfig
from tunesmith.errors import TunesmithError


def _layer_list_name(model: nn.Module) -> str | None:
    """The longest ModuleList of identical blocks: the transformer layers."""
    best, size = None, 1
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > size:
            if len({type(child) for child in module}) == 1:
                best, size = name, len(module)
    return best


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped bottom to top: [embeddings, layer 0, ..., layer L-1, head]."""
    layers = _layer_list_name(model)
    count = len(model.get_submodule(layers)) if layers else 0
    groups: list[list[str]] = [[] for _ in range(count + 2)]
    pattern = re.compile(re.escape(layers) + r"\.(\d+)\.") if layers else None
    before_layers = True  # parameters ahead of the first layer (a CNN's stem) sit at the bottom
    for name, _ in model.named_parameters():
        match = pattern.match(name) if pattern else None
        if match:
            before_layers = False
            groups[1 + int(match.group(1))].append(name)
        elif ("embed" in name or (before_layers and pattern)) and not name.startswith(("classifier", "score")):
            groups[0].append(name)
        else:
            groups[-1].append(name)
    return groups


def set_trainable(model: nn.Module, names: set[str]) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


@dataclass
class GradualUnfreezer:
    """ULMFiT-style unfreezing: the head first, then one more group from the top each stage.

    The stage is a function of (step, epoch), so a resumed run lands in the same state.
    """

    model: nn.Module
    groups: list[list[str]]
    every_steps: int | None
    stage: int = -1

    def update(self, *, step: int, epoch: int) -> bool:
        """Sets requires_grad for the stage of this (step, epoch); True when it changed."""
        stage = epoch if self.every_steps is None else step // self.every_steps
        stage = min(stage, len(self.groups) - 1)
        if stage == self.stage:
            return False
        self.stage = stage
        open_groups = self.groups[len(self.groups) - 1 - stage :]
        set_trainable(self.model, {name for group in open_groups for name in group})
        return True


def apply_strategy(
    model: nn.Module, config: ModelConfig, new_parameters: list[str], *, peft_task_type: str = "SEQ_CLS"
) -> tuple[nn.Module, GradualUnfreezer | None]:
    """Applies model.strategy and returns the (possibly wrapped) model and, for
    gradual_unfreeze, the unfreezer the training loop calls at each step.

    ``peft_task_type`` is PEFT's TaskType name for the LoRA wrapper (SEQ_CLS, CAUSAL_LM, ...), or
    None for a model PEFT has no task for (image classifiers)."""
    match config.strategy:
        case "full":
            set_trainable(model, {name for name, _ in model.named_parameters()})
            return model, None
        case "contrastive":  # the encoder learns from pairs; the head is fitted (train/contrastive.py), not trained
            set_trainable(model, {name for name, _ in model.named_parameters() if name not in new_parameters})
            return model, None
        case "zero_shot":  # nothing trains (the task's load_model writes the head)
            set_trainable(model, set())
            return model, None
        case "freeze":
            groups = layer_groups(model)
            keep = config.freeze.trainable_layers
            open_groups = [groups[-1]] + (groups[-1 - keep : -1] if keep else [])
            set_trainable(model, {name for group in open_groups for name in group})
            return model, None
        case "gradual_unfreeze":
            unfreezer = GradualUnfreezer(model, layer_groups(model), config.gradual_unfreeze.every_steps)
            unfreezer.update(step=0, epoch=0)
            return model, unfreezer
        case "lora":
            from peft import LoraConfig, TaskType, get_peft_model

            lora = config.lora
            # New modules (the classifier head) must train in full, not through LoRA.
            to_save = sorted({name.rsplit(".", 1)[0] for name in new_parameters})
            peft_config = LoraConfig(
                task_type=TaskType[peft_task_type] if peft_task_type else None,
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules or getattr(model, "lora_target_modules", None),
                modules_to_save=to_save or None,
            )
            try:
                return get_peft_model(model, peft_config), None
            except ValueError as error:  # e.g. no module matches target_modules
                raise TunesmithError(f"model.lora.target_modules={lora.target_modules!r}: {error}") from None
    raise AssertionError(f"unhandled strategy {config.strategy}")
