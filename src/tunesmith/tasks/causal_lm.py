"""Instruction tuning of decoder-only language models.

Records come as Alpaca-style instruction/input/output, prompt/completion pairs, or chat lists
(OpenAI ``messages`` or ShareGPT ``conversations``, with tool calls: tasks/chat_formats.py).
Every record becomes a conversation, is rendered with the tokenizer's chat template (or the one
in the config; with the record's tools), and is tokenized once. The labels mask everything except
the assistant turns (``task.loss_on=completion``), each of which ends with the end-of-turn or
EOS token so the tuned model learns to stop.

Packing (``train.packing``) puts the examples of a batch into rows of up to ``max_length``
tokens with position ids that restart at every example and no attention mask. transformers
then builds a block-diagonal causal mask from the position ids (sdpa, eager and flex
attention) or passes sequence boundaries to the kernel (flash attention), so no example
attends to another.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jinja2.exceptions import TemplateError

from tunesmith.config import Config, DataConfig, GenerationConfig
from tunesmith.data.batching import eval_batches
from tunesmith.data.load import read_table
from tunesmith.data.prepare import PreparedData, prepare_records
from tunesmith.data.quality import Finding, InspectionRecords, TokenLengths, looks_cut
from tunesmith.errors import TunesmithError
from tunesmith.models.load import (
    ResolvedModel,
    load_causal_lm,
    load_trained_model,
    pad_token_id,
    text_processor,
)
from tunesmith.runs import atomic_write
from tunesmith.tasks.chat_formats import (
    ChatFields,
    Conversation,
    EmptyRecord,
    read_conversation,
    turn_text,
    unrendered_tool_parts,
    uses_tools,
)
from tunesmith.tasks.confidence import bootstrap_means
from tunesmith.tasks.contract import (
    CardText,
    ChatFormat,
    Completion,
    Encoded,
    Predictions,
    Sampling,
    ScoreContext,
    Watch,
)
from tunesmith.tasks.inputs import check_texts, read_texts
from tunesmith.tasks.monitoring import EMPTY_OUTPUTS, OUTPUT_LENGTH, generated_values, pooled

IGNORE = -100
FORMAT_COLUMNS = {
    "messages": ("messages",),  # or ``conversations``, or task.messages_column (ChatFields.column)
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}


# -- records ------------------------------------------------------------------------------------
def detect_format(columns: list[str], wanted: str, source: str, chat: ChatFields | None = None) -> str:
    """The record format: ``wanted``, or the first whose columns are all present (the chat
    column is ``chat.column(columns)``)."""
    formats = FORMAT_COLUMNS | {"messages": ((chat or ChatFields()).column(columns),)}
    if wanted != "auto":
        needed = [c for c in formats[wanted] if c not in columns]
        if needed:
            raise TunesmithError(
                f"{source}: data.format={wanted} needs the fields {list(formats[wanted])}; "
                f"missing {needed} (the records have {columns})"
            )
        return wanted
    for name, needed in formats.items():
        if all(c in columns for c in needed):
            return name
    raise TunesmithError(
        f"{source}: cannot tell the record format from the fields {columns}; causal_lm records need "
        "instruction/output (input optional), prompt/completion, or a chat list in messages or conversations "
        "(task.messages_column names another)"
    )


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def to_conversation(row: dict, fmt: str, where: str, chat: ChatFields | None = None) -> Conversation:
    """One record as a conversation: OpenAI messages ({role, content}, tool calls) and its tools.

    Args:
        chat: where a chat record keeps its turns, system prompt and tools (task.*).

    Raises:
        EmptyRecord: a missing or empty instruction, prompt, output, completion or turn.
        TunesmithError: a malformed conversation, or one with no assistant turn; the message
            names the record, turn and field.
    """
    if fmt == "alpaca":
        instruction, extra, output = _text(row.get("instruction")), _text(row.get("input")), _text(row.get("output"))
        if not instruction or not instruction.strip():
            raise EmptyRecord(f"{where}: the instruction is missing or empty")
        if output is None or not output.strip():
            raise EmptyRecord(f"{where}: the output is missing or empty; every record needs one to train on")
        prompt = instruction if not extra or not extra.strip() else f"{instruction}\n\n{extra}"
        return Conversation([{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], None)
    if fmt == "prompt_completion":
        prompt, completion = _text(row.get("prompt")), _text(row.get("completion"))
        if not prompt or not prompt.strip():
            raise EmptyRecord(f"{where}: the prompt is missing or empty")
        if completion is None or not completion.strip():
            raise EmptyRecord(f"{where}: the completion is missing or empty; every record needs one to train on")
        return Conversation([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], None)
    return read_conversation(row, chat or ChatFields(), where)


def to_messages(row: dict, fmt: str, where: str, chat: ChatFields | None = None) -> list[dict[str, Any]]:
    """One record's messages (``to_conversation`` without the tools)."""
    return to_conversation(row, fmt, where, chat).messages


