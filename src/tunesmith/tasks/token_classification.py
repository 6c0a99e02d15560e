"""Token classification: one tag per word; named entities scored by entity, or any per-token
tag set (part of speech, chunks) scored per token.

Input formats (``data.format``, or detected):
- ``conll``: ``token TAG`` per line (more columns are allowed; the tag is the last), a blank
  line between sentences, ``-DOCSTART-`` lines skipped;
- ``tokens``: JSONL records ``{"tokens": [...], "tags": [...]}``;
- ``spans``: JSONL records ``{"text": "...", "entities": [{"start": 0, "end": 4, "label": "PER"}]}``
  (character offsets, end exclusive); words are split on whitespace and punctuation, and the
  words an entity covers are tagged;
- a Hugging Face datasets source (``hf:ID[:CONFIG]:SPLIT``, a save_to_disk folder, an ``.arrow``
  file), read as a table: a tokens column (data.text_column, else ``tokens``) and a tags column
  (data.label_column, else ``tags`` or ``ner_tags``) of tag names or of Sequence(ClassLabel) ids,
  which read as their names (the layout of the Hub's CoNLL-2003).

Entity tags are read as IOB2 or BIOES (``task.tag_scheme`` says which the files use and which
the model trains with; the other is converted). A word's tag goes on its first subword, or on
all of them (``task.label_all_subwords``; then later subwords of a B- word get I-). Metrics are
seqeval's entity-level precision, recall and F1, overall and per entity type; predictions are
entity spans.

With ``task.tag_scheme=none`` every tag is a label of its own (NOUN, NNP, B-NP), read from conll
or tokens files: metrics are token accuracy and per-tag precision, recall and F1 (tasks.tagging),
and predictions are a tag per word.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tunesmith.errors import TunesmithError
from tunesmith.models.load import load_trained_model, pad_token_id, text_processor
from tunesmith.tasks.confidence import bootstrap_sums
from tunesmith.tasks.contract import CHAT_NOTE, CardText, Encoded, ExportBatch, Predictions, ScoreContext, Watch
from tunesmith.tasks.inputs import check_texts, per_token_export_batch, read_texts
from tunesmith.tasks.monitoring import pooled
from tunesmith.tasks.plots import plot_confusion_matrix
from tunesmith.tasks.tagging import INTERVAL_METRICS, tag_intervals, tag_metrics, token_rows

if TYPE_CHECKING:
    from tunesmith.config import Config, DataConfig
    from tunesmith.data.prepare import PreparedData
    from tunesmith.data.quality import Finding, InspectionRecords, TokenLengths
    from tunesmith.models.load import ResolvedModel

IGNORE = -100
WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


# -- tag schemes ------------------------------------------------------------------------------------
def _split(tag: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    prefix, _, kind = tag.partition("-")
    return prefix, kind or None


def check_tags(tags: list[str], scheme: str, where: str) -> None:
    """Raises TunesmithError naming ``where`` when a tag is not valid in ``scheme``."""
    allowed = {"iob2": {"B", "I"}, "bioes": {"B", "I", "E", "S"}}[scheme]
    for position, tag in enumerate(tags):
        prefix, kind = _split(tag)
        if prefix == "O":
            continue
        if prefix not in allowed or kind is None:
            raise TunesmithError(f"{where}: tag {tag!r} (word {position + 1}) is not a {scheme.upper()} tag "
                                 f"(expected O or {'/'.join(sorted(allowed))}-TYPE); for part-of-speech or other "
                                 "per-token tags set task.tag_scheme=none")  # fmt: skip


def fix_inside_starts(tags: list[str]) -> tuple[list[str], list[int]]:
    """IOB2 tags with every entity that starts with I- (after O, another type, or at the start)
    started with B- instead, and the word positions that were changed."""
    fixed, changed = list(tags), []
    for position, tag in enumerate(tags):
        prefix, kind = _split(tag)
        if prefix == "I" and (position == 0 or _split(tags[position - 1])[1] != kind):
            fixed[position] = f"B-{kind}"
            changed.append(position)
    return fixed, changed


def iob2_to_bioes(tags: list[str]) -> list[str]:
    out = []
    for i, tag in enumerate(tags):
        prefix, kind = _split(tag)
        if prefix == "O":
            out.append("O")
            continue
        following = _split(tags[i + 1]) if i + 1 < len(tags) else ("O", None)
        continues = following == ("I", kind)
        if prefix == "B" or (prefix == "I" and (i == 0 or _split(tags[i - 1])[1] != kind or tags[i - 1] == "O")):
            out.append(f"{'B' if continues else 'S'}-{kind}")
        else:
            out.append(f"{'I' if continues else 'E'}-{kind}")
    return out


def bioes_to_iob2(tags: list[str]) -> list[str]:
    out = []
    for tag in tags:
        prefix, kind = _split(tag)
        out.append("O" if prefix == "O" else f"{'B' if prefix in ('B', 'S') else 'I'}-{kind}")
    return out


# -- reading --------------------------------------------------------------------------------------------
def read_conll(path: Path) -> list[dict]:
    """Sentences of a CoNLL file; ``where`` names the line of the sentence's first word (the
    words follow on consecutive lines). In a file with ``-DOCSTART-`` lines, ``document`` counts
    the ones before the sentence (its document, for cv's folds).

    Raises:
        TunesmithError: not UTF-8, a line without a tag, or a control character (columns are
            split on whitespace, so replacing one could shift them), naming the line.
    """
    from tunesmith.data.load import CONTROL_CHARACTERS, NUL_HINT, control_character_error

    sentences, tokens, tags, first, documents = [], [], [], None, 0
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise TunesmithError(f"{path}: not UTF-8 text (offset {error.start})") from None
    for number, line in enumerate(lines + [""], 1):
        # Unlike the CSV/JSONL readers, which replace control characters by spaces, CoNLL refuses
        # them all: its columns are split on whitespace, so a space would split a token in two
        # (or turn "word\x1bB-PER" into a token and a tag) and change the data silently.
        bad = CONTROL_CHARACTERS.search(line)
        if bad:
            hint = NUL_HINT if bad.group() == "\0" else "Remove it: CoNLL columns are split on whitespace"
            raise control_character_error(f"{path}, line {number}", bad.group(), hint)
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags, "where": f"{path}, line {first}",
                                  "document": documents})  # fmt: skip
            tokens, tags, first = [], [], None
            documents += bool(parts)  # a -DOCSTART- line
            continue
        if len(parts) < 2:
            raise TunesmithError(f"{path}, line {number}: expected 'token TAG', got {line.strip()!r}")
        first = first or number
        tokens.append(parts[0])
        tags.append(parts[-1])
    if not documents:  # no documents marked: sentences stand alone
        for sentence in sentences:
            del sentence["document"]
    return sentences


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def _document(record: dict) -> dict:
    """A JSONL record's ``document`` (or ``doc_id``) field as text, for cv's folds; {} without one."""
    value = record.get("document", record.get("doc_id"))
    return {} if value is None else {"document": str(value)}


def _read_jsonl(path: Path, fmt: str, counts: Counter | None = None, lines: list[int] | None = None) -> list[dict]:
    from tunesmith.data.load import jsonl_records, record_error

    sentences = []
    for where, record in jsonl_records(path, counts=counts, lines=lines):
        if not isinstance(record, dict):
            example = '{"tokens": [...], "tags": [...]}' if fmt == "tokens" else '{"text": "...", "entities": [...]}'
            raise record_error(where, record, example)
        if fmt == "tokens":
            tokens, tags = record.get("tokens"), record.get("tags")
            if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags) or not tokens:
                raise TunesmithError(f"{where}: needs 'tokens' and 'tags' lists of the same non-zero length")
            sentences.append({"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags], "where": where,
                              **_document(record)})  # fmt: skip
            continue
        text, entities = record.get("text"), record.get("entities", [])
        if not isinstance(text, str) or not isinstance(entities, list):
            raise TunesmithError(f"{where}: needs a 'text' string and an 'entities' list")
        words = words_with_offsets(text)
        tags = ["O"] * len(words)
        for entity in entities:
            start, end, label = entity.get("start"), entity.get("end"), entity.get("label")
            if not (
                isinstance(start, int)
                and isinstance(end, int)
                and isinstance(label, str)
                and 0 <= start < end <= len(text)
            ):
                raise TunesmithError(f"{where}: entity {entity} needs integer start < end within the text and a label")
            covered = [i for i, (_, s, e) in enumerate(words) if s < end and e > start]
            if not covered or any(tags[i] != "O" for i in covered):
                raise TunesmithError(
                    f"{where}: entity {text[start:end]!r} ({start}-{end}) covers no word, or overlaps another"
                )
            for k, i in enumerate(covered):
                tags[i] = f"{'B' if k == 0 else 'I'}-{label}"
        sentences.append({"tokens": [w for w, _, _ in words], "tags": tags, "where": where, **_document(record)})
    return sentences


def detect_format(path: Path, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if path.suffix.lower() != ".jsonl":
        return "conll"
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        return "tokens"  # the reader names the offset
    for line in lines:
        if line.strip():
            try:
                record = json.loads(line, strict=False)
            except json.JSONDecodeError:
                return "spans"  # the reader names the line
            return "tokens" if isinstance(record, dict) and "tokens" in record else "spans"
    return "tokens"


def _word_where(sentence: dict, position: int, fmt: str) -> str:
    """Where a word is: its own line in a CoNLL file, else the record's line and word number."""
    if fmt == "conll":
        path, _, line = sentence["where"].rpartition(", line ")
        return f"{path}, line {int(line) + position}"
    return f"{sentence['where']} (word {position + 1})"


TAG_COLUMNS = ("tags", "ner_tags")
"""The tags column of a datasets source when data.label_column names none (the Hub's NER sets)."""


def _as_list(value: Any) -> list | None:
    """A list cell as a list (Arrow lists come as numpy arrays), or None for anything else."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else None


def read_dataset_sentences(spec: str, config) -> tuple[list[dict], dict]:
    """The sentences of a Hugging Face datasets source (``hf:``, save_to_disk, ``.arrow``): a
    tokens column (data.text_column, else ``tokens``) and a tags column (data.label_column, else
    ``tags`` or ``ner_tags``) of tag names, or of ClassLabel ids, which the table gives as names.
    Each sentence is named by its row; the manifest entry says what the source was.

    Raises:
        TunesmithError: a missing column, tag ids without names, or a row whose tokens and tags
            are not lists of the same non-zero length, naming the source, row and column.
    """
    from tunesmith.data.load import read_table

    table = read_table(spec)  # Arrow strings are text already: no bytes to decode
    columns = list(table.frame.columns)
    tokens_column = config.text_column or "tokens"
    tags_column = config.label_column or next((c for c in TAG_COLUMNS if c in columns), None)
    if tokens_column not in columns or tags_column not in columns:
        raise TunesmithError(
            f"{table.source}: token_classification reads a tokens column ({tokens_column!r}, data.text_column) "
            f"and a tags column ({tags_column or ' or '.join(TAG_COLUMNS)}, data.label_column); the columns are "
            f"{columns}"
        )
    sentences = []
    for number, (tokens, tags) in enumerate(zip(table.frame[tokens_column], table.frame[tags_column]), 1):
        where = f"{table.source}, row {number}"
        tokens, tags = _as_list(tokens), _as_list(tags)
        if not tokens or tags is None or len(tokens) != len(tags):
            raise TunesmithError(f"{where}: columns {tokens_column!r} and {tags_column!r} need lists of the same "
                                 "non-zero length")  # fmt: skip
        named = [t for t in tags if isinstance(t, str)]
        if len(named) != len(tags):
            bad = next(t for t in tags if not isinstance(t, str))
            raise TunesmithError(
                f"{where}, column {tags_column!r}: tag {bad!r} is not a tag name; a tags column holds names, or "
                "ClassLabel ids whose names the dataset's features give (Sequence(ClassLabel(names=[...])))"
            )
        # A tag's errors name its column: tag checks add the word to ``where``.
        sentences.append(
            {"tokens": [str(t) for t in tokens], "tags": named, "where": f"{where}, column {tags_column!r}"}
        )
    entry = {"source": table.source, "sha256": table.sha256, "format": table.dataset["format"],
             **table.manifest_fields(), "columns": {"tokens": tokens_column, "tags": tags_column}}  # fmt: skip
    return sentences, entry


def _read_file_sentences(spec: str, config) -> tuple[list[dict], str, dict]:
    """The sentences of a conll, tokens or spans file, their format, and the file's manifest
    entry (control characters replaced in JSONL strings counted in it, with a note)."""
    from tunesmith.data.load import control_character_note
    from tunesmith.runs import sha256_file

    path = Path(spec)
    if not path.is_file():
        raise TunesmithError(f"Data file not found: {path}")
    wanted = config.format if config.format in ("conll", "tokens", "spans") else "auto"
    fmt = detect_format(path, wanted)
    control: Counter = Counter()
    control_lines: list[int] = []
    sentences = read_conll(path) if fmt == "conll" else _read_jsonl(path, fmt, control, control_lines)
    entry = {"source": str(path), "sha256": sha256_file(path), "format": fmt, "replaced_characters": 0}
    count, notes = control_character_note(str(path), control, control_lines, "lines")
    if count:
        entry["control_characters"], entry["notes"] = count, notes
    return sentences, fmt, entry


def read_sentences(spec: str, config) -> tuple[list[dict], str, dict]:
    """(sentences, format, manifest entry) of a file or a datasets source; a datasets source
    reads as tokens records (``tokens``)."""
    from tunesmith.data.load import reads_through_datasets

    if reads_through_datasets(spec):
        sentences, entry = read_dataset_sentences(spec, config)
        return sentences, "tokens", entry
    return _read_file_sentences(spec, config)


def load_sentences(spec: str, config, scheme: str, invalid_tags: str = "convert") -> tuple[pd.DataFrame, dict]:
    """One table (tokens, tags, where) for a file or a datasets source, in the training tag scheme.

    Args:
        invalid_tags: an IOB2 entity that starts with I- is started with B- and counted, with a
            note naming the lines ("convert"), or refused with its line ("error").

    Raises:
        TunesmithError: a missing or malformed source, a tag outside the scheme, naming the line
            (the row, for a datasets source).
    """
    sentences, fmt, entry = read_sentences(spec, config)
    source = entry["source"]
    if not sentences:
        raise TunesmithError(f"{source}: no sentences found")
    if scheme == "none" and fmt == "spans":
        raise TunesmithError(f"{source}: a spans file (entities with character offsets) gives entity tags, and "
                             "task.tag_scheme=none reads conll or tokens files; set task.tag_scheme=iob2")  # fmt: skip
    # Plain per-token tags are taken as they are: any tag is a label of its own.
    converted = [] if scheme == "none" else entity_tags(sentences, fmt, scheme, invalid_tags)
    frame = pd.DataFrame(sentences)
    cleaning = {"sentences": len(frame), "words": int(frame["tokens"].map(len).sum())}
    notes = []
    if converted:
        cleaning["inside_starts_converted"] = len(converted)
        more = f" and {len(converted) - 5} more" if len(converted) > 5 else ""
        notes.append(f"{len(converted)} entities started with I- instead of B- and were converted to B- "
                     f"({'; '.join(converted[:5])}{more}); task.invalid_tags=error refuses such files")  # fmt: skip
    if entry.get("control_characters"):
        cleaning["control_characters"] = entry.pop("control_characters")
    notes += entry.pop("notes", [])
    entry["cleaning"] = cleaning
    if notes:
        entry["notes"] = notes
    return frame, entry


def entity_tags(sentences: list[dict], fmt: str, scheme: str, invalid_tags: str) -> list[str]:
    """Checks each sentence's tags and puts them in the training ``scheme`` (in place): files carry
    task.tag_scheme, except spans (always IOB2). Returns where the IOB2 entities that started
    with I- were (started with B- instead).

    Raises:
        TunesmithError: a tag outside the scheme, or with ``invalid_tags="error"`` an entity that
            starts with I-, naming the line.
    """
    source_scheme = "iob2" if fmt == "spans" else scheme
    converted: list[str] = []
    for sentence in sentences:
        check_tags(sentence["tags"], source_scheme, sentence["where"])
        if source_scheme == "iob2":
            fixed, changed = fix_inside_starts(sentence["tags"])
            if changed and invalid_tags == "error":
                tag = sentence["tags"][changed[0]]
                raise TunesmithError(
                    f"{_word_where(sentence, changed[0], fmt)}: tag {tag!r} starts an entity, but IOB2 starts "
                    f"every entity with B- (B-{tag[2:]}); fix the file, or set task.invalid_tags=convert to start "
                    "such entities with B-"
                )
            converted += [_word_where(sentence, p, fmt) for p in changed]
            sentence["tags"] = fixed
        if source_scheme != scheme:
            sentence["tags"] = iob2_to_bioes(sentence["tags"]) if scheme == "bioes" else bioes_to_iob2(sentence["tags"])
    return converted


# -- encoding -------------------------------------------------------------------------------------------
def align(word_ids: list[int | None], word_tags: list[int], tag_names: list[str], *, all_subwords: bool,
          plain: bool = False) -> list[int]:  # fmt: skip
    """Subword labels from word labels: the first subword of each word gets its tag; later
    subwords get IGNORE, or with ``all_subwords`` the inside tag of the word's type (I-TYPE
    after a B-, S- or E- first subword; O and I- stay), or with ``plain`` tags (tag_scheme=none)
    the word's own tag. Metrics always read the first subword."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(word_tags[word])
        elif all_subwords and (plain or word_tags[word] == IGNORE):
            labels.append(word_tags[word])
        elif all_subwords:
            tag = tag_names[word_tags[word]]
            prefix, kind = _split(tag)
            inner = f"I-{kind}" if prefix in ("B", "S", "E") else tag
            labels.append(tag_names.index(inner) if inner in tag_names else word_tags[word])
        else:
            labels.append(IGNORE)
        previous = word
    return labels


