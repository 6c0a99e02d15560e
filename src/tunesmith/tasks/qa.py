"""Extractive question answering: the answer is a span of the context.

Input (detected by the file name, or the spec):
- SQuAD JSON (``.json``, v1.1 or v2.0): ``data[].paragraphs[].{context, qas[]}``, each question
  with ``answers[{text, answer_start}]`` and, in v2.0, ``is_impossible``;
- flat JSONL: one ``{"question", "context", "answers"}`` record per line, ``answers`` as
  ``{"text": [...], "answer_start": [...]}`` or a list of ``{text, answer_start}`` (an empty
  list: no answer); ``answer_start`` may be left out, and the text is then looked up;
- a Hugging Face datasets source (``hf:ID[:CONFIG]:SPLIT``, a save_to_disk folder, an ``.arrow``
  file) in SQuAD's Hub layout: columns ``question``, ``context``, ``answers`` as above, ``id``.

Every answer must be found in its context at its offset; the error names the file and the
question. Contexts longer than the model's window are cut into overlapping windows
(``task.doc_stride`` tokens of overlap); a window that does not hold the whole answer learns to
point at the first token ([CLS]), as for a question with no answer. Predictions take the
``task.n_best`` best start and end tokens of every window, keep spans of at most
``task.max_answer_length`` tokens, and pick the best-scoring span over all windows; with
unanswerable questions in training, the empty answer wins when its score beats the best span
by ``task.no_answer_threshold``. Metrics are SQuAD's exact match and token F1.
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tunesmith.data.load import (
    JSON_NUL_HINT,
    NUL_HINT,
    control_character_error,
    control_character_note,
    jsonl_records,
    parse_json,
    record_error,
    refuse_nul,
    scrub,
)
from tunesmith.errors import TunesmithError
from tunesmith.models.load import load_trained_model, pad_token_id, text_processor
from tunesmith.tasks.confidence import bootstrap_means
from tunesmith.tasks.contract import CHAT_NOTE, CardText, Encoded, ExportBatch, Predictions, ScoreContext, Watch
from tunesmith.tasks.inputs import per_token_export_batch
from tunesmith.tasks.monitoring import pooled

if TYPE_CHECKING:
    from tunesmith.config import Config, DataConfig
    from tunesmith.data.prepare import PreparedData
    from tunesmith.data.quality import InspectionRecords, TokenLengths
    from tunesmith.models.load import ResolvedModel

QA_RECORD = '{"question": "...", "context": "...", "answers": {"text": [...], "answer_start": [...]}}'


# -- reading ----------------------------------------------------------------------------------------
def _row(question, context, texts, starts, *, qid: str, group: str, where: str,
         problems: list[tuple[str, str, str]] | None = None) -> dict:  # fmt: skip
    """One question's row; a bad question, context or answer is refused, or with ``problems``
    (inspect) appended there as (where, check, detail) and the row kept as given."""

    def refuse(check: str, detail: str) -> None:
        if problems is None:
            raise TunesmithError(f"{where}: {detail}")
        problems.append((where, check, detail))

    if not isinstance(question, str) or not question.strip():
        refuse("empty question", "needs a non-empty 'question' string")
    if not isinstance(context, str) or not context.strip():
        refuse("empty context", "needs a non-empty 'context' string")
    question, context = str(question or ""), str(context or "")
    found = []
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            refuse("empty answer", f"answer {text!r} is not a non-empty string")
        elif start is None:
            start = context.find(text)
            if start < 0:
                refuse("answer not in context", f"answer {text!r} is not found in its context")
        elif not isinstance(start, int) or context[start : start + len(text)] != text:
            seen = context[start : start + len(text)] if isinstance(start, int) else None
            refuse("answer not in context", f"answer {text!r} is not in its context at answer_start={start!r} "
                                            f"(the context there reads {seen!r})")  # fmt: skip
        found.append(start)
    return {"id": qid, "question": question.strip(), "context": context, "answers": list(texts),
            "starts": found, "group": group, "where": where}  # fmt: skip


def read_squad(path: Path, counts: Counter | None = None, places: list[str] | None = None,
               problems: list[tuple[str, str, str]] | None = None) -> list[dict]:  # fmt: skip
    """One row per question of a SQuAD v1.1/v2.0 file; ``group`` is the paragraph. With
    ``problems`` (inspect), a bad question or answer is listed there instead of refused (``_row``).

    As in every other reader, control characters in contexts, questions, ids and answers become
    spaces, one for one so that answer offsets stay right (counted per character in ``counts``,
    with the paragraph or question appended to ``places``).

    Raises:
        TunesmithError: not UTF-8 or not JSON, NaN or Infinity (not JSON), a NUL (naming the
            article, paragraph and question), or a record that does not fit SQuAD's shape.
    """
    counts = Counter() if counts is None else counts
    places = [] if places is None else places
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TunesmithError(f"{path}: not UTF-8 text (offset {error.start})") from None
    try:
        document = parse_json(text, str(path), problem="not a SQuAD JSON file")
    except TunesmithError:
        refuse_nul(text, str(path))  # NUL bytes between values, or a UTF-16 file: say that instead
        raise

    nul_hint = NUL_HINT if "\0" in text else JSON_NUL_HINT  # raw NUL bytes, or \u0000 escapes

    def clean(value, where: str, key: str, place: str):
        value, found = scrub(value)
        if found.get("\0"):
            raise control_character_error(f"{where}, key {key!r}", "\0", nul_hint)
        if found:
            counts.update(found)
            if place not in places:
                places.append(place)
        return value

    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise TunesmithError(f"{path}: a SQuAD file needs a top-level 'data' list of articles")
    rows = []
    for a, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs", []) if isinstance(article, dict) else None
        if not isinstance(paragraphs, list) or not all(
            isinstance(p, dict)
            and isinstance(p.get("qas", []), list)
            and all(isinstance(q, dict) for q in p.get("qas", []))
            for p in paragraphs
        ):  # a list or number where SQuAD has an object would end in an AttributeError
            raise TunesmithError(
                f'{path}, article {a + 1}: expected {{"paragraphs": [{{"context": ..., '
                '"qas": [{...}]}]}, with an object for each article, paragraph and question'
            )
        for p, paragraph in enumerate(paragraphs):
            place = f"article {a + 1} paragraph {p + 1}"
            context = clean(paragraph.get("context"), f"{path}, {place}", "context", place)
            for q, qa in enumerate(paragraph.get("qas", [])):
                qid = str(clean(qa.get("id", f"{a}.{p}.{q}"), f"{path}, {place} question {q + 1}", "id", place))
                where = f"{path}, {place} question {qid}"
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                if not isinstance(answers, list) or any(not isinstance(x, dict) for x in answers):
                    raise TunesmithError(f"{where}: 'answers' must be a list of {{text, answer_start}}")
                question = clean(qa.get("question"), where, "question", f"question {qid}")
                texts = clean([x.get("text") for x in answers], where, "answers", f"question {qid}")
                rows.append(_row(question, context, texts, [x.get("answer_start") for x in answers], qid=qid,
                                 group=f"{a}.{p}", where=where, problems=problems))  # fmt: skip
    return rows


def _plain(value: Any) -> Any:
    """A numpy array or number (how a datasets source gives Arrow lists and numbers) as Python's."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def answer_lists(answers: Any, where: str) -> tuple[list, list]:
    """(texts, answer_starts) of a record's ``answers``: ``{text: [...], answer_start: [...]}``
    (starts may be left out: None, looked up later) or a list of ``{text, answer_start}``.

    Raises:
        TunesmithError: another shape, or not as many starts as texts, naming ``where``.
    """
    answers = _plain(answers)
    if isinstance(answers, dict):
        texts = _plain(answers.get("text", []))
        starts = _plain(answers.get("answer_start", [None] * len(texts) if isinstance(texts, list) else None))
    elif isinstance(answers, list) and all(isinstance(x, dict) for x in answers):
        texts, starts = [x.get("text") for x in answers], [_plain(x.get("answer_start")) for x in answers]
    else:
        raise TunesmithError(f"{where}: 'answers' must be {{text: [...], answer_start: [...]}} or a list")
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise TunesmithError(f"{where}: 'answers' needs as many answer_start values as texts")
    return texts, starts


