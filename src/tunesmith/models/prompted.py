"""Zero-shot classification by an instruction-tuned causal LM, as a classifier: a text's logit for
a label is the log-likelihood the LM gives that label's description as its answer to an
instruction that lists the labels (sum of the answer tokens' log-probabilities, the end-of-turn
token included, so "World" and "World news" differ). The LM never generates free text that would
have to be parsed, and the answer is always one of the labels.

Why a class of our own: it makes the scorer an ordinary sequence classifier (input ids and
attention mask in, one logit per label out), so the classification task scores, predicts and
serves it like any other run, and ``save_pretrained``/``from_pretrained`` keep it (registered
with transformers' Auto classes as ``model_type: tunesmith_prompted``, no remote code). The
instruction is rendered once with the tokenizer's chat template around a placeholder; its token
ids before and after the text, and each label's answer ids, live in the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from tunesmith.models.architectures import WrappingModel, portable_config, register_classifier

MODEL_TYPE = "tunesmith_prompted"
CHUNK = 32
"""(text, label) sequences per pass of the LM."""
CONTENT_FREE = "N/A"
"""The text whose label scores are each label's bias under calibration."""
_PLACEHOLDER = "\u2063TEXT\u2063"


class PromptedScorerConfig(PretrainedConfig):
    """The LM's own config (``decoder``) and the token ids of the prompt around the text and of
    each label's answer."""

    model_type = MODEL_TYPE
    sub_configs = {"decoder": AutoConfig}

    def __init__(self, decoder: PretrainedConfig | dict | None = None, prefix_ids: list[int] | None = None,
                 suffix_ids: list[int] | None = None, answer_ids: list[list[int]] | None = None,
                 instruction: str = "", bias: list[float] | None = None, **kwargs):  # fmt: skip
        if isinstance(decoder, dict):
            decoder = AutoConfig.for_model(**decoder)
        self.decoder = decoder
        self.prefix_ids, self.suffix_ids = list(prefix_ids or []), list(suffix_ids or [])
        self.answer_ids = [list(a) for a in answer_ids or []]
        self.instruction = instruction
        self.bias = list(bias or [])
        super().__init__(**kwargs)


class PromptedLabelScorer(WrappingModel):
    """logits[b, k] = log P(answer k | prompt around text b) under the causal LM, less bias[k]."""

    config_class = PromptedScorerConfig
    base_model_prefix = "decoder"

    def __init__(self, config: PromptedScorerConfig):
        super().__init__(config)
        self.decoder = AutoModelForCausalLM.from_config(config.decoder)
        self.post_init()

    @property
    def base_model(self):
        """The LM's transformer without its head: what reads a text (monitoring and the baseline
        probe pool its last hidden states)."""
        return self.decoder.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **_: object) -> SequenceClassifierOutput:  # fmt: skip
        """Every (text, label) pair as one sequence, right-padded, CHUNK sequences per pass of the LM."""
        config, device = self.config, input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = torch.tensor(config.prefix_ids, dtype=torch.long, device=device)
        suffix = torch.tensor(config.suffix_ids, dtype=torch.long, device=device)
        answers = [torch.tensor(a, dtype=torch.long, device=device) for a in config.answer_ids]
        sequences, spans = [], []
        for row, mask in zip(input_ids, attention_mask):
            prompt = torch.cat([prefix, row[mask.bool()], suffix])
            for answer in answers:
                sequences.append(torch.cat([prompt, answer]))
                spans.append((len(prompt), len(answer)))
        pad = config.decoder.pad_token_id if config.decoder.pad_token_id is not None else 0
        scores = []
        for first in range(0, len(sequences), CHUNK):  # many labels x a batch: a bounded pass at a time
            chunk, places = sequences[first : first + CHUNK], spans[first : first + CHUNK]
            ids = torch.full((len(chunk), max(len(s) for s in chunk)), pad, dtype=torch.long, device=device)
            keep = torch.zeros_like(ids)
            for i, sequence in enumerate(chunk):
                ids[i, : len(sequence)], keep[i, : len(sequence)] = sequence, 1
            log_probs = F.log_softmax(self.decoder(input_ids=ids, attention_mask=keep).logits.float(), dim=-1)
            scores += [log_probs[i, start - 1 : start - 1 + length].gather(-1, ids[i, start : start + length, None]).sum()
                       for i, (start, length) in enumerate(places)]  # fmt: skip
        scores = torch.stack(scores).view(len(input_ids), len(answers))
        if config.bias:
            scores = scores - torch.tensor(config.bias, dtype=scores.dtype, device=device)
        return SequenceClassifierOutput(logits=scores)


def prompted_scorer(decoder: PreTrainedModel, tokenizer, *, label_names: list[str], descriptions: list[str],
                    instruction: str, calibrate: bool = True) -> PromptedLabelScorer:  # fmt: skip
    """The scorer around a loaded causal LM, its prompt rendered with the tokenizer's chat
    template (plain text when the tokenizer has none). ``calibrate``: each label's score for
    CONTENT_FREE becomes its bias (Zhao et al. 2021, "Calibrate before use")."""
    listed = ", ".join(descriptions)
    message = instruction.replace("{labels}", listed).replace("{text}", _PLACEHOLDER)
    if tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip
    else:
        rendered = f"{message}\n"
    before, _, after = rendered.partition(_PLACEHOLDER)
    end = tokenizer.eos_token_id
    answer_ids = [tokenizer(d, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
                  for d in descriptions]  # fmt: skip
    config = PromptedScorerConfig(
        decoder=portable_config(decoder.config), prefix_ids=tokenizer(before, add_special_tokens=False)["input_ids"],
        suffix_ids=tokenizer(after, add_special_tokens=False)["input_ids"], answer_ids=answer_ids,
        instruction=instruction, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)}, problem_type="single_label_classification",
    )  # fmt: skip
    model = PromptedLabelScorer(config)
    model.decoder.load_state_dict(decoder.state_dict())
    if calibrate:
        model.eval()
        with torch.no_grad():
            empty = tokenizer([CONTENT_FREE], add_special_tokens=False, return_tensors="pt")
            model.config.bias = model(**empty).logits[0].tolist()
    return model


register_classifier(MODEL_TYPE, PromptedScorerConfig, PromptedLabelScorer)
