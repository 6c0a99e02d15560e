"""A classifier that reads a table row two ways at once (task.route fusion): the text encoder's
masked mean over the row written as a sentence, and a small layer over the row's numbers and
categories as a vector (normalised numbers, missing-cell indicators, one-hot categories with an
unknown bucket; data/table.py builds it), the two concatenated under one linear head.

Why a class of our own: transformers has no model that takes a feature vector beside the token
ids, and the fusion models of the tabular tools (AutoGluon's multimodal fusion, Ludwig's
combiners) are trained by their own trainers, not by the loop every tunesmith strategy runs on.
It is a ``PreTrainedModel`` registered with the Auto classes (``model_type:
tunesmith_table_fusion``), so a run saves and loads like any classifier, and its head and
feature layer are the new parameters that LoRA trains in full.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from tunesmith.models.architectures import portable_config, register_classifier
from tunesmith.models.pooled import PooledClassifierConfig, PooledTextClassifier

MODEL_TYPE = "tunesmith_table_fusion"
TABLE_HIDDEN = 64
"""Width of the layer over the row's feature vector."""
NEW_PARAMETERS = ["classifier.bias", "classifier.weight", "table.0.bias", "table.0.weight", "table.2.bias",
                  "table.2.weight"]  # fmt: skip
"""The parameters a fusion model adds to the pretrained encoder."""


class TableFusionConfig(PooledClassifierConfig):
    """The pooled classifier's config, plus the length of the row's feature vector."""

    model_type = MODEL_TYPE

    def __init__(self, num_table_features: int = 0, **kwargs):
        self.num_table_features = num_table_features
        super().__init__(**kwargs)


class TableFusionClassifier(PooledTextClassifier):
    """logits = classifier([masked mean of the encoder's states ; table(row features)])."""

    config_class = TableFusionConfig

    def __init__(self, config: TableFusionConfig):
        super().__init__(config)
        width = config.num_table_features
        self.table = nn.Sequential(nn.Linear(width, TABLE_HIDDEN), nn.GELU(), nn.LayerNorm(TABLE_HIDDEN))
        self.classifier = nn.Linear(config.encoder.hidden_size + TABLE_HIDDEN, config.num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, table_features: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_: object) -> SequenceClassifierOutput:  # fmt: skip
        """Logits only: the task computes its own loss (``labels`` is accepted and ignored)."""
        text = self.embed(input_ids, attention_mask, token_type_ids)
        if table_features is None:
            raise ValueError("a table fusion model needs table_features beside the token ids")
        row = self.table(table_features.to(text.dtype))
        return SequenceClassifierOutput(logits=self.scaled(self.classifier(torch.cat([text, row], dim=-1))))


def fusion_classifier(encoder: PreTrainedModel, *, label_names: list[str], num_table_features: int,
                      problem_type: str, output_scale: float = 1.0, output_shift: float = 0.0,
                      ) -> TableFusionClassifier:  # fmt: skip
    """A fusion classifier around a loaded pretrained encoder (its weights kept), with a new
    feature layer and head; ``label_names`` empty means one output (a regression)."""
    config = TableFusionConfig(
        encoder=portable_config(encoder.config), num_table_features=num_table_features,
        num_labels=max(len(label_names), 1), problem_type=problem_type, output_scale=output_scale,
        output_shift=output_shift, id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)},
    )  # fmt: skip
    model = TableFusionClassifier(config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model


register_classifier(MODEL_TYPE, TableFusionConfig, TableFusionClassifier)