def read_qa_jsonl(path: Path, counts: Counter | None = None, lines: list[int] | None = None,
                  problems: list[tuple[str, str, str]] | None = None) -> list[dict]:  # fmt: skip
    """One row per line of a flat question/context/answers JSONL file; ``group`` is the context.
    Control characters become spaces (counted in ``counts``, their lines in ``lines``); with
    ``problems``, bad questions and answers are listed there (``_row``)."""
    rows = []
    for where, record in jsonl_records(path, counts=counts, lines=lines):
        if not isinstance(record, dict):
            raise record_error(where, record, QA_RECORD)
        texts, starts = answer_lists(record.get("answers", []), where)
        rows.append(_row(record.get("question"), record.get("context"), texts, starts,
                         qid=str(record.get("id", where.rsplit(" ", 1)[-1])), group=str(record.get("context")),
                         where=where, problems=problems))  # fmt: skip
    return rows


def read_dataset_questions(spec: str, problems: list[tuple[str, str, str]] | None = None) -> tuple[list[dict], dict]:
    """One row per question of a Hugging Face datasets source (``hf:``, save_to_disk,
    ``.arrow``) in SQuAD's Hub layout: ``question``, ``context``, ``answers`` ({text: [...],
    answer_start: [...]}; empty lists: no answer) and ``id`` when there is one; ``group`` is the
    context. A question is named by its row (and id); ``problems`` as in ``_row``.

    Returns:
        The rows and the source's manifest entry (what the source was; no cleaning counts).

    Raises:
        TunesmithError: a missing column, or a bad question or answer, naming the source and row.
    """
    from tunesmith.data.load import read_table

    table = read_table(spec)  # Arrow strings are text already: no bytes to decode
    columns = list(table.frame.columns)
    missing = [c for c in ("question", "context", "answers") if c not in columns]
    if missing:
        raise TunesmithError(
            f"{table.source}: question_answering reads the columns question, context and answers ({{text: [...], "
            f"answer_start: [...]}}), and id when there is one (SQuAD's layout); missing {missing}; the columns "
            f"are {columns}"
        )
    rows = []
    for number, record in enumerate(table.frame.to_dict("records"), 1):
        qid = str(_plain(record["id"])) if record.get("id") is not None else str(number)
        where = f"{table.source}, row {number}" + (f" question {qid}" if "id" in columns else "")
        texts, starts = answer_lists(record["answers"], f"{where}, column 'answers'")
        rows.append(_row(record["question"], record["context"], texts, starts, qid=qid,
                         group=str(record["context"]), where=where, problems=problems))  # fmt: skip
    entry = {"source": table.source, "sha256": table.sha256, "format": table.dataset["format"],
             **table.manifest_fields()}  # fmt: skip
    return rows, entry


