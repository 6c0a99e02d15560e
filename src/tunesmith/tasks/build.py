"""The one place that picks a task class for a config (``build_task``), and the one place that
says which stages after training a task supports (``require_stage``, ``stage_table``).

Each task class implements the contract of tasks/contract.py, including ``stages``, the stages
that work for it today, and ``kind``, the ``task.type`` it implements.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from tunesmith.config import TASK_TYPES, Config
from tunesmith.errors import TunesmithError
from tunesmith.tasks.causal_lm import CausalLMTask
from tunesmith.tasks.classification import TextClassificationTask
from tunesmith.tasks.contract import Task
from tunesmith.tasks.image_classification import ImageClassificationTask
from tunesmith.tasks.pair_classification import PairClassificationTask
from tunesmith.tasks.qa import QuestionAnsweringTask
from tunesmith.tasks.seq2seq import Seq2SeqTask
from tunesmith.tasks.tabular import TabularTask
from tunesmith.tasks.token_classification import TokenClassificationTask

Stage = Literal["evaluate", "predict", "chat", "cv", "tune", "inspect", "export", "serve", "monitor", "retrain",
                "forgetting"]  # fmt: skip
"""The stages after training, each of which a task kind supports or not (the README's table)."""

STAGES: tuple[str, ...] = get_args(Stage)
TASK_KINDS: tuple[str, ...] = TASK_TYPES


def build_task(config: Config, saved: dict[str, Any] | None = None) -> Task:
    """The task object for a config.

    Args:
        config: the run's config; ``config.task.type`` picks the task.
        saved: a run's ``task.json`` (what training learned: ``label_names``, ``allow_no_answer``,
            ...), to rebuild a trained run's task; None before training, when the label space
            is still to be fitted.

    Returns:
        The task (TextClassificationTask, TokenClassificationTask, ...).
    """
    match config.task.type:
        case "causal_lm":
            return CausalLMTask.from_config(config, saved)
        case "seq2seq":
            return Seq2SeqTask.from_config(config, saved)
        case "token_classification":
            return TokenClassificationTask.from_config(config, saved)
        case "image_classification":
            return ImageClassificationTask.from_config(config, saved)
        case "question_answering":
            return QuestionAnsweringTask.from_config(config, saved)
        case "pair_classification":
            return PairClassificationTask.from_config(config, saved)
        case "tabular":
            return TabularTask.from_config(config, saved)
        case "single_label" | "multi_label" | "regression":
            return TextClassificationTask.from_config(config, saved)
        case other:  # config validation allows only the types above
            raise ValueError(f"no task class for task.type={other!r}")


def stages_of(kind: str) -> frozenset[str]:
    """The stages a task kind (a ``task.type`` value) supports, as its task class declares them."""
    return build_task(Config.model_validate({"task": {"type": kind}})).stages


def require_stage(task: Any, stage: Stage, what: str | None = None) -> None:
    """Refuses, in one clear line, a stage that the task does not support yet.

    Args:
        task: a task object (``build_task``), or a task kind (``task.type``) where no task object
            exists (an export directory's metadata).
        stage: the stage about to run.
        what: the run or export being used, named in the message.

    Raises:
        TunesmithError: the stage does not cover this task kind; the message lists the kinds it covers.
    """
    kind = task if isinstance(task, str) else task.kind
    if stage in (stages_of(kind) if isinstance(task, str) else task.stages):
        return
    covered = ", ".join(k for k in TASK_KINDS if stage in stages_of(k))
    where = f"{what}: " if what else ""
    raise TunesmithError(f"{where}{stage} does not cover {kind} runs yet; it covers: {covered}")


def stage_table() -> str:
    """The task kind x stage table as Markdown (✓ supported; otherwise a numbered note saying why
    not, from the task's ``stage_notes``), for the README."""
    lines = ["| task.type | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    notes: dict[str, int] = {}
    for kind in TASK_KINDS:
        task = build_task(Config.model_validate({"task": {"type": kind}}))
        cells = ["✓" if s in task.stages else f"— ({notes.setdefault(task.stage_notes[s], len(notes) + 1)})"
                 for s in STAGES]  # fmt: skip
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"({number}) {note}" for note, number in notes.items()])