def encode_sentences(tokenizer, frame: pd.DataFrame, tag_names: list[str], max_length: int, *,
                     all_subwords: bool, plain: bool = False) -> tuple[list[dict], int]:  # fmt: skip
    """Features per sentence (input ids, labels, word ids) and how many were truncated. A tag
    outside ``tag_names`` trains as O, or with ``plain`` tags (tag_scheme=none, no O) not at all."""
    index = {t: i for i, t in enumerate(tag_names)}
    unknown = IGNORE if plain else index.get("O", 0)
    features, truncated = [], 0
    for tokens, tags in zip(frame["tokens"], frame["tags"]):
        encoded = tokenizer(list(tokens), is_split_into_words=True, truncation=True, max_length=max_length)
        word_ids = encoded.word_ids()
        seen = {w for w in word_ids if w is not None}
        truncated += len(seen) < len(tokens)
        word_tags = [index.get(t, unknown) for t in tags]
        labels = align(word_ids, word_tags, tag_names, all_subwords=all_subwords, plain=plain)
        feature = {"input_ids": encoded["input_ids"], "labels": labels,
                   "word_ids": [-1 if w is None else w for w in word_ids], "words": len(tokens)}  # fmt: skip
        if "token_type_ids" in encoded:
            feature["token_type_ids"] = encoded["token_type_ids"]
        features.append(feature)
    return features, truncated