def read_questions(spec: str, config, problems: list[tuple[str, str, str]] | None = None
                   ) -> tuple[list[dict], dict]:  # fmt: skip
    """The questions of a SQuAD JSON file, a flat JSONL file or a datasets source, and the
    source's manifest entry (control characters replaced counted in it, with a note)."""
    from tunesmith.data.load import reads_through_datasets
    from tunesmith.runs import sha256_file

    if reads_through_datasets(spec):
        return read_dataset_questions(spec, problems)
    path = Path(spec)
    if not path.is_file():
        raise TunesmithError(f"Data file not found: {path}")
    fmt = "squad" if path.suffix.lower() == ".json" else "jsonl"
    control, places = Counter(), []
    rows = (read_squad(path, control, places, problems) if fmt == "squad"
            else read_qa_jsonl(path, control, places, problems))  # fmt: skip
    entry = {"source": str(path), "sha256": sha256_file(path), "format": fmt, "replaced_characters": 0}
    count, notes = control_character_note(str(path), control, places, "lines" if fmt == "jsonl" else "")
    if count:
        entry["control_characters"], entry["notes"] = count, notes
    return rows, entry


def load_questions(spec: str, config) -> tuple[pd.DataFrame, dict]:
    """One table (id, question, context, answers, starts, group, where) for a file or a datasets
    source, and its manifest entry."""
    rows, entry = read_questions(spec, config)
    if not rows:
        raise TunesmithError(f"{entry['source']}: no questions found")
    frame = pd.DataFrame(rows)
    entry["cleaning"] = {"questions": len(frame), "contexts": int(frame["group"].nunique()),
                         "unanswerable": int((frame["answers"].map(len) == 0).sum())}  # fmt: skip
    return frame, entry