def records_frame(frame: pd.DataFrame, fmt: str, source: str, first_row: int = 1, *, drop_empty: bool = False,
                  chat: ChatFields | None = None) -> tuple[pd.DataFrame, list[dict]]:  # fmt: skip
    """The canonical table: ``messages`` and ``tools`` (JSON text; no tools: empty) and
    ``record`` (1-based row in the source), and one changelog entry per record dropped for being
    empty (with ``drop_empty``).

    Raises:
        TunesmithError: a bad record, or an empty one without ``drop_empty`` (naming it).
    """
    conversations, tools, records, dropped = [], [], [], []
    for i, row in enumerate(frame.to_dict("records")):
        where = f"{source}, record {first_row + i}"
        try:
            conversation = to_conversation(row, fmt, where, chat)
        except EmptyRecord as error:
            if not drop_empty:
                raise
            dropped.append({"source": source, "record": first_row + i, "action": "dropped",
                            "reason": error_detail(error, where)})  # fmt: skip
            continue
        conversations.append(json.dumps(conversation.messages, ensure_ascii=False))
        tools.append(json.dumps(conversation.tools, ensure_ascii=False) if conversation.tools else "")
        records.append(first_row + i)
    return pd.DataFrame({"messages": conversations, "tools": tools, "record": records}), dropped


def error_detail(error: TunesmithError, where: str) -> str:
    """A record's error without the file and record it starts with (a turn's keeps its turn)."""
    return str(error).removeprefix(where).removeprefix(": ").removeprefix(", ")


def frame_tools(frame: pd.DataFrame) -> list[list[dict] | None]:
    """Each row's tool schemas (None: none; a table without a ``tools`` column has none)."""
    if "tools" not in frame.columns:
        return [None] * len(frame)
    return [json.loads(t) if isinstance(t, str) and t else None for t in frame["tools"]]


def frame_conversations(frame: pd.DataFrame) -> list[Conversation]:
    """The rows of a canonical table (``records_frame``) as conversations."""
    return [Conversation(json.loads(m), t) for m, t in zip(frame["messages"], frame_tools(frame))]


def load_records(spec: str, config: DataConfig, chat: ChatFields | None = None) -> tuple[pd.DataFrame, dict]:
    """Reads one source of records into ``messages``/``tools``/``record``/``source`` rows (exact
    duplicates dropped when data.clean.drop_duplicates) and a manifest entry. The text is kept as
    written: whitespace can matter in a completion. ``source`` (the file) travels with every row,
    so a record that fails to encode later is named by file and record.

    Raises:
        TunesmithError: an unreadable source, an unknown record format or a bad record (naming it).
    """
    table = read_table(spec, column_names=config.column_names, encoding_errors=config.encoding_errors)
    fmt = detect_format(list(table.frame.columns), config.format, table.source, chat)
    frame, dropped = records_frame(table.frame, fmt, table.source, drop_empty=config.clean.drop_empty, chat=chat)
    duplicated = frame.duplicated(["messages", "tools"])
    counts = {"rows_in": len(table.frame), "dropped_empty": len(dropped), "exact_duplicates": int(duplicated.sum())}
    if config.clean.drop_duplicates:
        frame = frame[~duplicated].reset_index(drop=True)
    counts["rows_out"] = len(frame)
    frame["source"] = table.source
    entry = {
        "source": table.source,
        "sha256": table.sha256,
        "format": fmt,
        "cleaning": counts,
        **table.manifest_fields(),
    }
    if fmt == "messages":
        entry["messages_column"] = (chat or ChatFields()).column(table.frame.columns)
    if dropped:  # prepare_records moves these into the run's changelog
        entry["changes"] = dropped
        entry.setdefault("notes", []).append(
            f"{len(dropped)} empty record(s) dropped (data.clean.drop_empty), the first: record "
            f"{dropped[0]['record']}, {dropped[0]['reason']}"
        )
    return frame, entry


# -- rendering and tokenization -----------------------------------------------------------------
def _render(tokenizer, messages, template: str | None, *, add_generation_prompt: bool, tools=None) -> str:
    if template is None and tokenizer.chat_template is None:
        # Plain text for tokenizers without a chat template: a prompt turn ends with a newline,
        # an assistant turn with EOS.
        eos = tokenizer.eos_token or ""
        return "".join(m["content"] + (eos if m["role"] == "assistant" else "\n") for m in messages)
    return tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def render_with_spans(tokenizer, messages, template: str | None, where: str,
                      tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:  # fmt: skip
    """The conversation as text and the character spans of its assistant turns (tool-call turns
    included; tool results are not assistant turns).

    A turn's span starts after the generation prompt and ends after the template's end-of-turn
    or EOS token (trailing newlines are not trained on). When the text after the last assistant
    turn has no EOS, one is appended so the model learns to stop.

    Raises:
        TunesmithError: a template that refuses the conversation, renders no tool support for
            one with tools, or does not render its beginning as a prefix; naming the record.
    """
    tooled = uses_tools(messages, tools)
    if tooled and template is None and tokenizer.chat_template is None:
        raise TunesmithError(f"{where}: the record has tool calls, tool results or tools, and the tokenizer has no "
                             "chat template to render them; set model.chat_template to one with tool support")  # fmt: skip
    try:
        text, spans = _assistant_spans(tokenizer, messages, template, where, tools)
    except TemplateError as error:
        advice = ("; the model's chat template has no tool support for this record's tool calls or tool results: "
                  "set model.chat_template to one that has") if tooled else "; set model.chat_template"  # fmt: skip
        raise TunesmithError(f"{where}: the chat template refused the conversation ({error}){advice}") from None
    lost = unrendered_tool_parts(text, messages, tools) if tooled else []
    if lost:
        raise TunesmithError(
            f"{where}: the chat template does not render {', '.join(lost)}: the model's chat template has no tool "
            "support (tools=, tool_calls, the tool role); set model.chat_template to one that renders them"
        )
    return text, spans


def _assistant_spans(tokenizer, messages, template, where, tools) -> tuple[str, list[tuple[int, int]]]:
    eos = tokenizer.eos_token
    spans: list[tuple[int, int]] = []
    text = _render(tokenizer, messages, template, add_generation_prompt=False, tools=tools)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], template, add_generation_prompt=True, tools=tools)
        upto = _render(tokenizer, messages[: i + 1], template, add_generation_prompt=False, tools=tools)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise TunesmithError(
                f"{where}: the chat template does not render the conversation's beginning as a prefix of "
                "the whole, so the assistant tokens cannot be located; set model.chat_template"
            )
        turn = upto[len(before) :]
        end = turn.find(eos) if eos else -1
        spans.append((len(before), len(before) + (end + len(eos) if end >= 0 else len(turn))))
    if eos and eos not in text[spans[-1][0] :]:
        text += eos
        spans[-1] = (spans[-1][0], len(text))
    return text, spans