def collate_tokens(features: list[dict], pad_token_id: int) -> dict:
    from tunesmith.data.batching import pad_batch

    keys = ("input_ids", "token_type_ids", "labels")
    batch = pad_batch([{k: f[k] for k in keys if k in f} for f in features], pad_token_id, fills={"labels": IGNORE})
    batch["num_examples"], batch["num_tokens"] = len(features), int(batch["attention_mask"].sum())
    return batch


def word_predictions(probabilities: np.ndarray, word_ids: list[int], words: int) -> tuple[list[int], list[float]]:
    """Each word's tag id and probability, read at its first subword (words cut off by
    truncation get O's id 0 with probability 0)."""
    tags, scores, seen = [0] * words, [0.0] * words, set()
    for position, word in enumerate(word_ids):
        if word < 0 or word in seen or position >= len(probabilities):
            continue
        seen.add(word)
        tags[word], scores[word] = int(probabilities[position].argmax()), float(probabilities[position].max())
    return tags, scores


@dataclass
class TokenClassificationTask:
    """A tag per word (tasks.contract.Task): summed token cross-entropy; named entities (IOB2,
    BIOES) scored by entity with seqeval, or plain per-token tags (``scheme="none"``) scored per
    token (tasks.tagging)."""

    tag_names: list[str] = field(default_factory=list)
    scheme: str = "iob2"
    all_subwords: bool = False
    invalid_tags: str = "convert"
    """IOB2 entities that start with I-: "convert" (to B-, with a warning) or "error"."""
    max_length: int = 128
    """model.max_length: subwords per sentence."""
    kind: ClassVar[str] = "token_classification"
    type: ClassVar[str] = "token_classification"
    stages: ClassVar[frozenset[str]] = frozenset(
        {"evaluate", "predict", "retrain", "cv", "inspect", "tune", "serve", "monitor", "export", "forgetting"}
    )
    peft_task_type: ClassVar[str | None] = "TOKEN_CLS"
    export_formats: ClassVar[frozenset[str]] = frozenset({"hf", "onnx"})
    quantization: ClassVar[str] = "dynamic"  # int8 weights; activation ranges measured per batch
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"
    pipeline_tag: ClassVar[str] = "token-classification"
    calibrates: ClassVar[bool] = False
    stratify: ClassVar[bool] = False
    forgetting_probe: ClassVar[str | None] = "embedding"  # a probe on the encoder's features
    stage_notes: ClassVar[dict[str, str]] = {"chat": CHAT_NOTE}

    @property
    def plain(self) -> bool:
        """Plain per-token tags (tag_scheme=none): no entities; scored and predicted per word."""
        return self.scheme == "none"

    @property
    def default_metric(self) -> tuple[str, str]:
        """Entity F1; token accuracy for plain tags."""
        return ("accuracy", "max") if self.plain else ("f1", "max")

    @property
    def metric_names(self) -> list[str]:
        """Entity scores, or for plain tags the token accuracy and averaged per-tag scores."""
        if self.plain:
            return [*INTERVAL_METRICS, "weighted_precision", "weighted_recall", "loss"]
        return ["f1", "precision", "recall", "accuracy", "loss"]

    @classmethod
    def from_config(cls, config: Config, saved: dict[str, Any] | None = None) -> TokenClassificationTask:
        """The tagger for a config's ``task`` section, with the tag set of a run's ``task.json``."""
        task = config.task
        return cls(tag_names=list((saved or {}).get("label_names") or []), scheme=task.tag_scheme,
                   all_subwords=task.label_all_subwords, invalid_tags=task.invalid_tags,
                   max_length=config.model.max_length)  # fmt: skip

    @property
    def label_names(self) -> list[str]:
        return self.tag_names

    # -- data ------------------------------------------------------------------------------------------
    def prepare(self, config: Config, *, find_label_errors: Callable | None = None) -> PreparedData:
        """Reads and splits the sentence files, then fits the tag set on the training split
        (``find_label_errors`` does not apply to tags)."""
        from tunesmith.data.prepare import prepare_records

        data = prepare_records(config.data, seed=config.runtime.seed, load=self.read, inputs=self.overlap_inputs)
        self.fit(data.splits["train"])
        return data

    def read(self, spec: str, data: DataConfig) -> tuple[pd.DataFrame, dict]:
        """One file's sentences (tokens, tags, where) in the training scheme, and its manifest
        entry. A tag the model never saw counts as a missed entity when scored (its subwords
        train and score loss as O), as it would in any held-out file."""
        return load_sentences(spec, data, self.scheme, self.invalid_tags)

    def fit(self, frame: pd.DataFrame) -> None:
        """The tag set: O first, then every tag of the training split; plain tags (sorted) have
        no O unless the files use one (an O the data never has would be a class never seen)."""
        found = {t for tags in frame["tags"] for t in tags}
        if self.plain:
            self.tag_names = sorted(found)
            return
        found = sorted(found | {"O"})
        self.tag_names = ["O"] + [t for t in found if t != "O"]

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each sentence's words, space-separated (for the train/held-out overlap check)."""
        return [" ".join(tokens) for tokens in frame["tokens"]]

    def groups(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The document of each sentence where the file marks documents (CoNLL ``-DOCSTART-``
        lines, a JSONL ``document`` or ``doc_id`` field): a document's sentences share names
        and context, so they go to one fold. None when it marks fewer than two."""
        if "document" not in frame or frame["document"].nunique(dropna=False) < 2:
            return None
        return frame["document"].map(lambda d: "(none)" if pd.isna(d) else str(d)).to_numpy()

    def source_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """None: sentences are read as records, not table rows."""
        return None

    def write_records(self, frame: pd.DataFrame, directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
        """JSONL ``tokens``/``tags`` records in the training scheme (with each one's ``document``)."""
        path = directory / f"{name}.jsonl"
        documents = frame["document"] if "document" in frame else pd.Series(None, index=frame.index)
        with path.open("w", encoding="utf-8") as out:
            for tokens, tags, document in zip(frame["tokens"], frame["tags"], documents):
                record = {"tokens": list(tokens), "tags": list(tags)}
                if not pd.isna(document):
                    record["document"] = document
                out.write(json.dumps(record) + "\n")
        return path, {"format": "tokens"}

    # -- model -----------------------------------------------------------------------------------------
    def load_processor(self, resolved: ResolvedModel, *, trained: bool = False) -> Any:
        """The tokenizer, checked against model.max_length; a trained run's as saved."""
        return text_processor(resolved, max_length=self.max_length, trained=trained)

    def load_model(self, resolved: ResolvedModel, dropout: float | None) -> tuple[Any, list[str]]:
        from tunesmith.models.load import load_token_classifier

        return load_token_classifier(resolved, label_names=self.tag_names, dropout=dropout)

    def load_trained(self, model_dir: Path) -> Any:
        """A trained run's model (``auto_class``) from its ``model/`` directory."""
        return load_trained_model(self.auto_class, model_dir)

    # -- training --------------------------------------------------------------------------------------
    def encode_frame(self, tokenizer, frame: pd.DataFrame) -> tuple[list[dict], int]:
        """One table's features and how many sentences were cut to model.max_length."""
        if not getattr(tokenizer, "is_fast", False):
            raise TunesmithError("token classification needs a fast tokenizer (word ids)")
        return encode_sentences(tokenizer, frame, self.tag_names, self.max_length, all_subwords=self.all_subwords,
                                plain=self.plain)  # fmt: skip

    def encode(self, processor, splits: dict[str, pd.DataFrame]) -> Encoded:
        """Features of every split, a note per split with cut sentences, and the tag set."""
        encoded = Encoded(features={}, truncated={})
        for name, frame in splits.items():
            encoded.features[name], cut = self.encode_frame(processor, frame)
            encoded.truncated[name] = cut
            if cut:
                encoded.notes.append(f"{name}: {cut} of {len(frame)} sentences cut to {self.max_length} subwords")
        if self.tag_names:
            encoded.notes.append(f"Labels: {', '.join(self.tag_names)}")
        return encoded

    def collate(self, features: list[dict], pad_token_id: int) -> dict:
        return collate_tokens(features, pad_token_id)

    def count(self, features: list[dict]) -> int:
        """A step's loss is divided by its labelled subwords."""
        return sum(sum(1 for label in f["labels"] if label != IGNORE) for f in features)

    def batch_loss(self, model, batch: dict, device) -> torch.Tensor:
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        logits = model(**inputs).logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].to(device).reshape(-1),
                               ignore_index=IGNORE, reduction="sum")  # fmt: skip

    @torch.no_grad()
    def probabilities(
        self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device
    ) -> list[np.ndarray]:
        from tunesmith.data.batching import eval_batches

        was_training = model.training
        model.eval()
        out: list[np.ndarray | None] = [None] * len(features)
        for indices in eval_batches([len(f["input_ids"]) for f in features], batch_size=batch_size):
            batch = collate_tokens([features[i] for i in indices], pad_token_id)
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            probs = torch.softmax(model(**inputs).logits.float(), -1).cpu().numpy()
            for row, i in enumerate(indices):
                out[i] = probs[row, : len(features[i]["input_ids"])]
        model.train(was_training)
        return out

    def named_tags(self, tag_ids: list[int], scores: list[float]) -> list[str | None]:
        """Tag names of ``word_predictions``' ids; a word it marks as cut off by truncation (score
        0) is O, or None with plain tags (no tag is right for it)."""
        return [self.tag_names[t] if score > 0 or not self.plain else None for t, score in zip(tag_ids, scores)]

    def word_tags(self, probabilities: list[np.ndarray], features: list[dict]) -> list[list[str | None]]:
        return [self.named_tags(*word_predictions(p, f["word_ids"], f["words"]))
                for p, f in zip(probabilities, features)]  # fmt: skip

    def feature_tags(self, features: list[dict]) -> list[list[str | None]]:
        """The word tags the features were labelled with (first subwords; words cut off by
        truncation count as O, or with plain tags are None, as are tags the model never saw)."""
        gold = []
        for f in features:
            tags, seen = [None if self.plain else "O"] * f["words"], set()
            for position, word in enumerate(f["word_ids"]):
                if word >= 0 and word not in seen:
                    seen.add(word)
                    label = f["labels"][position]
                    tags[word] = None if label == IGNORE else self.tag_names[label]
            gold.append(tags)
        return gold

    def _scores(
        self, probabilities: list[np.ndarray], features: list[dict], gold: list[list[str | None]]
    ) -> dict[str, Any]:
        """Entity scores (or plain tags' per-token scores, over the words whose ``gold`` tag is
        known) of the predicted word tags against ``gold``, and the mean subword loss."""
        predicted = self.word_tags(probabilities, features)
        if self.plain:
            known = [[(g, p) for g, p in zip(truth, guess) if g is not None] for truth, guess in zip(gold, predicted)]
            metrics = tag_metrics([[g for g, _ in pairs] for pairs in known], [[p for _, p in pairs] for pairs in known],
                                  self.tag_names)  # fmt: skip
        else:
            metrics = entity_metrics(gold, predicted, self.scheme)
        total, tokens = 0.0, 0
        for p, f in zip(probabilities, features):
            labels = np.asarray(f["labels"][: len(p)])
            keep = labels != IGNORE
            total -= float(np.log(np.clip(p[keep, labels[keep]], 1e-12, None)).sum())
            tokens += int(keep.sum())
        metrics["loss"] = total / max(tokens, 1)
        return metrics

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> dict[str, Any]:
        """The loop's metrics: entity (or per-token) scores against the features' own labels
        (``feature_tags``), without a confusion matrix."""
        probabilities = self.probabilities(model, features, batch_size=batch_size, pad_token_id=pad_token_id,
                                           device=device)  # fmt: skip
        metrics = self._scores(probabilities, features, self.feature_tags(features))
        metrics.pop("confusion_matrix", None), metrics.pop("confusion_labels", None)
        return metrics

    # -- evaluation ------------------------------------------------------------------------------------
    def calibrate(self, model, processor, features: list[dict], *, batch_size: int, device) -> None:
        """No temperature: entity spans are not calibrated probabilities."""
        return None

    def score(
        self, model, processor, frame: pd.DataFrame, features: list[dict], context: ScoreContext
    ) -> dict[str, Any]:
        """Entity scores against the table's word tags (words cut off by truncation count as
        missed), per type, with bootstrap intervals over sentences for the overall scores. Plain
        tags: token accuracy, macro and weighted P/R/F1 and per-tag scores (``per_class``; cut
        words are wrong), intervals over sentences, and the confusion matrix plot."""
        probabilities = self.probabilities(model, features, batch_size=context.batch_size,
                                           pad_token_id=pad_token_id(processor), device=context.device)  # fmt: skip
        gold = [list(tags) for tags in frame["tags"]]
        metrics = self._scores(probabilities, features, gold)
        evaluation, predicted = context.evaluation, self.word_tags(probabilities, features)
        context.predictions(self.split_predictions(frame, probabilities, features, gold, predicted))
        options = {"samples": evaluation.bootstrap_samples, "level": evaluation.confidence_level, "seed": context.seed}
        if self.plain:
            intervals = tag_intervals(gold, predicted, self.tag_names, **options)
            if metrics.get("confusion_matrix"):
                plot_confusion_matrix(context.artifact("confusion_matrix", ".png"), metrics["confusion_matrix"],
                                      metrics["confusion_labels"], f"{context.name} confusion matrix")  # fmt: skip
        else:
            intervals = entity_intervals(gold, predicted, self.scheme, **options)
        if intervals:
            metrics["confidence_intervals"], metrics["confidence_level"] = intervals, evaluation.confidence_level
        return metrics

    def split_predictions(self, frame: pd.DataFrame, probabilities: list[np.ndarray], features: list[dict],
                          gold: list[list[str]], predicted: list[list[str | None]]) -> Predictions:  # fmt: skip
        """Per sentence: its words, gold and predicted word tags (a word cut off by truncation is
        O, or None with plain tags), each word's probability (``scores``; their mean is the
        confidence) and whether its entity spans are exactly the gold ones (plain tags: the
        share of its words tagged right)."""
        scores = [word_predictions(p, f["word_ids"], f["words"])[1] for p, f in zip(probabilities, features)]
        if self.plain:
            right = [float(np.mean([g == p for g, p in zip(truth, guess)])) if truth else 1.0
                     for truth, guess in zip(gold, predicted)]  # fmt: skip
        else:
            right = [float(entity_spans(truth, self.scheme) == entity_spans(guess, self.scheme))
                     for truth, guess in zip(gold, predicted)]  # fmt: skip
        rows = pd.DataFrame({"row": np.arange(len(gold)), "input": [" ".join(map(str, t)) for t in frame["tokens"]],
                             "gold": gold, "predicted": predicted, "scores": scores,
                             "confidence": [float(np.mean(s)) if s else np.nan for s in scores], "row_metric": right})  # fmt: skip
        return Predictions(rows, metric="word_accuracy" if self.plain else "exact_entities", higher_is_better=True,
                           mean_of=None)  # fmt: skip

    # -- prediction ------------------------------------------------------------------------------------
    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """Per text (``text_row``): entity spans with character offsets and scores (mean word
        probability), or with plain tags each word with its offsets, tag and probability.

        Raises:
            TunesmithError: an input that is not a text, naming its position.
        """
        inputs = check_texts(inputs, self.kind)
        features = self.export_features(processor, inputs)
        probabilities = self.probabilities(model, features, batch_size=32, pad_token_id=pad_token_id(processor),
                                           device=next(model.parameters()).device)  # fmt: skip
        return [self.text_row(text, p, f) for text, p, f in zip(inputs, probabilities, features)]

    def text_row(self, text: str, probabilities: np.ndarray, feature: dict) -> dict[str, Any]:
        """One text's prediction row, from the tag probabilities of its subwords (from any backend)
        and its feature as ``predict`` encodes it (``word_ids``, ``words``): ``{"text", "entities":
        [{"text", "label", "start", "end", "score"}]}``, or with plain tags ``{"text", "tokens":
        [{"word", "start", "end", "tag", "score"}]}`` (tasks.tagging.token_rows)."""
        words = words_with_offsets(text)
        tag_ids, scores = word_predictions(probabilities, feature["word_ids"], feature["words"])
        named = self.named_tags(tag_ids, scores)[: len(words)]
        if self.plain:
            return {"text": text, "tokens": token_rows(text, words, named, scores)}
        return {"text": text, "entities": entities_in_text(text, named, scores, words, self.scheme)}

    def read_inputs(self, path: Path) -> list:
        """The texts of a prediction input file (one per line of .txt, or a table's text column)."""
        return read_texts(path)

    # -- shipping --------------------------------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The tagger's part of the model card: a named-entity tagger, or a per-token tagger."""
        source = manifest["sources"]["train"]
        if self.plain:
            title = "Per-token tagger"
            purpose = (f"It tags each word of a text with one of {len(self.tag_names)} tags (such as part of speech "
                       "or chunks), one tag per word; it finds no entity spans.")  # fmt: skip
        else:
            title, purpose = "Named-entity tagger", "It tags the words of a text with entity types."
        return CardText(
            title=title,
            purpose=purpose,
            data=f"Format: {source.get('format')}; {source.get('cleaning')}.",
            limitation=f"Texts longer than {max_length} tokens are truncated: the model sees only their start "
            f"({truncated_train} of the training rows were truncated).",
            usage='`tunesmith predict RUN_DIR --text "..."`.',
        )

    # -- export (tasks.contract.OnnxExportable) --------------------------------------------------------
    def export_features(self, processor: Any, inputs: list) -> list[dict]:
        """Texts split into words as ``predict`` splits them (an empty text reads as "."), then
        into subwords (``word_ids``, ``words``), cut to max_length.

        Raises:
            TunesmithError: an input that is not a text, naming its position.
        """
        words = [words_with_offsets(t) for t in check_texts(inputs, self.kind)]
        frame = pd.DataFrame({"tokens": [[w for w, _, _ in ws] or ["."] for ws in words],
                              "tags": [["O"] * max(len(ws), 1) for ws in words]})  # fmt: skip
        return encode_sentences(processor, frame, self.tag_names, self.max_length, all_subwords=False)[0]

    def export_inputs(self, processor: Any, features: list[dict]) -> ExportBatch:
        """Subword ids (and token types) padded to the batch's longest sentence; each row's
        output is its own subwords' tag logits (``row_lengths``)."""
        return per_token_export_batch(processor, features)

    def export_output(self, output: Any) -> torch.Tensor:
        """The tag logits of every subword, [rows, subwords, tags]."""
        return output.logits

    def export_parity(self, reference: list[np.ndarray], candidate: list[np.ndarray],
                      features: list[dict]) -> dict[str, float]:  # fmt: skip
        """Sentences whose decoded entity spans (type, first and last word, as ``predict``
        decodes them) are the same (``label_agreement`` = ``entity_agreement``; with plain tags,
        sentences whose word tags are all the same), words with the same tag
        (``token_agreement``), and the largest logit difference."""
        before = self.word_tags([softmax(r) for r in reference], features)
        after = self.word_tags([softmax(c) for c in candidate], features)
        same_words = [a == b for first, second in zip(before, after) for a, b in zip(first, second)]
        if self.plain:
            same = [first == second for first, second in zip(before, after)]
        else:
            same = [entity_spans(first, self.scheme) == entity_spans(second, self.scheme)
                    for first, second in zip(before, after)]  # fmt: skip
        figures = {"rows": len(reference), "max_logit_difference": max_difference(reference, candidate),
                   "label_agreement": float(np.mean(same)) if same else 1.0,
                   "token_agreement": float(np.mean(same_words)) if same_words else 1.0}  # fmt: skip
        if not self.plain:
            figures["entity_agreement"] = figures["label_agreement"]
        return figures

    def export_description(self) -> dict[str, Any]:
        """An export reads subword ids of a text split into words (word characters, or one
        punctuation mark) as ``predict`` splits it."""
        return {"inputs": "subword ids of the text's words (split on whitespace and punctuation)",
                "text_normalisation": None}  # fmt: skip

    def rows_from_logits(self, inputs: list, features: list[dict], logits: list[np.ndarray], *,
                         temperature: float | None = None) -> list[dict]:  # fmt: skip
        """``predict``'s rows (``text_row``: entity spans with offsets and scores, or words with
        their tags) from any backend's per-subword tag logits."""
        texts = check_texts(inputs, self.kind)
        return [self.text_row(text, softmax(row), f) for text, row, f in zip(texts, logits, features)]

    # -- monitoring (tunesmith monitor; tasks.contract.Monitored) ------------------------------------
    @property
    def watches(self) -> tuple[Watch, ...]:
        """The shares of entity types, or with plain tags of the predicted tags."""
        if self.plain:
            return (Watch("tag_psi", "psi", "psi", "predicted tag of a word"),)
        return (Watch("entity_type_psi", "psi", "psi", "entity type ((none): a text without entities)"),)

    def monitor_inputs(self, frame: pd.DataFrame) -> list:
        """Each sentence as a text: its words, space-separated."""
        return [" ".join(tokens) for tokens in frame["tokens"]]

    def monitor_texts(self, inputs: list) -> list[str]:
        """The texts themselves."""
        return check_texts(inputs, self.kind)

    def embed(self, model: Any, processor: Any, inputs: list) -> np.ndarray:
        """The encoder's mean-pooled states over each text's words (as predict splits them)."""
        texts = [" ".join(w for w, _, _ in words_with_offsets(t)) for t in check_texts(inputs, self.kind)]
        return pooled(model.base_model, processor, texts, max_length=self.max_length)

    def watched_values(self, row: dict[str, Any]) -> dict[str, Any]:
        """The types of the row's entities, or "(none)"; with plain tags, its words' tags."""
        if self.plain:
            return {"tag_psi": [str(token["tag"]) for token in row["tokens"]] or ["(none)"]}
        return {"entity_type_psi": [entity["label"] for entity in row["entities"]] or ["(none)"]}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "label_names": self.tag_names, "tag_scheme": self.scheme,
                "label_all_subwords": self.all_subwords}  # fmt: skip

    # -- inspect ---------------------------------------------------------------------------------------
    def inspection_records(self, spec: str, data: DataConfig) -> InspectionRecords:
        """One file's sentences for ``tunesmith inspect`` (data.quality.InspectedTask): the words
        compared for duplicates and leakage, the tags as they are in the file counted, and as
        findings the tags outside task.tag_scheme (training refuses them) and the IOB2 entities
        that start with I- (started with B- by training, or refused with task.invalid_tags=error)."""
        from tunesmith.data.quality import InspectionRecords

        sentences, fmt, entry = read_sentences(spec, data)
        scheme = "iob2" if fmt == "spans" else self.scheme  # as load_sentences reads the file
        findings = [f for number, sentence in enumerate(sentences, 1)
                    for f in tag_findings(sentence, number, fmt, scheme, self.invalid_tags)]  # fmt: skip
        return InspectionRecords(
            source=entry["source"], rows=list(range(1, len(sentences) + 1)), where=[s["where"] for s in sentences],
            texts=[" ".join(s["tokens"]) for s in sentences], targets=[" ".join(s["tags"]) for s in sentences],
            labels=[list(s["tags"]) for s in sentences], label_kind="tags", findings=findings,
            frame=pd.DataFrame({"tokens": [s["tokens"] for s in sentences]}),
        )  # fmt: skip

    def inspection_lengths(self, processor: Any, records: InspectionRecords) -> list[TokenLengths]:
        """Subwords per sentence (the words as training tokenizes them) against model.max_length."""
        from tunesmith.data.quality import TokenLengths

        words = [list(tokens) for tokens in records.frame["tokens"]]
        counts = [len(ids) for ids in processor(words, is_split_into_words=True)["input_ids"]] if words else []
        return [TokenLengths("sentence", counts, self.max_length,
                             "cut: the words past model.max_length are not tagged, and count as missed when scored")]  # fmt: skip