# -- windows and labels ---------------------------------------------------------------------------------
def answer_positions(offsets: list, sequence_ids: list, start_char: int, end_char: int) -> tuple[int, int]:
    """The first and last token of the answer ``[start_char, end_char)`` in one window, or (0, 0)
    when the window does not hold the whole answer."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(i for i in context if offsets[i][1] > start_char)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


def encode_questions(tokenizer, frame: pd.DataFrame, max_length: int, stride: int) -> tuple[list[dict], int]:
    """Windows over each context (features), labelled with the first answer's tokens. Returns the
    features and how many questions were cut to fit (at most half the window each)."""
    budget = max_length // 2
    questions, cut, longest = [], 0, 0
    for question in frame["question"]:
        ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        if len(ids) > budget:
            cut += 1
            question = tokenizer.decode(ids[:budget])
            ids = tokenizer(question, add_special_tokens=False)["input_ids"]  # decoding can re-tokenise longer
        questions.append(question)
        longest = max(longest, len(ids))
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)  # context tokens per window
    if stride >= room:
        raise TunesmithError(f"task.doc_stride={stride} must be below the room a window leaves for the context "
                             f"({room} tokens at model.max_length={max_length}); lower it or raise max_length")  # fmt: skip
    encoded = tokenizer(questions, frame["context"].tolist(), truncation="only_second", max_length=max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
    features = []
    answers, starts, contexts = frame["answers"].tolist(), frame["starts"].tolist(), frame["context"].tolist()
    for i, example in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        offsets = [list(o) if s == 1 else None for o, s in zip(encoded["offset_mapping"][i], sequence_ids)]
        if len(answers[example]):
            start_char = int(starts[example][0])
            position = answer_positions(encoded["offset_mapping"][i], sequence_ids, start_char,
                                        start_char + len(answers[example][0]))  # fmt: skip
        else:
            position = (0, 0)
        feature = {"input_ids": encoded["input_ids"][i], "offsets": offsets, "example": int(example),
                   "start_positions": position[0], "end_positions": position[1],
                   "context": contexts[example], "answers": list(answers[example])}  # fmt: skip
        if "token_type_ids" in encoded:
            feature["token_type_ids"] = encoded["token_type_ids"][i]
        features.append(feature)
    return features, cut


def collate_windows(features: list[dict], pad_token_id: int) -> dict:
    from tunesmith.data.batching import pad_batch

    keys = ("input_ids", "token_type_ids", "start_positions", "end_positions")  # not offsets, context, answers
    batch = pad_batch([{k: f[k] for k in keys if k in f} for f in features], pad_token_id)
    batch["num_examples"], batch["num_tokens"] = len(features), int(batch["attention_mask"].sum())
    return batch


# -- answers from logits ---------------------------------------------------------------------------------
def best_answer(windows: list[tuple[np.ndarray, np.ndarray, list]], context: str, *, n_best: int,
                max_answer_length: int, allow_no_answer: bool, no_answer_threshold: float = 0.0) -> dict:  # fmt: skip
    """The answer to one question from its windows' (start logits, end logits, offsets), where
    offsets are (char start, char end) for context tokens and None elsewhere.

    Spans are scored start + end logit; the same characters found in two overlapping windows
    count once, at their best score. The no-answer score is the smallest [CLS] start + end
    over the windows. ``score`` is the softmax probability of the returned answer among the
    ``n_best`` best spans (and no answer, when allowed).
    """
    spans: dict[tuple[int, int], float] = {}
    null = None
    for start_logits, end_logits, offsets in windows:
        null = min(null, start_logits[0] + end_logits[0]) if null is not None else start_logits[0] + end_logits[0]
        context_tokens = np.asarray([i for i, o in enumerate(offsets) if o is not None], dtype=int)
        if not len(context_tokens):
            continue
        starts = context_tokens[np.argsort(-start_logits[context_tokens], kind="stable")[:n_best]]
        ends = context_tokens[np.argsort(-end_logits[context_tokens], kind="stable")[:n_best]]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                span = (offsets[s][0], offsets[e][1])
                score = float(start_logits[s] + end_logits[e])
                if score > spans.get(span, -np.inf):
                    spans[span] = score
    ranked = sorted(spans.items(), key=lambda item: -item[1])[:n_best]
    candidates = [{"text": context[s:e], "start": int(s), "end": int(e), "logit": v} for (s, e), v in ranked]
    if allow_no_answer or not candidates:
        candidates.append({"text": "", "start": None, "end": None, "logit": float(null if null is not None else 0.0),
                           "no_answer": True})  # fmt: skip
    logits = np.asarray([c["logit"] for c in candidates])
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    best = 0
    if allow_no_answer and ranked and candidates[-1]["logit"] > ranked[0][1] + no_answer_threshold:
        best = len(candidates) - 1
    choice = candidates[best]
    return {"text": choice["text"], "start": choice["start"], "end": choice["end"],
            "score": round(float(probabilities[best]), 6), "no_answer": bool(choice.get("no_answer", False))}  # fmt: skip


# -- SQuAD metrics -------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, gold: str) -> float:
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not truth:
        return float(predicted == truth)
    common = sum((collections.Counter(predicted) & collections.Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def question_scores(predictions: list[str], golds: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Each question's exact match and F1 (in [0, 1]), the best over its gold answers; a question
    without gold answers scores 1 only for the empty prediction."""
    exact, f1 = [], []
    for prediction, answers in zip(predictions, golds):
        answers = list(answers) or [""]
        exact.append(max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers))
        f1.append(max(_f1(prediction, a) for a in answers))
    return np.asarray(exact, dtype=float), np.asarray(f1, dtype=float)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> dict[str, Any]:
    """Mean exact match and F1 over the questions (``question_scores``); HasAns/NoAns parts when
    both occur."""
    exact_arr, f1_arr = question_scores(predictions, golds)
    out: dict[str, Any] = {"exact_match": float(exact_arr.mean()) if len(exact_arr) else 0.0,
                           "f1": float(f1_arr.mean()) if len(f1_arr) else 0.0, "count": len(exact_arr)}  # fmt: skip
    has = np.asarray([len(a) > 0 for a in golds], dtype=bool)
    if has.any() and not has.all():
        for name, mask in (("has_answer", has), ("no_answer", ~has)):
            out[name] = {"exact_match": float(exact_arr[mask].mean()), "f1": float(f1_arr[mask].mean()),
                         "count": int(mask.sum())}  # fmt: skip
    return out


def answer_rows(records: list[dict], found: list[dict]) -> list[dict]:
    """Prediction rows: each record's question with its answer (``best_answer``): text,
    character offsets, score and whether it is the empty answer."""
    return [{"question": r["question"], "answer": a["text"], "start": a["start"], "end": a["end"], "score": a["score"],
             "no_answer": a["no_answer"]} for r, a in zip(records, found)]  # fmt: skip


