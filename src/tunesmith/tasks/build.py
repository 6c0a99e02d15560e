"""The one place that picks a task class for a config: ``build_task``."""

from __future__ import annotations

from typing import Any

from tunesmith.config import Config
from tunesmith.tasks.causal_lm import CausalLMTask
from tunesmith.tasks.classification import TextClassificationTask
from tunesmith.tasks.image_classification import ImageClassificationTask
from tunesmith.tasks.qa import QuestionAnsweringTask
from tunesmith.tasks.seq2seq import Seq2SeqTask
from tunesmith.tasks.token_classification import TokenClassificationTask


def build_task(config: Config, saved: dict[str, Any] | None = None):
    """The task object for a config.

    Args:
        config: the run's config; ``config.task.type`` picks the task.
        saved: a run's ``task.json`` (what training learned: ``label_names``, ``allow_no_answer``,
            ...), to rebuild a trained run's task; None before training, when the label space
            is still to be fitted.

    Returns:
        The task (TextClassificationTask, TokenClassificationTask, ...).
    """
    saved = saved or {}
    label_names = list(saved.get("label_names") or [])
    task = config.task
    match task.type:
        case "causal_lm":
            return CausalLMTask(loss_on=task.loss_on, packing=config.train.packing, max_length=config.model.max_length)
        case "seq2seq":
            return Seq2SeqTask(prefix=task.source_prefix)
        case "token_classification":
            return TokenClassificationTask(tag_names=label_names, scheme=task.tag_scheme,
                                           all_subwords=task.label_all_subwords,
                                           invalid_tags=task.invalid_tags)  # fmt: skip
        case "image_classification":
            return ImageClassificationTask(type="single_label", label_names=label_names, augment=config.data.image,
                                           image_size=config.data.image.size)  # fmt: skip
        case "question_answering":
            return QuestionAnsweringTask(stride=task.doc_stride, n_best=task.n_best,
                                         max_answer_length=task.max_answer_length,
                                         no_answer_threshold=task.no_answer_threshold,
                                         allow_no_answer=bool(saved.get("allow_no_answer", False)))  # fmt: skip
        case "single_label" | "multi_label" | "regression":
            return TextClassificationTask(type=task.type, label_names=label_names, threshold=task.threshold,
                                          label_separator=task.label_separator)  # fmt: skip
        case other:  # config validation allows only the types above
            raise ValueError(f"no task class for task.type={other!r}")
