"""Token classification (NER): one tag per word, entity-level metrics.

Input formats (``data.format``, or detected):
- ``conll``: ``token TAG`` per line (more columns are allowed; the tag is the last), a blank
  line between sentences, ``-DOCSTART-`` lines skipped;
- ``tokens``: JSONL records ``{"tokens": [...], "tags": [...]}``;
- ``spans``: JSONL records ``{"text": "...", "entities": [{"start": 0, "end": 4, "label": "PER"}]}``
  (character offsets, end exclusive); words are split on whitespace and punctuation, and the
  words an entity covers are tagged.

Tags are read as IOB2 or BIOES (``task.tag_scheme`` says which the files use and which the
model trains with; the other is converted). A word's tag goes on its first subword, or on all
of them (``task.label_all_subwords``; then later subwords of a B- word get I-). Metrics are
seqeval's entity-level precision, recall and F1, overall and per entity type.
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
from tunesmith.tasks.contract import CardText, Encoded, ScoreContext
from tunesmith.tasks.inputs import check_texts, read_texts

if TYPE_CHECKING:
    from tunesmith.config import Config, DataConfig
    from tunesmith.data.prepare import PreparedData
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
                                 f"(expected O or {'/'.join(sorted(allowed))}-TYPE)")  # fmt: skip


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
    words follow on consecutive lines).

    Raises:
        TunesmithError: not UTF-8, a line without a tag, or a control character (columns are
            split on whitespace, so replacing one could shift them), naming the line.
    """
    from tunesmith.data.load import CONTROL_CHARACTERS, NUL_HINT, control_character_error

    sentences, tokens, tags, first = [], [], [], None
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
                sentences.append({"tokens": tokens, "tags": tags, "where": f"{path}, line {first}"})
            tokens, tags, first = [], [], None
            continue
        if len(parts) < 2:
            raise TunesmithError(f"{path}, line {number}: expected 'token TAG', got {line.strip()!r}")
        first = first or number
        tokens.append(parts[0])
        tags.append(parts[-1])
    return sentences


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


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
            sentences.append({"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags], "where": where})
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
        sentences.append({"tokens": [w for w, _, _ in words], "tags": tags, "where": where})
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


def load_sentences(spec: str, config, scheme: str, invalid_tags: str = "convert") -> tuple[pd.DataFrame, dict]:
    """One table (tokens, tags, where) for a file, in the training tag scheme.

    Args:
        invalid_tags: an IOB2 entity that starts with I- is started with B- and counted, with a
            note naming the lines ("convert"), or refused with its line ("error").

    Raises:
        TunesmithError: a missing or malformed file, a tag outside the scheme, naming the line.
    """
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
    if not sentences:
        raise TunesmithError(f"{path}: no sentences found")
    # Files carry task.tag_scheme, except spans (always IOB2); the model trains in tag_scheme.
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
    frame = pd.DataFrame(sentences)
    cleaning = {"sentences": len(frame), "words": int(frame["tokens"].map(len).sum())}
    notes = []
    if converted:
        cleaning["inside_starts_converted"] = len(converted)
        more = f" and {len(converted) - 5} more" if len(converted) > 5 else ""
        notes.append(f"{len(converted)} entities started with I- instead of B- and were converted to B- "
                     f"({'; '.join(converted[:5])}{more}); task.invalid_tags=error refuses such files")  # fmt: skip
    count, control_notes = control_character_note(str(path), control, control_lines, "lines")
    if count:
        cleaning["control_characters"] = count
        notes += control_notes
    entry = {"source": str(path), "sha256": sha256_file(path), "format": fmt, "replaced_characters": 0,
             "cleaning": cleaning}  # fmt: skip
    if notes:
        entry["notes"] = notes
    return frame, entry


# -- encoding -------------------------------------------------------------------------------------------
def align(word_ids: list[int | None], word_tags: list[int], tag_names: list[str], *, all_subwords: bool) -> list[int]:
    """Subword labels from word labels: the first subword of each word gets its tag; later
    subwords get IGNORE, or with ``all_subwords`` the inside tag of the word's type (I-TYPE
    after a B-, S- or E- first subword; O and I- stay). Metrics always read the first subword."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
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
                     all_subwords: bool) -> tuple[list[dict], int]:  # fmt: skip
    """Features per sentence (input ids, labels, word ids) and how many were truncated."""
    index = {t: i for i, t in enumerate(tag_names)}
    features, truncated = [], 0
    for tokens, tags in zip(frame["tokens"], frame["tags"]):
        encoded = tokenizer(list(tokens), is_split_into_words=True, truncation=True, max_length=max_length)
        word_ids = encoded.word_ids()
        seen = {w for w in word_ids if w is not None}
        truncated += len(seen) < len(tokens)
        word_tags = [index.get(t, index.get("O", 0)) for t in tags]
        feature = {"input_ids": encoded["input_ids"], "labels": align(word_ids, word_tags, tag_names, all_subwords=all_subwords),
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
    """Named-entity tagging (tasks.contract.Task): summed token cross-entropy, seqeval metrics."""

    tag_names: list[str] = field(default_factory=list)
    scheme: str = "iob2"
    all_subwords: bool = False
    invalid_tags: str = "convert"
    """IOB2 entities that start with I-: "convert" (to B-, with a warning) or "error"."""
    max_length: int = 128
    """model.max_length: subwords per sentence."""
    kind: ClassVar[str] = "token_classification"
    type: ClassVar[str] = "token_classification"
    stages: ClassVar[frozenset[str]] = frozenset({"evaluate", "predict", "tune", "serve"})
    peft_task_type: ClassVar[str | None] = "TOKEN_CLS"
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"
    calibrates: ClassVar[bool] = False
    stratify: ClassVar[bool] = False
    forgetting_probe: ClassVar[str | None] = None
    default_metric = ("f1", "max")
    metric_names = ["f1", "precision", "recall", "accuracy", "loss"]

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
        """The tag set: O first, then every tag of the training split."""
        found = sorted({t for tags in frame["tags"] for t in tags} | {"O"})
        self.tag_names = ["O"] + [t for t in found if t != "O"]

    def overlap_inputs(self, frame: pd.DataFrame) -> list[str]:
        """Each sentence's words, space-separated (for the train/held-out overlap check)."""
        return [" ".join(tokens) for tokens in frame["tokens"]]

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
        return encode_sentences(tokenizer, frame, self.tag_names, self.max_length, all_subwords=self.all_subwords)

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

    def word_tags(self, probabilities: list[np.ndarray], features: list[dict]) -> list[list[str]]:
        return [[self.tag_names[t] for t in word_predictions(p, f["word_ids"], f["words"])[0]]
                for p, f in zip(probabilities, features)]  # fmt: skip

    def feature_tags(self, features: list[dict]) -> list[list[str]]:
        """The word tags the features were labelled with (first subwords; words cut off by
        truncation count as O)."""
        gold = []
        for f in features:
            tags, seen = ["O"] * f["words"], set()
            for position, word in enumerate(f["word_ids"]):
                if word >= 0 and word not in seen:
                    seen.add(word)
                    tags[word] = self.tag_names[f["labels"][position]]
            gold.append(tags)
        return gold

    def _scores(self, probabilities: list[np.ndarray], features: list[dict], gold: list[list[str]]) -> dict[str, Any]:
        """Entity scores of the predicted word tags against ``gold``, and the mean subword loss."""
        metrics = entity_metrics(gold, self.word_tags(probabilities, features), self.scheme)
        total, tokens = 0.0, 0
        for p, f in zip(probabilities, features):
            labels = np.asarray(f["labels"][: len(p)])
            keep = labels != IGNORE
            total -= float(np.log(np.clip(p[keep, labels[keep]], 1e-12, None)).sum())
            tokens += int(keep.sum())
        metrics["loss"] = total / max(tokens, 1)
        return metrics

    def evaluate(self, model, features: list[dict], *, batch_size: int, pad_token_id: int, device) -> dict[str, Any]:
        """The loop's metrics: entity scores against the features' own labels (``feature_tags``)."""
        probabilities = self.probabilities(model, features, batch_size=batch_size, pad_token_id=pad_token_id,
                                           device=device)  # fmt: skip
        return self._scores(probabilities, features, self.feature_tags(features))

    # -- evaluation ------------------------------------------------------------------------------------
    def calibrate(self, model, processor, features: list[dict], *, batch_size: int, device) -> None:
        """No temperature: entity spans are not calibrated probabilities."""
        return None

    def score(
        self, model, processor, frame: pd.DataFrame, features: list[dict], context: ScoreContext
    ) -> dict[str, Any]:
        """Entity scores against the table's word tags (words cut off by truncation count as
        missed), per type, with bootstrap intervals over sentences for the overall scores."""
        probabilities = self.probabilities(model, features, batch_size=context.batch_size,
                                           pad_token_id=pad_token_id(processor), device=context.device)  # fmt: skip
        gold = [list(tags) for tags in frame["tags"]]
        metrics = self._scores(probabilities, features, gold)
        evaluation = context.evaluation
        intervals = entity_intervals(gold, self.word_tags(probabilities, features), self.scheme,
                                     samples=evaluation.bootstrap_samples, level=evaluation.confidence_level,
                                     seed=context.seed)  # fmt: skip
        if intervals:
            metrics["confidence_intervals"], metrics["confidence_level"] = intervals, evaluation.confidence_level
        return metrics

    # -- prediction ------------------------------------------------------------------------------------
    def predict(self, model, processor, inputs: list, *, temperature: float | None = None) -> list[dict]:
        """Entity spans with character offsets and scores (mean word probability) per text.

        Raises:
            TunesmithError: an input that is not a text, naming its position.
        """
        inputs = check_texts(inputs, self.kind)
        words = [words_with_offsets(t) for t in inputs]
        frame = pd.DataFrame({"tokens": [[w for w, _, _ in ws] or ["."] for ws in words],
                              "tags": [["O"] * max(len(ws), 1) for ws in words]})  # fmt: skip
        features, _ = encode_sentences(processor, frame, self.tag_names, self.max_length, all_subwords=False)
        probabilities = self.probabilities(model, features, batch_size=32, pad_token_id=pad_token_id(processor),
                                           device=next(model.parameters()).device)  # fmt: skip
        rows = []
        for text, ws, p, f in zip(inputs, words, probabilities, features):
            tags, scores = word_predictions(p, f["word_ids"], f["words"])
            named = [self.tag_names[t] for t in tags][: len(ws)]
            rows.append({"text": text, "entities": entities_in_text(text, named, scores, ws, self.scheme)})
        return rows

    def read_inputs(self, path: Path) -> list:
        """The texts of a prediction input file (one per line of .txt, or a table's text column)."""
        return read_texts(path)

    # -- shipping --------------------------------------------------------------------------------------
    def card(self, manifest: dict[str, Any], max_length: int, truncated_train: int) -> CardText:
        """The tagger's part of the model card."""
        source = manifest["sources"]["train"]
        return CardText(
            title="Named-entity tagger",
            purpose="It tags the words of a text with entity types.",
            data=f"Format: {source.get('format')}; {source.get('cleaning')}.",
            limitation=f"Texts longer than {max_length} tokens are truncated: the model sees only their start "
            f"({truncated_train} of the training rows were truncated).",
            usage='`tunesmith predict RUN_DIR --text "..."`.',
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "label_names": self.tag_names, "tag_scheme": self.scheme,
                "label_all_subwords": self.all_subwords}  # fmt: skip


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


def entities_in_text(
    text: str, tags: list[str], scores: list[float], words: list[tuple[str, int, int]], scheme: str
) -> list[dict]:
    """Entity spans (character offsets into ``text``) from word tags."""
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
    return [{"text": text[words[s["first"]][1] : words[s["last"]][2]], "label": s["label"],
             "start": words[s["first"]][1], "end": words[s["last"]][2],
             "score": round(float(np.mean(scores[s["first"] : s["last"] + 1])), 6)} for s in spans]  # fmt: skip