@dataclass
class QuestionAnsweringTask:
    """Extractive QA (tasks.contract.Task): start/end cross-entropy, SQuAD EM and F1."""

    stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    no_answer_threshold: float = 0.0
    allow_no_answer: bool = False
    max_length: int = 384
    """model.max_length: tokens per window."""
    kind: ClassVar[str] = "question_answering"
    type: ClassVar[str] = "question_answering"
    stages: ClassVar[frozenset[str]] = frozenset(
        {"evaluate", "predict", "retrain", "cv", "inspect", "tune", "serve", "monitor", "export", "forgetting"}
    )
    peft_task_type: ClassVar[str | None] = "QUESTION_ANS"
    export_formats: ClassVar[frozenset[str]] = frozenset({"hf", "onnx"})
    quantization: ClassVar[str] = "dynamic"  # int8 weights; activation ranges measured per batch
    auto_class: ClassVar[str] = "AutoModelForQuestionAnswering"
    pipeline_tag: ClassVar[str] = "question-answering"
    calibrates: ClassVar[bool] = False
    stratify: ClassVar[bool] = False
    forgetting_probe: ClassVar[str | None] = "embedding"  # a probe on the encoder's features
    stage_notes: ClassVar[dict[str, str]] = {"chat": CHAT_NOTE}
    default_metric = ("f1", "max")
    metric_names = ["f1", "exact_match", "loss"]

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> QuestionAnsweringTask:
        """The task for a config's ``task`` section; a run's ``task.json`` says whether training
        had unanswerable questions."""
        task = config.task
        return cls(stride=task.doc_stride, n_best=task.n_best, max_answer_length=task.max_answer_length,
                   no_answer_threshold=task.no_answer_threshold,
                   allow_no_answer=bool((saved or {}).get("allow_no_answer", False)),
                   max_length=config.model.max_length)  # fmt: skip

    @property
    def label_names(self) -> list[str]:
        return []

    # -- data ------------------------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """Reads and splits the question files (whole paragraphs at a time), then learns whether
        training has unanswerable questions (``find_label_errors`` does not apply)."""
        from tunesmith.data.prepare import prepare_records

        data = prepare_records(config.data, seed=config.runtime.seed, load=self.read, inputs=self.overlap_inputs)
        self.fit(data.splits["train"])
        return data

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One file's questions (id, question, context, answers, starts, group, where) and its
        manifest entry; every answer is checked against its context."""
        return load_questions(spec, data)

    def fit(self, train: pd.DataFrame) -> None:
        """Whether the training questions include unanswerable ones (learned at the first token)."""
        self.allow_no_answer = bool((train["answers"].map(len) == 0).any())

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each row's question with its context: the same question on another paragraph is a new input."""
        return [f"{q}\n{c}" for q, c in zip(frame["question"], frame["context"])]

    def groups(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The paragraph (SQuAD) or context (JSONL) of each question: all questions on one
        context go to one fold, or the model would be tested on paragraphs it trained on."""
        return frame["group"].astype(str).to_numpy()

    def source_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """None: questions are read as records, not table rows."""
        return None

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """Flat JSONL records (id, question, context, answers with their offsets)."""
        path = directory / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for row in frame.itertuples(index=False):
                answers = {"text": list(row.answers), "answer_start": [int(s) for s in row.starts]}
                record = {"id": row.id, "question": row.question, "context": row.context, "answers": answers}
                out.write(json.dumps(record) + "\n")
        return path, {}

    # -- model -----------------------------------------------------------------------------------------
    def load_processor(self, resolved: ResolvedModel, *, trained: bool = False) -> Any:
        """The tokenizer, checked against model.max_length; a trained run's as saved."""
        return text_processor(resolved, max_length=self.max_length, trained=trained)

    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        from transformers import AutoModelForQuestionAnswering

        from tunesmith.models.load import load_with_head

        return load_with_head(AutoModelForQuestionAnswering, resolved, label_names=["start", "end"], dropout=dropout)

    def load_trained(self, model_dir: Path) -> Any:
        """A trained run's model (``auto_class``) from its ``model/`` directory."""
        return load_trained_model(self.auto_class, model_dir)

    # -- training --------------------------------------------------------------------------------------
    def encode_frame(self, tokenizer, frame: pd.DataFrame) -> tuple[list[dict], int]:
        """One table's windows and how many questions were cut to half a window."""
        if not getattr(tokenizer, "is_fast", False):
            raise TunesmithError("question answering needs a fast tokenizer (offset mappings)")
        if self.allow_no_answer and getattr(tokenizer, "cls_token_id", None) is None:
            raise TunesmithError("the training data has unanswerable questions, which are learned at the first "
                                 "token: that needs an encoder whose inputs start with a [CLS]-like token (this "
                                 "tokenizer has none); drop the unanswerable questions or use an encoder")  # fmt: skip
        return encode_questions(tokenizer, frame, self.max_length, self.stride)

    def encode(self, processor, splits: dict[str, pd.DataFrame]) -> Encoded:
        """Windows of every split, and a note per split with cut questions."""
        encoded = Encoded(features={}, truncated={})
        for name, frame in splits.items():
            encoded.features[name], cut = self.encode_frame(processor, frame)
            encoded.truncated[name] = cut
            if cut:
                encoded.notes.append(f"{name}: {cut} of {len(frame)} questions cut to {self.max_length // 2} tokens "
                                     "(half the window)")  # fmt: skip
        return encoded

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        return collate_windows(features, pad_token_id)

    def count(self, features: list[dict]) -> int:
        return len(features)

    def _logits(self, model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        out = model(**inputs)
        padding = batch["attention_mask"].to(device) == 0
        return (out.start_logits.float().masked_fill(padding, -1e4),
                out.end_logits.float().masked_fill(padding, -1e4))  # fmt: skip

    @staticmethod
    def _loss(start: torch.Tensor, end: torch.Tensor, batch: dict) -> torch.Tensor:
        """Mean of the start and end cross-entropies, summed over the windows."""
        return (F.cross_entropy(start, batch["start_positions"].to(start.device), reduction="sum")
                + F.cross_entropy(end, batch["end_positions"].to(end.device), reduction="sum")) / 2  # fmt: skip

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        return self._loss(*self._logits(model, batch, device), batch)

    @torch.no_grad()
    def window_logits(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device):
        """(start logits, end logits) per feature, and the summed loss."""
        from tunesmith.data.batching import eval_batches

        was_training = model.training
        model.eval()
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(features)
        total = 0.0
        for indices in eval_batches([len(f["input_ids"]) for f in features], batch_size=batch_size):
            batch = collate_windows([features[i] for i in indices], pad_token_id)
            start, end = self._logits(model, batch, device)
            total += float(self._loss(start, end, batch))
            start, end = start.cpu().numpy(), end.cpu().numpy()
            for row, i in enumerate(indices):
                n = len(features[i]["input_ids"])
                out[i] = (start[row, :n], end[row, :n])
        model.train(was_training)
        return out, total

    def answers(self, logits, features: list[dict]) -> list[dict]:
        """The best answer per question (in the order of the questions' first windows)."""
        grouped: dict[int, list] = {}
        for (start, end), f in zip(logits, features):
            grouped.setdefault(f["example"], []).append((start, end, f["offsets"], f))
        return [best_answer([(s, e, o) for s, e, o, _ in windows], windows[0][3]["context"], n_best=self.n_best,
                            max_answer_length=self.max_answer_length, allow_no_answer=self.allow_no_answer,
                            no_answer_threshold=self.no_answer_threshold) | {"gold": windows[0][3]["answers"]}
                for _, windows in sorted(grouped.items())]  # fmt: skip

    def _answered(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device):
        """Each question's answer, and the split's metrics (SQuAD scores, mean window loss)."""
        logits, total = self.window_logits(model, features, batch_size=batch_size, pad_token_id=pad_token_id,
                                           device=device)  # fmt: skip
        found = self.answers(logits, features)
        metrics = squad_scores([a["text"] for a in found], [a["gold"] for a in found])
        metrics["loss"] = total / max(len(features), 1)
        metrics["windows"] = len(features)
        return found, metrics

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> dict[str, Any]:
        """The loop's metrics: exact match, F1 and loss (the answers travel in the features)."""
        return self._answered(model, features, batch_size=batch_size, pad_token_id=pad_token_id, device=device)[1]

    # -- evaluation ------------------------------------------------------------------------------------
    def calibrate(self, model, processor, features: list[dict], *, batch_size: int, device) -> None:
        """No temperature: span scores are not calibrated probabilities."""
        return None

    def score(
        self, model, processor, frame: pd.DataFrame, features: list[dict], context: ScoreContext
    ) -> dict[str, Any]:
        """Exact match and F1 (with bootstrap intervals over questions), the has/no-answer parts,
        loss and window count (the answers travel in the features; ``frame`` gives the
        predictions' questions and contexts)."""
        found, metrics = self._answered(model, features, batch_size=context.batch_size,
                                        pad_token_id=pad_token_id(processor), device=context.device)  # fmt: skip
        exact, f1 = question_scores([a["text"] for a in found], [a["gold"] for a in found])
        context.predictions(self.split_predictions(frame, features, found, f1))
        evaluation = context.evaluation
        intervals = bootstrap_means({"exact_match": exact, "f1": f1}, samples=evaluation.bootstrap_samples,
                                    level=evaluation.confidence_level, seed=context.seed)  # fmt: skip
        if intervals:
            metrics["confidence_intervals"], metrics["confidence_level"] = intervals, evaluation.confidence_level
        return metrics

    def split_predictions(self, frame: pd.DataFrame, features: list[dict], found: list[dict],
                          f1: np.ndarray) -> Predictions:  # fmt: skip
        """Per question (``found``: :meth:`answers` of the split's windows): the question and its
        context, the gold answers (empty: unanswerable), the answer ("" for no answer), its
        score (the confidence) and its F1."""
        rows = sorted({f["example"] for f in features})  # the order answers() gives the questions in
        questions, contexts = frame["question"].to_numpy()[rows], frame["context"].to_numpy()[rows]
        table = pd.DataFrame({"row": rows, "input": [f"{q}\n{c}" for q, c in zip(questions, contexts)],
                              "gold": [list(a["gold"]) for a in found], "predicted": [a["text"] for a in found],
                              "scores": [[float(a["score"])] for a in found],
                              "confidence": [float(a["score"]) for a in found], "row_metric": f1})  # fmt: skip
        return Predictions(table, metric="f1", higher_is_better=True, mean_of="f1")

    # -- prediction ------------------------------------------------------------------------------------
    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """Answers for ``{"question", "context"}`` records: text, character offsets, score
        (``answer_rows``)."""
        features = self.export_features(processor, inputs)
        found = self._answered(model, features, batch_size=32, pad_token_id=pad_token_id(processor),
                               device=next(model.parameters()).device)[0]  # fmt: skip
        return answer_rows(inputs, found)

    # -- export (tasks.contract.OnnxExportable) --------------------------------------------------------
    def export_features(self, processor: Any, inputs: list) -> list[dict]:
        """The windows of ``{"question", "context"}`` records, as training cuts contexts (several
        per record when its context is longer than a window; ``example`` says whose).

        Raises:
            TunesmithError: a record without a non-empty question and context, naming its position.
        """
        rows = []
        for number, record in enumerate(inputs, 1):
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record[k].strip()
                                                       for k in ("question", "context")):  # fmt: skip
                raise TunesmithError(f"input {number}: question answering needs non-empty 'question' and 'context'")
            rows.append({"question": record["question"], "context": record["context"], "answers": [], "starts": []})
        return self.encode_frame(processor, pd.DataFrame(rows))[0]

    def export_inputs(self, processor: Any, features: list[dict]) -> ExportBatch:
        """Token ids (and token types) of windows padded to the batch's longest; each row's output
        is its own tokens' start and end logits (``row_lengths``)."""
        return per_token_export_batch(processor, features)

    def export_output(self, output: Any) -> torch.Tensor:
        """Start and end logits stacked, [windows, tokens, 2]: one tensor for the graph's one output."""
        return torch.stack([output.start_logits, output.end_logits], dim=-1)

    def export_parity(self, reference: list[np.ndarray], candidate: list[np.ndarray],
                      features: list[dict]) -> dict[str, float]:  # fmt: skip
        """Questions whose best answer (span and no-answer, as ``predict`` picks it over all
        their windows) is the same (``label_agreement`` = ``answer_agreement``), and the largest
        logit difference over the windows."""
        from tunesmith.tasks.token_classification import max_difference

        def spans(logits: list[np.ndarray]) -> list[tuple]:
            found = self.answers([(row[:, 0], row[:, 1]) for row in logits], features)
            return [(a["text"], a["start"], a["end"], a["no_answer"]) for a in found]

        same = [a == b for a, b in zip(spans(reference), spans(candidate))]
        agreement = float(np.mean(same)) if same else 1.0
        return {"rows": len(same), "windows": len(reference), "max_logit_difference": max_difference(reference, candidate),
                "label_agreement": agreement, "answer_agreement": agreement}  # fmt: skip

    def export_description(self) -> dict[str, Any]:
        """An export reads token ids of question/context windows (the tokenizer's pair encoding)."""
        return {"inputs": f"token ids of question/context windows ({self.max_length} tokens, overlapping by "
                          f"{self.stride})", "text_normalisation": None}  # fmt: skip

    def rows_from_logits(self, inputs: list, features: list[dict], logits: list[np.ndarray], *,
                         temperature: float | None = None) -> list[dict]:  # fmt: skip
        """``predict``'s rows (``answer_rows``) from any backend's per-window start/end logits."""
        return answer_rows(inputs, self.answers([(row[:, 0], row[:, 1]) for row in logits], features))

    def read_inputs(self, path: Path) -> list:
        """The question/context records of a prediction input file: one per line of JSONL, or
        every question of a SQuAD JSON file (``predict`` checks each record)."""
        if path.suffix.lower() == ".json":
            frame, _ = load_questions(str(path), None)
            return frame[["question", "context"]].to_dict("records")
        if not path.is_file():
            raise TunesmithError(f"Input file not found: {path}")
        return [record for _, record in jsonl_records(path)]

    # -- shipping --------------------------------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The question-answering model's part of the model card."""
        source = manifest["sources"]["train"]
        return CardText(
            title="Extractive question-answering model",
            purpose="It answers a question with a span of the context it is given.",
            data=f"Format: {source.get('format')}; {source.get('cleaning')}.",
            limitation=f"Contexts longer than {max_length} tokens are read in windows overlapping by {self.stride} "
            f"tokens; questions are cut to {max_length // 2} tokens ({truncated_train} training questions were).",
            usage='`tunesmith predict RUN_DIR --question "..." --context "..."`.',
        )

    # -- monitoring (tunesmith monitor; tasks.contract.Monitored) ------------------------------------
    watches: ClassVar[tuple[Watch, ...]] = (
        Watch("no_answer_rate_increase", "increase", "no_answer_rate_increase", "questions answered 'no answer'"),
    )

    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """Each row's ``{"question", "context"}``."""
        return [{"question": q, "context": c} for q, c in zip(frame["question"], frame["context"])]

    def _monitored(self, inputs: list) -> list[tuple[str, str]]:
        """(question, context) of each input, refused as ``predict`` refuses it."""
        for number, record in enumerate(inputs, 1):
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("question", "context")):
                raise TunesmithError(f"input {number}: question answering needs 'question' and 'context' texts, "
                                     f"not {str(record)[:80]!r}")  # fmt: skip
        return [(record["question"], record["context"]) for record in inputs]

    def monitor_texts(self, inputs: list) -> list[str]:
        """Each question followed by its context."""
        return [f"{q} {c}" for q, c in self._monitored(inputs)]

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """The encoder's mean-pooled states over question and context, encoded together (the
        first window, when the context is longer)."""
        pairs = self._monitored(inputs)
        return pooled(model.base_model, processor, [q for q, _ in pairs], [c for _, c in pairs],
                      max_length=self.max_length)  # fmt: skip

    def watched_values(self, row: dict[str, Any]) -> dict[str, Any]:
        """Whether the answer is "no answer" (1) or a span (0)."""
        return {"no_answer_rate_increase": float(bool(row["no_answer"]))}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "label_names": [], "doc_stride": self.stride, "n_best": self.n_best,
                "max_answer_length": self.max_answer_length, "no_answer_threshold": self.no_answer_threshold,
                "allow_no_answer": self.allow_no_answer}  # fmt: skip

    # -- inspect ---------------------------------------------------------------------------------------
    def inspection_records(self, spec: str, data: DataConfig) -> InspectionRecords:
        """One file's questions for ``tunesmith inspect`` (data.quality.InspectedTask): question
        and context compared for duplicates and leakage, grouped by context, answered or not
        counted, and every answer that is not in its context (at its answer_start) as a finding
        (training refuses the file for it)."""
        from tunesmith.data.quality import Finding, InspectionRecords

        problems: list[tuple[str, str, str]] = []
        rows, entry = read_questions(spec, data, problems)
        number = {}
        for position, row in enumerate(rows, 1):
            number.setdefault(row["where"], position)
        findings = [Finding(check, number.get(where, 0), where, detail, "error",
                            "training refuses the file: correct the answer text or its answer_start")
                    for where, check, detail in problems]  # fmt: skip
        frame = pd.DataFrame(rows, columns=["id", "question", "context", "answers", "starts", "group", "where"])
        return InspectionRecords(
            source=entry["source"], rows=list(range(1, len(frame) + 1)), where=frame["where"].tolist(),
            texts=self.overlap_inputs(frame),
            targets=[" | ".join(map(str, a)) or "(no answer)" for a in frame["answers"]],
            labels=[["answer" if len(a) else "no answer"] for a in frame["answers"]], label_kind="answers",
            groups=frame["context"].tolist(), group_kind="context", findings=findings, frame=frame,
        )  # fmt: skip

    def inspection_lengths(self, processor: Any, records: InspectionRecords) -> list[TokenLengths]:
        """Tokens of question and context together (against the window), of the question
        (against half the window) and of the first answer (against task.max_answer_length)."""
        from tunesmith.data.quality import TokenLengths

        frame = records.frame
        questions, contexts = frame["question"].tolist(), frame["context"].tolist()
        answers = [str(a[0]) if len(a) else "" for a in frame["answers"]]

        def count(*texts, special: bool = True) -> list[int]:
            return [len(ids) for ids in processor(*texts, add_special_tokens=special)["input_ids"]] if questions else []

        return [
            TokenLengths("question + context", count(questions, contexts), self.max_length,
                         f"read in windows of model.max_length tokens overlapping by task.doc_stride={self.stride}"),
            TokenLengths("question", count(questions, special=False), self.max_length // 2,
                         "cut to half the window"),
            TokenLengths("answer", count(answers, special=False), self.max_answer_length,
                         "longer than task.max_answer_length: a prediction never spans the whole answer"),
        ]  # fmt: skip