def tag_findings(sentence: dict, number: int, fmt: str, scheme: str, invalid_tags: str) -> list[Finding]:
    """One sentence's tag problems for inspect: a tag outside ``scheme`` (an error: training
    refuses it), and each IOB2 entity that starts with I- (a warning, or an error with
    task.invalid_tags=error), named by the word's line or position."""
    from tunesmith.data.quality import Finding

    if scheme not in ("iob2", "bioes"):  # a plain per-token tag set: any tag is a tag
        return []
    where, tags = sentence["where"], sentence["tags"]
    try:
        check_tags(tags, scheme, where)
    except TunesmithError as error:
        return [Finding("tag outside the scheme", number, where, str(error).removeprefix(f"{where}: "), "error",
                        "training refuses the file: fix the tag, or set task.tag_scheme")]  # fmt: skip
    if scheme != "iob2":
        return []
    refused = invalid_tags == "error"
    advice = ("training refuses the file (task.invalid_tags=error)" if refused
              else "training starts the entity with B- (task.invalid_tags=convert)")  # fmt: skip
    return [Finding("I- without B-", number, _word_where(sentence, p, fmt),
                    f"{sentence['tokens'][p]!r} is tagged {tags[p]!r} after "
                    f"{'the sentence start' if p == 0 else repr(tags[p - 1])}",
                    "error" if refused else "warning", advice)
            for p in fix_inside_starts(tags)[1]]  # fmt: skip