@dataclass
class EncodedConversations:
    """Features of a list of conversations and how many were cut to max_length."""

    features: list[dict]
    truncated: int


def encode_conversations(
    tokenizer, conversations: list[list[dict]], records: list[int], *, source: str, max_length: int,
    chat_template: str | None, loss_on: str, tools: list[list[dict] | None] | None = None,
) -> EncodedConversations:  # fmt: skip
    """Tokenizes every conversation once, with labels that are IGNORE outside the trained tokens.

    Args:
        tools: each conversation's tool schemas (None: no tools for any).

    Raises:
        TunesmithError: a record whose trained tokens all lie beyond max_length (its prompt is too
            long), or whose mask is empty; the message names the record.
    """
    plain = chat_template is None and tokenizer.chat_template is None
    features, truncated = [], 0
    for messages, record, offered in zip(conversations, records, tools or [None] * len(conversations)):
        where = f"{source}, record {record}"
        text, spans = render_with_spans(tokenizer, messages, chat_template, where, offered)
        encoded = tokenizer(text, add_special_tokens=plain, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        inside = [any(a <= start < b for a, b in spans) and end > start for start, end in offsets]
        labels = [t if (keep or loss_on == "all") else IGNORE for t, keep in zip(ids, inside)]
        labels[0] = IGNORE  # nothing predicts the first token
        if all(label == IGNORE for label in labels):
            raise TunesmithError(f"{where}: no token to train on (the completion is empty after tokenization)")
        if len(ids) > max_length:
            if all(label == IGNORE for label in labels[:max_length]) or (
                loss_on == "all" and all(not keep for keep in inside[:max_length])
            ):
                prompt_tokens = next(i for i, keep in enumerate(inside) if keep)
                raise TunesmithError(
                    f"{where}: the prompt is {prompt_tokens} tokens, so no completion token fits in "
                    f"model.max_length={max_length}; raise model.max_length or shorten the prompt"
                )
            ids, labels = ids[:max_length], labels[:max_length]
            truncated += 1
        features.append({"input_ids": ids, "labels": labels})
    return EncodedConversations(features, truncated)


def generation_prompt(tokenizer, messages: list[dict], chat_template: str | None,
                      tools: list[dict] | None = None) -> tuple[str, str]:  # fmt: skip
    """(prompt text up to the last assistant turn, that turn's reference text: a tool-call turn's
    is the JSON of its calls)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = _render(tokenizer, messages[:last], chat_template, add_generation_prompt=True, tools=tools)
    return prompt, turn_text(messages[last])


def prompt_side(messages: list[dict]) -> str:
    """The turns before the last assistant turn as ``role: content`` lines: what the model is
    given before the completion it is scored on."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return "\n".join(f"{m['role']}: {turn_text(m)}" for m in messages[:last])


# -- batches ------------------------------------------------------------------------------------
def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into rows of at most ``capacity`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[index] <= free:
                rows[r].append(index)
                room[r] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def collate_lm(features: list[dict], pad_token_id: int, *, packing: bool = False, capacity: int = 0) -> dict:
    """A training batch: padded rows with an attention mask, or packed rows with position ids.

    Packed rows are padded at the end by a segment of their own (positions restart there
    too), so padding never joins an example's attention block.
    """
    if not packing:
        longest = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [pad_token_id] * (longest - len(f["input_ids"])) for f in features]
        labels = [f["labels"] + [IGNORE] * (longest - len(f["labels"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
        return {
            "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask),
            "num_examples": len(features), "num_tokens": sum(len(f["input_ids"]) for f in features),
        }  # fmt: skip
    rows = pack_rows([len(f["input_ids"]) for f in features], max(capacity, max(len(f["input_ids"]) for f in features)))
    longest = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
    ids, labels, positions = [], [], []
    for row in rows:
        row_ids, row_labels, row_positions = [], [], []
        for i in row:
            row_ids += features[i]["input_ids"]
            row_labels += [IGNORE] + features[i]["labels"][1:]
            row_positions += list(range(len(features[i]["input_ids"])))
        pad = longest - len(row_ids)
        ids.append(row_ids + [pad_token_id] * pad)
        labels.append(row_labels + [IGNORE] * pad)
        positions.append(row_positions + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions),
        "num_examples": len(features), "num_tokens": sum(len(f["input_ids"]) for f in features),
    }  # fmt: skip


# Architectures whose logits are exactly lm_head(last hidden state): no soft-capping or scaling.
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3")


def _plain_parts(model):
    """(decoder, output head) when the loss may apply the head to the trained positions only;
    None for other architectures and for DDP-wrapped models (whose forward must run whole)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(inner, "config", None), "model_type", None)  # DDP wrappers have no config
    if model_type not in PLAIN_HEAD_MODELS or not hasattr(inner, "get_decoder"):
        return None
    head = inner.get_output_embeddings()
    return (inner.get_decoder(), head) if isinstance(head, torch.nn.Linear) else None


def token_losses(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses of the labelled positions and the row each belongs to.

    For plain-head architectures the output projection runs only at positions that have a
    label: prompt tokens then cost no vocabulary-sized logits (for SmolLM2, 49,152 x 576 per
    token), in compute or in memory.
    """
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    labels = batch["labels"].to(device)[:, 1:]
    keep = labels != IGNORE
    rows = keep.nonzero()[:, 0]
    # use_cache=False matters: with a cache object, transformers skips the packed-sequence
    # detection and packed examples would attend to each other.
    parts = _plain_parts(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**inputs, use_cache=False).last_hidden_state
        selected = head(hidden[:, :-1][keep]).float()
    else:
        selected = model(**inputs, use_cache=False).logits[:, :-1][keep].float()
    return F.cross_entropy(selected, labels[keep], reduction="none"), rows


# -- the task -----------------------------------------------------------------------------------
@dataclass
class CausalLMTask:
    """Instruction tuning of a decoder-only language model: the whole task contract
    (tasks/contract.py) for ``task.type=causal_lm``.

    Attributes:
        loss_on: "completion" (assistant tokens only) or "all".
        packing: pack training batches (see the module docstring).
        max_length: model.max_length: the longest record, and the row capacity when packing.
        chat_template: model.chat_template (None: the tokenizer's own).
        generation: how held-out records, predict and chat generate.
        chat: where chat records keep their turns, system prompt and tools, and their role names
            (task.messages_column, task.system_column, task.tools_column, task.roles).
    """

    loss_on: str = "completion"
    packing: bool = False
    max_length: int = 512
    chat_template: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    chat: ChatFields = field(default_factory=ChatFields)
    type: ClassVar[str] = "causal_lm"
    kind: ClassVar[str] = "causal_lm"
    stages: ClassVar[frozenset[str]] = frozenset(
        {"evaluate", "predict", "retrain", "cv", "inspect", "chat", "tune", "forgetting", "serve", "monitor", "export"}
    )
    export_formats: ClassVar[frozenset[str]] = frozenset({"hf", "gguf"})  # gguf: ship/gguf.py
    """export writes the merged transformers directory (no ONNX: generation loops over the model)."""
    default_metric: ClassVar[tuple[str, str]] = ("loss", "min")
    metric_names: ClassVar[list[str]] = ["loss", "perplexity"]
    peft_task_type: ClassVar[str | None] = "CAUSAL_LM"
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    pipeline_tag: ClassVar[str] = "text-generation"
    calibrates: ClassVar[bool] = False
    stratify: ClassVar[bool] = False
    forgetting_probe: ClassVar[str | None] = "perplexity"
    stage_notes: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> CausalLMTask:
        """The task for a config; ``saved`` (task.json) adds nothing the config lacks."""
        task = config.task
        chat = ChatFields(messages_column=task.messages_column, roles=dict(task.roles),
                          system_column=task.system_column, tools_column=task.tools_column)  # fmt: skip
        return cls(loss_on=task.loss_on, packing=config.train.packing, max_length=config.model.max_length,
                   chat_template=config.model.chat_template, generation=config.generation, chat=chat)  # fmt: skip

    @property
    def label_names(self) -> list[str]:
        """None: a generative task has no label space."""
        return []

    # -- data ----------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """Reads every source of records and splits them at random (no labels to stratify by)."""
        return prepare_records(config.data, seed=config.runtime.seed, load=self.read, inputs=self.overlap_inputs)

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One source's records and its manifest entry (see ``load_records``)."""
        return load_records(spec, data, self.chat)

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each record's prompt side: its turns before the last assistant turn, as role: content lines."""
        return [prompt_side(json.loads(m)) for m in frame["messages"]]

    def fit(self, train: pd.DataFrame) -> None:
        """Nothing to learn from the rows: the model has no label space."""

    def groups(self, frame: pd.DataFrame) -> np.ndarray | None:
        """None: records stand alone (cv.group_column groups them)."""
        return None

    def source_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Each record's position in its table (``record`` is 1-based)."""
        return frame["record"].to_numpy() - 1

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """JSONL chat records (OpenAI messages, in task.messages_column, and the tools in
        task.tools_column): every format is read as a conversation, written as one."""
        path = directory / f"{name}.jsonl"
        column = self.chat.messages_column or "messages"
        records = [{column: c.messages} | ({self.chat.tools_column: c.tools} if c.tools else {})
                   for c in frame_conversations(frame)]  # fmt: skip
        # ASCII escapes: no line separator inside a text can split a record in two.
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path, {"format": "messages", "column_names": None}

    # -- model ---------------------------------------------------------------------------
    def load_processor(self, resolved: ResolvedModel, *, trained: bool = False) -> Any:
        """The tokenizer, checked against model.max_length; a trained run's as saved."""
        return text_processor(resolved, max_length=self.max_length, trained=trained)

    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        """The pretrained decoder with its own language-model head (no new parameters, normally)."""
        return load_causal_lm(resolved, dropout=dropout)

    def load_trained(self, model_dir: Path) -> Any:
        """A trained run's model (``auto_class``) from its ``model/`` directory."""
        return load_trained_model(self.auto_class, model_dir)

    # -- training ------------------------------------------------------------------------
    def encode(self, processor: Any, splits: dict[str, pd.DataFrame]) -> Encoded:
        """Each split's records rendered with the chat template and tokenized once (labels mask
        all but the trained tokens).

        Raises:
            TunesmithError: a record with no token to train on within model.max_length, named by
                its file (the frame's ``source`` column; the split where a table has none) and record.
        """
        encoded = Encoded(features={}, truncated={})
        if self.chat_template is None and processor.chat_template is None:
            encoded.notes.append("The tokenizer has no chat template: records are rendered as plain text "
                                 "(set model.chat_template)")  # fmt: skip
        for name, frame in splits.items():
            source = frame["source"].iloc[0] if "source" in frame.columns and len(frame) else f"the {name} split"
            found = encode_conversations(processor, [json.loads(m) for m in frame["messages"]],
                                         frame["record"].tolist(), source=source, max_length=self.max_length,
                                         chat_template=self.chat_template, loss_on=self.loss_on,
                                         tools=frame_tools(frame))  # fmt: skip
            encoded.features[name], encoded.truncated[name] = found.features, found.truncated
            if found.truncated:
                encoded.notes.append(f"{name}: {found.truncated} of {len(frame)} records truncated to "
                                     f"{self.max_length} tokens")  # fmt: skip
        return encoded

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        return collate_lm(features, pad_token_id, packing=self.packing, capacity=self.max_length)

    def count(self, features: list[dict]) -> int:
        """A step's loss is divided by its trained tokens, so every token weighs the same."""
        return sum(sum(1 for label in f["labels"][1:] if label != IGNORE) for f in features)

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        losses, _ = token_losses(model, batch, device)
        return losses.sum()

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> dict[str, Any]:
        """Mean loss per trained token and its perplexity."""
        return perplexity_metrics(
            model, features, batch_size,
            lambda batch: token_losses(model, collate_lm(batch, pad_token_id), device)[0],
        )  # fmt: skip

    # -- evaluation ----------------------------------------------------------------------
    def calibrate(self, model, processor, features: list[dict], *, batch_size: int, device) -> float | None:
        """None: temperature scaling is for a classifier's probabilities."""
        return None

    def score(self, model, processor, frame: pd.DataFrame, features: list[dict],
              context: ScoreContext) -> dict[str, Any]:  # fmt: skip
        """Loss and perplexity on every record; with ``context.generate``, generation metrics
        (with bootstrap intervals) on up to generation.max_examples records, whose generations
        go to ``context.artifact("generations", ".jsonl")``."""
        metrics = self.evaluate(model, features, batch_size=context.batch_size, pad_token_id=pad_token_id(processor),
                                device=context.device)  # fmt: skip
        prompts, references = zip(*(generation_prompt(processor, c.messages, self.chat_template, c.tools)
                                    for c in frame_conversations(frame))) if len(frame) else ((), ())  # fmt: skip
        prompts, references = list(prompts), list(references)
        if not context.generate:
            context.predictions(generation_predictions(prompts, references, [], {}))
            return metrics
        rows, path = rows_to_generate(frame, self.generation, context)
        count = len(rows)
        predictions = generate(model, processor, prompts[:count], self.generation, device=context.device)
        found, scores = report_generations(path, rows["record"].tolist(), prompts[:count], references[:count],
                                           predictions, context)  # fmt: skip
        context.predictions(generation_predictions(prompts, references, predictions, scores))
        return metrics | found

    # -- prediction ----------------------------------------------------------------------
    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """The completion of each input, given as one user turn: ``{"prompt", "completion"}`` rows.

        Raises:
            TunesmithError: an input that is not a text, naming its number.
        """
        texts = check_texts(inputs, self.kind)
        prompts = [self.prompt(processor, [{"role": "user", "content": text}]) for text in texts]
        completions = generate(model, processor, prompts, self.generation, device=model_device(model))
        return [{"prompt": text, "completion": completion} for text, completion in zip(texts, completions)]

    def read_inputs(self, path: Path) -> list:
        """The prompts of a prediction input file (one per line of .txt, or a table's text column)."""
        return read_texts(path)

    def prompt(self, tokenizer, messages: list[dict[str, str]]) -> str:
        """The conversation so far, rendered as in training, ending where the assistant answers."""
        return generation_prompt(tokenizer, [*messages, {"role": "assistant", "content": ""}], self.chat_template)[0]

    def complete(self, model, tokenizer, prompts: list[str], sampling: Sampling) -> list[Completion]:
        """Completions of rendered prompts, generated together (see :func:`complete`)."""
        return complete(model, tokenizer, prompts, sampling)

    def stream(self, model, tokenizer, prompt: str, sampling: Sampling, run: Callable):
        """The completion of one rendered prompt as text pieces (see :func:`stream`)."""
        return stream(model, tokenizer, prompt, sampling, run)

    def reply(self, model, tokenizer, messages: list[dict[str, str]]) -> str:
        """The model's next assistant turn after a conversation (``tunesmith chat``).

        Args:
            messages: the whole conversation so far, ``{"role", "content"}`` turns ending with the user's.
        """
        return generate(model, tokenizer, [self.prompt(tokenizer, messages)], self.generation,
                        device=model_device(model))[0]  # fmt: skip

    # -- export --format gguf (tasks.contract.Chat) ----------------------------------------
    def chat_format(self, tokenizer) -> ChatFormat:
        """model.chat_template, else the tokenizer's (None: plain text), and EOS, which ends
        every trained assistant turn (``render_with_spans``)."""
        template = self.chat_template or tokenizer.chat_template
        if isinstance(template, dict):  # named templates: apply_chat_template uses "default"
            template = template.get("default")
        return ChatFormat(template, (tokenizer.eos_token,) if tokenizer.eos_token else ())

    def render(self, tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        """A conversation as training renders it (before EOS is appended to a last turn without one)."""
        return _render(tokenizer, messages, self.chat_template, add_generation_prompt=add_generation_prompt)

    def prompt_ids(self, tokenizer, prompt: str) -> list[int]:
        """A rendered prompt's ids as ``generate`` tokenizes it: special tokens are added only
        when there is no chat template (the template writes its own)."""
        return tokenizer(prompt, add_special_tokens=tokenizer.chat_template is None)["input_ids"]

    def split_prompts(self, tokenizer, frame: pd.DataFrame) -> list[str]:
        """Each record's turns before its last assistant turn, rendered as generation renders them."""
        return [generation_prompt(tokenizer, c.messages, self.chat_template, c.tools)[0]
                for c in frame_conversations(frame)]  # fmt: skip

    # -- shipping ------------------------------------------------------------------------
    def export_description(self) -> dict[str, Any]:
        """What an export reads (for its ``tunesmith.json``)."""
        return {
            "inputs": "token ids of prompts rendered with the chat template (model.chat_template, else the "
            "tokenizer's)",
            "text_normalisation": None,
        }

    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The model card's generative wording: what it generates, the data's format, and the limits."""
        return CardText(
            title="Instruction-tuned language model",
            purpose=f"It answers prompts in the style of its training completions (loss on {self.loss_on} tokens).",
            data=f"Record format: {manifest['sources']['train'].get('format')}.",
            limitation=generation_limitation(max_length, truncated_train),
            usage='`tunesmith predict RUN_DIR --text "..."`, or `tunesmith chat RUN_DIR`.',
        )

    # -- monitoring (tunesmith monitor; tasks.contract.Monitored) ---------------------------
    watches: ClassVar[tuple[Watch, ...]] = (OUTPUT_LENGTH, EMPTY_OUTPUTS)

    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """Each record's prompt as ``predict`` and ``/predict`` take it: its last user turn
        before the answer it was trained on (the turns before it, as role: content lines, when
        it has no user turn)."""
        inputs = []
        for messages in map(json.loads, frame["messages"]):
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            users = [m["content"] for m in messages[:last] if m["role"] == "user"]
            inputs.append(users[-1] if users else prompt_side(messages))
        return inputs

    def monitor_texts(self, inputs: list) -> list[str]:
        """The prompts themselves."""
        return check_texts(inputs, self.kind)

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """The decoder's mean-pooled last hidden states over each prompt, rendered as a user
        turn with the chat template (as ``predict`` renders it)."""
        prompts = [self.prompt(processor, [{"role": "user", "content": t}]) for t in check_texts(inputs, self.kind)]
        return pooled(model.base_model, processor, prompts, max_length=self.max_length,
                      add_special_tokens=processor.chat_template is None)  # fmt: skip

    def watched_values(self, row: dict[str, Any]) -> dict[str, Any]:
        """The completion's length in words, and whether it is empty."""
        return generated_values(row["completion"])

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "loss_on": self.loss_on, "packing": self.packing, "label_names": []}

    # -- inspect -------------------------------------------------------------------------
    def inspection_records(self, spec: str, data: DataConfig) -> InspectionRecords:
        """One source's records for ``tunesmith inspect`` (data.quality.InspectedTask): the
        prompt side compared for duplicates and leakage, the last assistant turn as the target,
        and as findings the empty records (dropped with data.clean.drop_empty, else refused),
        malformed ones (refused) and completions that seem cut mid-sentence."""
        table = read_table(spec, column_names=data.column_names, encoding_errors=data.encoding_errors)
        fmt = detect_format(list(table.frame.columns), data.format, table.source, self.chat)
        kept: list[tuple[int, str, Conversation]] = []
        findings: list[Finding] = []
        for number, row in enumerate(table.frame.to_dict("records"), 1):
            where = f"{table.source}, record {number}"
            try:
                conversation = to_conversation(row, fmt, where, self.chat)
            except TunesmithError as error:
                findings.append(record_finding(error, number, where, drop_empty=data.clean.drop_empty))
                continue
            completion = next(turn_text(m) for m in reversed(conversation.messages) if m["role"] == "assistant")
            if looks_cut(completion):
                findings.append(Finding("completion looks cut", number, where,
                                        f"it ends {completion.rstrip()[-60:]!r}", "warning",
                                        "the model learns to stop mid-sentence: complete or drop it"))  # fmt: skip
            kept.append((number, where, conversation))
        return InspectionRecords(
            source=table.source, rows=[k[0] for k in kept], where=[k[1] for k in kept],
            texts=[prompt_side(k[2].messages) for k in kept],
            targets=[next(turn_text(m) for m in reversed(k[2].messages) if m["role"] == "assistant") for k in kept],
            findings=findings, frame=pd.DataFrame({"messages": [k[2].messages for k in kept],
                                                   "tools": [k[2].tools for k in kept],
                                                   "record": [k[0] for k in kept]}),
        )  # fmt: skip

    def inspection_lengths(self, processor: Any, records: InspectionRecords) -> list[TokenLengths]:
        """Tokens of each record rendered with the chat template as in training (against
        model.max_length: the end is cut), and of its prompt before the first trained token
        (training refuses a record whose prompt leaves no room for one)."""
        frame = records.frame
        found = encode_conversations(processor, frame["messages"].tolist(), frame["record"].tolist(),
                                     source=records.source, max_length=math.inf, chat_template=self.chat_template,
                                     loss_on="completion", tools=frame["tools"].tolist()
                                     ).features if len(frame) else []  # fmt: skip
        prompts = [next((i for i, label in enumerate(f["labels"]) if label != IGNORE), len(f["labels"])) for f in found]
        return [
            TokenLengths("record", [len(f["input_ids"]) for f in found], self.max_length,
                         "cut to model.max_length: the end of its completion is not learned"),
            TokenLengths("prompt", prompts, self.max_length - 1,
                         "leaves no completion token within model.max_length: training refuses the file", "error"),
        ]  # fmt: skip


def record_finding(error: TunesmithError, number: int, where: str, *, drop_empty: bool) -> Finding:
    """A record ``to_messages`` refused, as an inspect finding: an empty one is dropped with
    data.clean.drop_empty (a warning) and refused without; a malformed one is refused."""
    detail = error_detail(error, where)
    if not isinstance(error, EmptyRecord):
        return Finding("malformed record", number, where, detail, "error", "training refuses the file")
    if drop_empty:
        return Finding("empty record", number, where, detail, "warning", "training drops it (data.clean.drop_empty)")
    return Finding("empty record", number, where, detail, "error",
                   "training refuses the file (data.clean.drop_empty=false)")  # fmt: skip


@torch.no_grad()
def perplexity_metrics(model, features: list[dict], batch_size: int, losses_of) -> dict[str, Any]:
    """Mean loss per trained token over length-sorted batches, and its perplexity.

    Args:
        losses_of: a list of features -> the per-token losses of their trained tokens.
    """
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for indices in eval_batches([len(f["input_ids"]) for f in features], batch_size=batch_size):
        losses = losses_of([features[i] for i in indices])
        total, tokens = total + float(losses.sum()), tokens + losses.numel()
    model.train(was_training)
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}


# -- generation ---------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], settings, *, device="cpu", progress=None) -> list[str]:
    """Completions for prompt texts (already rendered with the chat template), in order.

    Prompts are batched by length and left-padded; generation stops at the tokenizer's EOS.
    """
    was_training = model.training
    model.eval()
    pad_id = pad_token_id(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=tokenizer.chat_template is None)["input_ids"] for p in prompts]
    out: list[str] = [""] * len(prompts)
    options = {
        "max_new_tokens": settings.max_new_tokens,
        "num_beams": settings.num_beams,
        "do_sample": settings.do_sample,
    }
    if settings.do_sample:
        options |= {"temperature": settings.temperature, "top_p": settings.top_p}
    for indices in eval_batches([len(e) for e in encoded], batch_size=settings.batch_size):
        longest = max(len(encoded[i]) for i in indices)
        ids = torch.tensor([[pad_id] * (longest - len(encoded[i])) + encoded[i] for i in indices], device=device)
        mask = torch.tensor([[0] * (longest - len(encoded[i])) + [1] * len(encoded[i]) for i in indices], device=device)
        generated = model.generate(
            input_ids=ids, attention_mask=mask, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, **options
        )
        for row, i in enumerate(indices):
            out[i] = tokenizer.decode(generated[row, longest:], skip_special_tokens=True).strip()
        if progress is not None:
            progress(len(indices))
    model.train(was_training)
    return out


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    ends = [text.find(s) for s in stop if s and s in text]
    return (text[: min(ends)], True) if ends else (text, False)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], sampling: Sampling) -> list[Completion]:
    """Completions of rendered prompts generated together in one left-padded batch (the KV
    cache of transformers' ``generate``), in order; greedy decoding gives what ``generate``
    gives for the same prompt alone."""
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    was_training = model.training
    model.eval()
    device, pad = model_device(model), pad_token_id(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=tokenizer.chat_template is None)["input_ids"] for p in prompts]
    longest = max(len(e) for e in encoded)
    ids = torch.tensor([[pad] * (longest - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (longest - len(e)) + [1] * len(e) for e in encoded], device=device)
    generated = model.generate(input_ids=ids, attention_mask=mask, **sampling.options(pad, tokenizer.eos_token_id))
    model.train(was_training)
    found = []
    for row, prompt_ids in zip(generated[:, longest:].tolist(), encoded):
        ended = tokenizer.eos_token_id in row
        row = row[: row.index(tokenizer.eos_token_id)] if ended else row
        text, stopped = cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), sampling.stop)
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if stopped else len(row)
        found.append(Completion(text.strip(), len(prompt_ids), tokens,
                                "stop" if ended or stopped else "length"))  # fmt: skip
    return found


def stream(model, tokenizer, prompt: str, sampling: Sampling, run: Callable[[Callable[[], Any]], Any]):
    """The completion of one prompt as text pieces while it is generated (a transformers
    ``TextIteratorStreamer``); ``run(work)`` runs the generation (the server's model thread).

    Yields:
        Pieces of text; joined and stripped, they are ``complete``'s text for the same prompt.
    """
    from transformers import TextIteratorStreamer

    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids = tokenizer(prompt, add_special_tokens=tokenizer.chat_template is None, return_tensors="pt")
    device = model_device(model)

    def work():
        with torch.no_grad():
            model.generate(input_ids=ids["input_ids"].to(device), attention_mask=ids["attention_mask"].to(device),
                           streamer=streamer, **sampling.options(pad_token_id(tokenizer), tokenizer.eos_token_id))  # fmt: skip

    run(work)
    return streamer


def example_scores(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-example ROUGE-1/2/L F1 (rouge-score, stemmed) and exact match (case and whitespace ignored)."""
    from rouge_score import rouge_scorer

    kinds = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    found = {kind: np.asarray([s[kind].fmeasure for s in scores], dtype=float) for kind in kinds}
    found["exact_match"] = np.asarray(
        [" ".join(p.split()).lower() == " ".join(r.split()).lower() for p, r in zip(predictions, references)],
        dtype=float,
    )
    return found


def generation_metrics(
    predictions: list[str], references: list[str], *, scores: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (rouge-score, stemmed), corpus BLEU and chrF (sacrebleu), and exact
    match (case and whitespace ignored).

    Args:
        scores: the ``example_scores`` of these predictions, when the caller has them already.
    """
    import sacrebleu

    scores = example_scores(predictions, references) if scores is None else scores
    mean = {kind: float(values.mean()) if len(values) else 0.0 for kind, values in scores.items()}
    return {
        **{kind: mean[kind] for kind in ("rouge1", "rouge2", "rougeL")},
        "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score),
        "exact_match": mean["exact_match"],
        "generated": len(predictions),
    }


def rows_to_generate(
    frame: pd.DataFrame, settings: GenerationConfig, context: ScoreContext
) -> tuple[pd.DataFrame, Path]:
    """The first generation.max_examples rows of a split (generation is slow), and where their
    generations go; says how many it generates for (``context.log`` names the split)."""
    rows = frame.iloc[: settings.max_examples or len(frame)]
    context.log(f"generating for {len(rows)} records")
    return rows, context.artifact("generations", ".jsonl")


def report_generations(path: Path, records: list[int], prompts: list[str], references: list[str],
                       predictions: list[str], context: ScoreContext) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """Generation metrics with bootstrap intervals of the per-example ones (ROUGE, exact match;
    BLEU and chrF are corpus scores), and every generation written to ``path`` as JSONL; with
    the per-example scores (``example_scores``)."""
    scores = example_scores(predictions, references)
    metrics: dict[str, Any] = generation_metrics(predictions, references, scores=scores)
    settings = context.evaluation
    intervals = bootstrap_means(scores, samples=settings.bootstrap_samples, level=settings.confidence_level,
                                seed=context.seed)  # fmt: skip
    if intervals:
        metrics |= {"confidence_intervals": intervals, "confidence_level": settings.confidence_level}
    lines = [json.dumps({"record": int(r), "prompt": p, "reference": ref, "generated": g}, ensure_ascii=False)
             for r, p, ref, g in zip(records, prompts, references, predictions)]  # fmt: skip
    atomic_write(path, "".join(line + "\n" for line in lines))
    return metrics, scores


def generation_predictions(inputs: list[str], references: list[str], predictions: list[str],
                           scores: dict[str, np.ndarray]) -> Predictions:  # fmt: skip
    """A split's per-row predictions from its generations, which cover its first
    ``len(predictions)`` rows (generation.max_examples, on one split): the prompt or source, the
    reference, the generated text, its ROUGE-1/2/L (``scores``) and ROUGE-L as the row's metric;
    rows not generated for have no prediction."""
    count, total = len(predictions), len(inputs)
    rouge = [[float(scores[k][i]) for k in ("rouge1", "rouge2", "rougeL")] for i in range(count)]
    rows = pd.DataFrame({"row": np.arange(total), "input": inputs, "gold": references,
                         "predicted": list(predictions) + [None] * (total - count),
                         "scores": rouge + [[] for _ in range(total - count)], "confidence": np.nan,
                         "row_metric": [r[2] for r in rouge] + [np.nan] * (total - count)})  # fmt: skip
    return Predictions(rows, metric="rougeL", higher_is_better=True, mean_of="rougeL")


def generation_limitation(max_length: int, truncated_train: int) -> str:
    """The model card's limitation for a generative model: cut inputs and reference-based scores."""
    return (
        f"Inputs longer than {max_length} tokens were cut ({truncated_train} in training). Generation metrics "
        "(ROUGE-L, BLEU, chrF, exact match) compare wording with one reference; a correct answer phrased "
        "differently scores low. Read generations_test.jsonl before trusting the model. It can state "
        "falsehoods fluently."
    )


def model_device(model) -> torch.device:
    """Where the model's weights are (generation puts its inputs there)."""
    return next(model.parameters()).device