def _seqeval_tags(sequences: list[list[str]], scheme: str) -> list[list[str]]:
    """Tags as seqeval reads them: BIOES's E and S are BILOU's L and U."""
    if scheme != "bioes":
        return sequences
    swap = {"E": "L", "S": "U"}
    return [[swap.get(t[0], t[0]) + t[1:] if t != "O" else t for t in s] for s in sequences]


def entity_metrics(gold: list[list[str]], predicted: list[list[str]], scheme: str) -> dict[str, Any]:
    """seqeval entity-level scores (strict matching in the given scheme), overall and per type."""
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import BILOU, IOB2

    mode = {"iob2": IOB2, "bioes": BILOU}[scheme]
    gold, predicted = _seqeval_tags(gold, scheme), _seqeval_tags(predicted, scheme)
    report = classification_report(gold, predicted, mode="strict", scheme=mode, output_dict=True, zero_division=0)
    overall = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                    "support": int(v["support"])}
                for k, v in report.items() if not k.endswith(" avg")}  # fmt: skip
    return {"f1": float(overall["f1-score"]), "precision": float(overall["precision"]), "recall": float(overall["recall"]),
            "accuracy": float(accuracy_score(gold, predicted)), "count": len(gold), "per_type": per_type}  # fmt: skip


def entity_intervals(gold: list[list[str]], predicted: list[list[str]], scheme: str, *, samples: int, level: float,
                     seed: int) -> dict[str, dict[str, float]]:  # fmt: skip
    """Bootstrap intervals of the overall entity F1, precision and recall, resampling sentences
    (each one's correct, predicted and gold entity counts, strict matching as in entity_metrics)."""
    from seqeval.scheme import BILOU, IOB2, Entities

    mode = {"iob2": IOB2, "bioes": BILOU}[scheme]
    found = Entities(_seqeval_tags(gold, scheme), mode).entities
    guessed = Entities(_seqeval_tags(predicted, scheme), mode).entities
    counts = np.asarray([[len({e.to_tuple() for e in g} & {e.to_tuple() for e in p}), len(p), len(g)]
                         for g, p in zip(found, guessed)], dtype=float).reshape(-1, 3)  # fmt: skip

    def scores(sums: np.ndarray) -> dict[str, np.ndarray]:
        correct, predicted_entities, gold_entities = sums[:, 0], sums[:, 1], sums[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"f1": np.where(predicted_entities + gold_entities > 0,
                                   2 * correct / (predicted_entities + gold_entities), 0.0),
                    "precision": np.where(predicted_entities > 0, correct / predicted_entities, 0.0),
                    "recall": np.where(gold_entities > 0, correct / gold_entities, 0.0)}  # fmt: skip

    return bootstrap_sums(counts, scores, samples=samples, level=level, seed=seed)


def entity_spans(tags: list[str], scheme: str) -> list[dict]:
    """The entities of a sentence's word tags: ``{"label", "first", "last"}`` (word positions); an
    I- tag that does not continue an entity of its type starts one."""
    iob = bioes_to_iob2(tags) if scheme == "bioes" else tags
    spans, current = [], None
    for i, tag in enumerate(iob):
        prefix, kind = _split(tag)
        if prefix == "B" or (prefix == "I" and (current is None or current["label"] != kind)):
            if current:
                spans.append(current)
            current = {"label": kind, "first": i, "last": i}
        elif prefix == "I":
            current["last"] = i
        else:
            if current:
                spans.append(current)
            current = None
    if current:
        spans.append(current)
    return spans


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis (float32, as the model's own softmax)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def max_difference(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """The largest absolute difference between two lists of same-shaped arrays (0 when empty)."""
    return max((float(np.abs(r - c).max()) for r, c in zip(reference, candidate) if r.size), default=0.0)


def entities_in_text(
    text: str, tags: list[str], scores: list[float], words: list[tuple[str, int, int]], scheme: str
) -> list[dict]:
    """Entity spans (character offsets into ``text``) from word tags (``entity_spans``)."""
    spans = entity_spans(tags, scheme)
    return [{"text": text[words[s["first"]][1] : words[s["last"]][2]], "label": s["label"],
             "start": words[s["first"]][1], "end": words[s["last"]][2],
             "score": round(float(np.mean(scores[s["first"] : s["last"] + 1])), 6)} for s in spans]  # fmt: skip
