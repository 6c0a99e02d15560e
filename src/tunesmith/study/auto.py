"""``tunesmith auto``: from a labelled table to the best run a time budget allows, with every
choice said and overridable.

1. **Detect** the text and target columns and the task kind (single_label, multi_label,
   regression) from the table, and say what was found.
2. **Plan** the candidate recipes from the data: zero-shot when the labels are words (their
   names are the descriptions), few-shot contrastive when there are few rows, the standard full
   fine-tune always, LoRA when rows are plenty; ``model.max_length`` from the token lengths
   (shortened when one epoch at that length would take more than a third of the budget, from
   training steps timed here), class weights when the classes are imbalanced, held-out shares
   and epochs by size. Each choice carries its reason.
3. **Run** the candidates cheapest first, each an ordinary run, then spend what is left of the
   budget on a learning-rate search of the best trained recipe with the ``tune`` machinery
   (Optuna, median pruning). When the budget runs out, the running run ends at its next step as
   early stopping ends one (its last weights evaluated, its best kept, the run finished and
   scored, marked "stopped by the budget"), and no run starts after.
4. **Report** ``auto.json`` and ``auto.md`` (what was detected, the plan and its reasons, the
   leaderboard of every run by its validation metric, the best run's test score with its
   interval) and ``best.yaml``, the best run's config.

``--set KEY=VALUE`` overrides apply to every candidate after the plan (the plan's own choices
included), and ``strategies`` narrows the candidates.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.config import DEFAULT_MODEL, TASK_MODELS, apply_overrides, config_from_dict, merge_trees
from tunesmith.data.load import LABEL_NAMES, TEXT_NAMES, read_table
from tunesmith.data.table import TableColumns, detect_columns, read_cells, serialise
from tunesmith.errors import TunesmithError
from tunesmith.runs import claim_output
from tunesmith.study.tune import LOSS_LIKE, objective_metric, run_tune
from tunesmith.train.callbacks import Deadline
from tunesmith.train.loop import resolve_device

STRATEGIES = ("zero_shot", "contrastive", "full", "fusion", "lora")
"""The recipes auto chooses among, cheapest first (``fusion``: tables only, task.route fusion)."""
CONTRASTIVE_MAX_ROWS = 1000
"""Above this many training rows, contrastive pairs cost more than a full fine-tune gains."""
LORA_MIN_ROWS = 500
RECIPE_RATES = {"contrastive": 2e-5, "full": 5e-5, "lora": 5e-4}
"""Each trained recipe's learning rate (the search ranges a third to three times it)."""
MAX_LENGTH = 512
"""The longest max length auto plans (the user may set more with --set model.max_length)."""
LENGTH_STEPS = (512, 384, 256, 192, 128, 96, 64)
"""The shorter max lengths auto falls back to when the budget cannot pay for the texts' own."""
EPOCH_SHARE = 1 / 3
"""One epoch of the full fine-tune may take at most this share of the budget: the rest is for
the other candidates, later epochs and the search."""


@dataclass
class Detection:
    """What auto found in the table."""

    source: str
    rows: int
    text_column: str | None
    label_column: str
    kind: str
    labels: dict[str, int] = field(default_factory=dict)
    """Rows per label (classification kinds)."""
    notes: list[str] = field(default_factory=list)
    table: dict[str, list[str]] | None = None
    """The feature columns by kind (data.table.TableColumns) when the table has numbers or
    categories beside its text, or more than one text: the runs are task.type tabular."""


def parse_budget(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``1.5h`` or a bare number of seconds.

    Raises:
        TunesmithError: anything else, or a budget that is not positive.
    """
    raw = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(raw[-1:], None)
    number = raw[:-1] if scale else raw
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise TunesmithError(f"--time-budget {text!r}: give a positive duration such as 90s, 15m or 1h")
    return seconds


def _columns(frame: pd.DataFrame, target: str | None, text: str | None, source: str) -> tuple[str | None, str]:
    columns = list(frame.columns)
    for option, name in (("--target", target), ("--text", text)):
        if name is not None and name not in columns:
            raise TunesmithError(f"{source}: no column {name!r} ({option}); the columns are {columns}")
    lowered = {str(c).lower(): c for c in columns}
    if target is None:
        target = next((lowered[n] for n in LABEL_NAMES if n in lowered and lowered[n] != text), None)
    if text is None:
        text = next((lowered[n] for n in TEXT_NAMES if n in lowered and lowered[n] != target), None)
    if text is None:  # the column of the longest strings
        lengths = {c: frame[c].dropna().astype(str).str.len().mean() for c in columns
                   if c != target and frame[c].dtype == object}  # fmt: skip
        text = max(lengths, key=lengths.get) if lengths else None
    if target is None:
        rest = [c for c in columns if c != text]
        target = rest[-1] if rest else None
    if target is None or text == target or (text is None and len(columns) < 2):
        raise TunesmithError(f"{source}: cannot tell the text and target columns among {columns}; "
                             "give --text COLUMN and --target COLUMN")  # fmt: skip
    return None if text is None else str(text), str(target)


def detect(spec: str, *, target: str | None = None, text: str | None = None) -> Detection:
    """The columns and task kind of the labelled table at ``spec`` (see ``detect_table``)."""
    loaded = read_table(spec)
    return detect_table(loaded.frame, loaded.source, target=target, text=text)


def detect_table(frame: pd.DataFrame, source: str, *, target: str | None = None,
                 text: str | None = None) -> Detection:  # fmt: skip
    """The columns and task kind of a labelled table read from ``source``.

    A target whose values are lists, or strings joined by ``|`` in at least a fifth of the rows,
    is multi_label; a target of numbers is regression when some are not whole numbers or when
    they take more than max(50, 5% of the rows) values (whole numbers with fewer are class ids);
    anything else is single_label.

    Raises:
        TunesmithError: a named column that is missing, or columns that cannot be told apart
            (``detect``: an unreadable table, too).
    """
    text_column, label_column = _columns(frame, target, text, source)
    labels = frame[label_column].dropna()
    if labels.empty:
        raise TunesmithError(f"{source}: the target column {label_column!r} is empty")
    numbers = pd.to_numeric(labels, errors="coerce") if not labels.map(type).eq(list).any() else labels
    notes = []
    if labels.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any() or (
        labels.astype(str).str.contains("|", regex=False).mean() >= 0.2
    ):
        kind = "multi_label"
        notes.append(f"{label_column!r} holds several labels per row: multi_label")
    elif numbers.notna().all() and ((numbers % 1 != 0).any() or numbers.nunique() > max(50, 0.05 * len(labels))):
        kind = "regression"
        notes.append(f"{label_column!r} holds {numbers.nunique()} distinct numbers: regression "
                     "(give --set task.type=single_label if they are class ids)")  # fmt: skip
    else:
        kind = "single_label"
        notes.append(f"{label_column!r} holds {labels.nunique()} classes: single_label")
    if len(labels) < len(frame):
        notes.append(f"{len(frame) - len(labels)} rows have no value in {label_column!r}: training drops them")
    counts = {} if kind == "regression" else {str(k): int(v) for k, v in labels.astype(str).value_counts().items()}
    table = _table_columns(frame, label_column, kind, source, notes) if text is None else None
    if text_column is None and table is None:
        raise TunesmithError(f"{source}: no text column and no numbers or categories to learn from besides "
                             f"{label_column!r}; give --text COLUMN")  # fmt: skip
    if table is None or table["text"]:
        shown = text_column if table is None else table["text"][0]
        words = frame[shown].dropna().astype(str).str.split().str.len()
        notes.insert(0, f"text in {shown!r} ({words.mean():.0f} words on average), target {label_column!r}, "
                        f"{len(frame):,} rows")  # fmt: skip
    return Detection(source, len(frame), None if table else text_column, str(label_column), kind, counts, notes, table)


def _table_columns(frame: pd.DataFrame, label_column: str, kind: str, source: str,
                   notes: list[str]) -> dict[str, list[str]] | None:  # fmt: skip
    """The feature columns by kind when the table is more than a text and a target (numbers or
    categories beside it, or several texts) and its target fits task.type tabular; else None."""
    if kind == "multi_label" or len(frame.columns) < 3:
        return None
    try:
        columns, found = detect_columns(frame, label_column=label_column, source=source)
    except TunesmithError:
        return None
    if not (columns.numeric or columns.categorical or len(columns.text) > 1):
        return None
    notes += [f"a table, not one text: task.type tabular ({', '.join(columns.names)} as features)"] + found
    return columns.to_dict()


@dataclass
class Candidate:
    """One recipe of the plan: its name (the strategy), the config it sets and why it is tried."""

    name: str
    overrides: dict[str, Any]
    reason: str


@dataclass
class Plan:
    base: dict[str, Any]
    """The nested config every candidate starts from."""
    choices: list[str]
    """Each choice of the plan, with its reason."""
    candidates: list[Candidate]


def token_lengths(model: str, texts: list[str]) -> tuple[np.ndarray, int | None]:
    """Token counts (special tokens included) of the texts under the model's tokenizer, and the
    most tokens the model takes (None when it states no limit)."""
    from tunesmith.models.load import load_tokenizer, position_limit, resolve_model

    resolved = resolve_model(model)
    tokenizer = load_tokenizer(resolved)
    limit = position_limit(resolved, tokenizer)
    lengths = np.asarray([len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]])
    return lengths, limit[0] if limit else None


def training_speed(model: str, texts: list[str], *, device: str = "cpu", batch_size: int = 16,
                   step_tokens: int = 2048) -> Callable[[int], float]:  # fmt: skip
    """A function from a max length to the tokens per second (padding not counted) that a
    training step of ``model`` (forward and backward, fp32) processes on ``device`` at that
    length: one step on the first texts cut at the length, timed after one warm-up step. A step
    takes ``batch_size`` texts, or fewer at long lengths so that it holds about ``step_tokens``
    tokens (at least two texts): short batches are timed at the size they train at, and a long
    one does not cost the budget much."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tunesmith.models.load import load_tokenizer, pad_token_id, quiet_transformers, resolve_model

    quiet_transformers()
    resolved = resolve_model(model)
    tokenizer = load_tokenizer(resolved)
    if tokenizer.pad_token is None:  # a decoder's tokenizer: pad as the runs do
        tokenizer.pad_token_id = pad_token_id(tokenizer)
    network = AutoModelForSequenceClassification.from_pretrained(resolved.location, num_labels=2)
    network.config.pad_token_id = tokenizer.pad_token_id
    network.to(device).train()
    warm = []

    def speed(length: int) -> float:
        rows = max(2, min(batch_size, step_tokens // length))
        batch = tokenizer(texts[:rows], truncation=True, max_length=length, padding=True, return_tensors="pt")
        batch = {name: values.to(device) for name, values in batch.items()}
        labels = torch.zeros(len(batch["input_ids"]), dtype=torch.long, device=device)
        for _ in range(1 if warm else 2):  # the first call warms up
            started = time.perf_counter()
            network(**batch, labels=labels).loss.backward()
            network.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
        warm.append(length)
        return float(batch["attention_mask"].sum()) / max(time.perf_counter() - started, 1e-9)

    return speed


def fit_length(lengths: np.ndarray, wanted: int, *, train_rows: int, speed: Callable[[int], float],
               seconds: float) -> tuple[int, float]:  # fmt: skip
    """The longest of ``wanted`` and the shorter ``LENGTH_STEPS`` at which one epoch of
    ``train_rows`` rows (token ``lengths`` a sample of theirs) takes at most ``seconds`` at
    ``speed(length)`` tokens per second (the shortest step when none does), and that epoch's
    estimated seconds."""
    for length in [wanted] + [step for step in LENGTH_STEPS if step < wanted]:
        epoch = float(np.minimum(lengths, length).mean() * train_rows / speed(length))
        if epoch <= seconds:
            return length, epoch
    return length, epoch


def _budget_length(model: str, sample: list[str], lengths: np.ndarray, wanted: int, train_rows: int,
                   budget: float, device: str) -> tuple[int, str | None]:  # fmt: skip
    """``wanted``, or a shorter max length whose first epoch fits ``EPOCH_SHARE`` of the budget,
    with the reason."""
    timed: dict[int, float] = {}
    measure = training_speed(model, sorted(sample, key=len, reverse=True), device=device)

    def speed(length: int) -> float:
        timed[length] = measure(length)
        return timed[length]

    chosen, epoch = fit_length(lengths, wanted, train_rows=train_rows, speed=speed, seconds=budget * EPOCH_SHARE)
    if chosen == wanted:
        return wanted, None
    full = np.minimum(lengths, wanted).mean() * train_rows / timed[wanted]
    kept = np.minimum(lengths, chosen).sum() / max(lengths.sum(), 1)
    return chosen, (f"model.max_length {chosen}, not {wanted}: one epoch of {train_rows} rows would take about "
                    f"{_duration(full)} at {wanted} tokens and {_duration(epoch)} at {chosen} (training steps "
                    f"timed here: {timed[wanted]:.0f} and {timed[chosen]:.0f} tokens/s), and may take at most a "
                    f"third of the {_duration(budget)} budget; {chosen} tokens keep {kept:.0%} of the text")  # fmt: skip


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def plan(detection: Detection, spec: str, *, model: str = DEFAULT_MODEL, metric: str | None = None,
         strategies: list[str] | None = None, seed: int = 0, frame: pd.DataFrame | None = None,
         budget: float | None = None, device: str = "cpu") -> Plan:  # fmt: skip
    """The candidates and the shared config for a detected table (see the module docstring);
    ``frame``: the table at ``spec`` when it has been read already; ``budget``: the seconds
    the whole auto run may take (None: the max length is not fitted to a budget); ``device``:
    where the runs will train (the budget's training steps are timed there)."""
    if frame is None:
        frame = read_table(spec).frame
    rows, kind = detection.rows, detection.kind
    choices: list[str] = []
    small = rows < 200
    val, test = (0.2, 0.2) if small else (0.1, 0.1)
    choices.append(f"held out: {val:.0%} validation (picks the run) and {test:.0%} test (scores it)"
                   + (f", larger shares since there are only {rows} rows" if small else ""))  # fmt: skip
    train_rows = int(rows * (1 - val - test))
    sample = _text_sample(detection, frame, seed)
    lengths, limit = token_lengths(model, sample)
    covered = int(np.percentile(lengths, 95)) if len(lengths) else 16
    cap, why = (
        (limit, "the model takes at most")
        if limit is not None and limit < MAX_LENGTH
        else (MAX_LENGTH, "auto plans at most")
    )
    max_length = int(min(cap, max(16, math.ceil(covered / 8) * 8)))
    choices.append(f"model.max_length {max_length}: 95% of texts fit in {covered} tokens "
                   f"(longest {int(lengths.max()) if len(lengths) else 0}"
                   + (f"; {why} {cap})" if max_length == cap < covered else ")"))  # fmt: skip
    trains = set(strategies or STRATEGIES) - {"zero_shot"}
    if budget is not None and trains and max_length > LENGTH_STEPS[-1]:  # something trains; shorter lengths exist
        max_length, reason = _budget_length(model, sample, lengths, max_length, train_rows, budget, device)
        choices += [reason] if reason else []
    base: dict[str, Any] = {
        "task": {"type": kind},
        "data": {"train": spec, "text_column": detection.text_column, "label_column": detection.label_column,
                 "val_fraction": val, "test_fraction": test},
        "model": {"name": model, "max_length": max_length},
        "train": {"early_stopping": {"patience": 3}},
        "runtime": {"seed": seed},
    }  # fmt: skip
    if metric:
        base["train"]["metric"] = metric
    if detection.table is not None:
        del base["data"]["text_column"]
        base["task"] = {"type": "tabular", "target": "regression" if kind == "regression" else "classification",
                        **{f"{k}_columns": v for k, v in detection.table.items()}}  # fmt: skip
        choices.append("each row written as a sentence for the text model; a LightGBM baseline on the same columns "
                       "in the first run's metrics")  # fmt: skip
    counts = detection.labels
    section = TASK_MODELS[base["task"]["type"]]
    if section.supports_balance and counts and max(counts.values()) >= 3 * min(counts.values()):
        base["data"]["balance"] = {"method": "class_weights"}
        choices.append(f"class weights in the loss: the largest class has {max(counts.values())} rows, the smallest "
                       f"{min(counts.values())}")  # fmt: skip
    wanted = list(strategies or STRATEGIES)
    unknown = sorted(set(wanted) - set(STRATEGIES))
    if unknown:
        raise TunesmithError(f"--strategies: {unknown} are not recipes auto knows; choose among {list(STRATEGIES)}")
    candidates = _candidates(detection, wanted, section, train_rows)
    if not candidates:
        raise TunesmithError(f"no recipe fits a {kind} table of {rows} rows with --strategies {wanted}")
    return Plan(base, choices, candidates)


def _candidates(detection: Detection, wanted: list[str], section, train_rows: int) -> list[Candidate]:
    """The plan's recipes that fit the data and ``wanted`` (``--strategies``), cheapest first."""
    counts = detection.labels
    epochs = 10 if train_rows < 500 else 3  # the full fine-tune's passes (few rows need more; the best is kept)
    candidates: list[Candidate] = []
    worded = section.supports_contrastive and not all(pd.to_numeric(pd.Series(list(counts)), errors="coerce").notna())
    if "zero_shot" in wanted and worded:
        candidates.append(Candidate("zero_shot", {"model": {"strategy": "zero_shot"},
                                                  "task": {"labels": sorted(counts)}},
                                    "the labels are words, so their names can describe them: the score with no "
                                    "training, for what training adds"))  # fmt: skip
    if "contrastive" in wanted and section.supports_contrastive and train_rows <= CONTRASTIVE_MAX_ROWS:
        iterations = max(1, min(20, 4000 // max(train_rows, 1)))
        candidates.append(Candidate("contrastive", {"model": {"strategy": "contrastive",
                                                              "contrastive": {"iterations": iterations}}},
                                    f"{train_rows} training rows (smallest class {min(counts.values())}): few enough "
                                    f"for contrastive few-shot training ({iterations} pairs per row)"))  # fmt: skip
    if "full" in wanted:
        candidates.append(Candidate("full", {"model": {"strategy": "full"},
                                             "train": {"num_epochs": epochs, "learning_rate": RECIPE_RATES["full"]}},
                                    f"the standard fine-tune of every weight, {epochs} epochs"
                                    + (" (few rows need more passes; the best epoch is kept)" if epochs > 3 else "")))  # fmt: skip
    if (
        "fusion" in wanted
        and detection.table is not None
        and (detection.table["numeric"] or detection.table["categorical"])
    ):
        candidates.append(Candidate("fusion", {"model": {"strategy": "full"}, "task": {"route": "fusion"},
                                               "train": {"num_epochs": epochs, "learning_rate": RECIPE_RATES["full"]}},
                                    "the table has numbers or categories: the row's sentence beside its normalised "
                                    f"numbers and one-hot categories (task.route fusion), {epochs} epochs"))  # fmt: skip
    if "lora" in wanted and train_rows >= LORA_MIN_ROWS:
        candidates.append(Candidate("lora", {"model": {"strategy": "lora"},
                                             "train": {"num_epochs": 3, "learning_rate": RECIPE_RATES["lora"]}},
                                    f"{train_rows} training rows: enough for low-rank adapters, which change few "
                                    "weights and forget less"))  # fmt: skip
    return candidates


def _text_sample(detection: Detection, frame: pd.DataFrame, seed: int) -> list[str]:
    """At most 1,000 of the texts the model will read: the text column's, or a table's rows as sentences."""
    if detection.table is None:
        texts = frame[detection.text_column].dropna().astype(str)
        return texts.sample(n=min(len(texts), 1000), random_state=seed).tolist()
    picked = frame.sample(n=min(len(frame), 1000), random_state=seed)
    columns = TableColumns.from_dict(detection.table)
    return serialise(read_cells(picked.assign(row=range(1, len(picked) + 1)), columns)[0], columns)


def _score(run: Path, metric: str) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    test = metrics.get("test", {})
    interval = test.get("confidence_intervals", {}).get(metric, {})
    return {"validation": metrics.get("validation", {}).get(metric), "test": test.get(metric),
            "test_low": interval.get("low"), "test_high": interval.get("high")}  # fmt: skip


def run_auto(spec: str, out: Path, *, train: Callable, budget: float, target: str | None = None,
             text: str | None = None, metric: str | None = None, overrides: list[str] = (),
             strategies: list[str] | None = None, search_trials: int = 6, log: Callable[[str], None] = print,
             console=None) -> dict[str, Any]:  # fmt: skip
    """Detects, plans, runs within ``budget`` seconds and reports into ``out`` (a new folder).

    Args:
        train: the function that runs one config (``tunesmith.api.train``).
        overrides: ``KEY=VALUE`` settings for every candidate, after the plan's.

    Returns:
        What ``auto.json`` holds.
    """
    started = time.monotonic()
    deadline = started + budget
    probe = config_from_dict(apply_overrides({"data": {"train": spec}}, list(overrides)), "--set")
    out = claim_output(out, kind="dir", what="--out")
    table = read_table(spec, encoding_errors=probe.data.encoding_errors)  # read as the runs will read it
    detection = detect_table(table.frame, table.source, target=target, text=text)
    for note in detection.notes:
        log(f"Detected: {note}")
    length_set = any(o.split("=", 1)[0].strip() == "model.max_length" for o in overrides)  # the user's wins
    the_plan = plan(detection, spec, model=probe.model.name, metric=metric, strategies=strategies,
                    seed=probe.runtime.seed, frame=table.frame, budget=None if length_set else budget,
                    device=resolve_device(probe.runtime.device))  # fmt: skip
    for choice in the_plan.choices:
        log(f"Chose: {choice}")
    for candidate in the_plan.candidates:
        log(f"Candidate {candidate.name}: {candidate.reason}")
    out.mkdir(parents=True, exist_ok=True)
    board: list[dict[str, Any]] = []
    metric_name = None
    for number, candidate in enumerate(the_plan.candidates):
        run = out / "candidates" / f"{number:02d}-{candidate.name}"
        once = {} if number == 0 else {"evaluation": {"baseline": False}}  # the same probe for every candidate
        tree = apply_overrides(merge_trees(merge_trees(the_plan.base, candidate.overrides), once), list(overrides))
        tree.setdefault("runtime", {}).update({"output_dir": str(run)})
        config = config_from_dict(tree, f"auto candidate {candidate.name}")
        metric_name = metric_name or objective_metric(config)[0]
        trains = config.model.strategy != "zero_shot"
        entry = {"name": candidate.name, "strategy": config.model.strategy, "run": str(run),
                 "learning_rate": config.train.learning_rate if trains else None, "reason": candidate.reason}  # fmt: skip
        board.append(_attempt(entry, config, run, train, deadline, metric_name, log, console))
    search = _search(the_plan, board, overrides, out, train, deadline, metric_name, search_trials, log, console)
    return _report(out, detection, the_plan, board, search, metric_name, budget, time.monotonic() - started, log)


def _attempt(entry: dict, config, run: Path, train: Callable, deadline: float, metric: str,
             log: Callable[[str], None], console) -> dict:  # fmt: skip
    if time.monotonic() >= deadline:
        log(f"Skipped {entry['name']}: the time budget is spent")
        return {**entry, "status": "skipped (budget spent)"}
    log(f"Running {entry['name']} into {run}")
    began, stop = time.monotonic(), Deadline(deadline)
    try:
        train(config, console=console, callbacks=[stop])
    except TunesmithError as error:
        log(f"{entry['name']} failed: {error}")
        return {**entry, "status": f"failed: {error}", "seconds": time.monotonic() - began}
    found = {**entry, "status": "complete", "seconds": time.monotonic() - began, **_score(run, metric)}
    if stop.stopped_at is not None:
        found["status"] = f"complete (the budget stopped it at step {stop.stopped_at})"
        log(f"{entry['name']}: the time budget ran out at step {stop.stopped_at}; the run is scored as it stands")
    log(f"{entry['name']}: validation {metric} {found['validation']}")
    return found


def _search(the_plan: Plan, board: list[dict], overrides, out: Path, train: Callable, deadline: float, metric: str,
            trials: int, log: Callable[[str], None], console) -> dict | None:  # fmt: skip
    """A learning-rate search (Optuna through ``study.tune``) for the best trained recipe, in the
    time that is left; None when there is no time, no trained recipe finished, or trials is 0."""
    trained = [e for e in board if e["status"].startswith("complete") and e["strategy"] != "zero_shot"
               and isinstance(e.get("validation"), float)]  # fmt: skip
    left = deadline - time.monotonic()
    if not trials or not trained or left <= 0:
        return None
    pick = min if metric in LOSS_LIKE else max
    best = pick(trained, key=lambda e: e["validation"])
    if left < best["seconds"]:
        log(f"No learning-rate search: {left:.0f} s left, less than one {best['name']} run ({best['seconds']:.0f} s)")
        return None
    candidate = next(c for c in the_plan.candidates if c.name == best["name"])
    tree = apply_overrides(merge_trees(the_plan.base, candidate.overrides), list(overrides))
    rate = best["learning_rate"]
    tree.setdefault("evaluation", {})["baseline"] = False  # the first candidate's run has it
    tree["tune"] = {"space": {"train.learning_rate": {"type": "float", "low": rate / 3, "high": rate * 3, "log": True}},
                    "n_trials": trials, "pruner": "median", "metric": metric}  # fmt: skip
    config = config_from_dict(tree, "auto search")
    directory = out / "search"
    log(
        f"Searching train.learning_rate for {best['name']} around {rate:g} ({trials} trials at most, {left:.0f} s left)"
    )
    report = run_tune(config, directory, train=train, console=console, deadline=deadline)
    return {"recipe": best["name"], "directory": str(directory), "report": report}


def _report(out: Path, detection: Detection, the_plan: Plan, board: list[dict], search: dict | None, metric: str,
            budget: float, seconds: float, log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    rows = [dict(entry) for entry in board]
    if search:
        for trial in search["report"]["trials"]:
            row = {"name": f"{search['recipe']} search trial {trial['number']}", "strategy": search["recipe"],
                   "run": trial["run"], "learning_rate": trial["params"].get("train.learning_rate"),
                   "seconds": trial["seconds"], "status": trial["state"]}  # fmt: skip
            if trial["state"] == "complete" and trial["run"] and (Path(trial["run"]) / "metrics.json").exists():
                row.update(_score(Path(trial["run"]), metric))
            rows.append(row)
    scored = [r for r in rows if r["status"].startswith("complete") and isinstance(r.get("validation"), float)]
    lower = metric in LOSS_LIKE
    scored.sort(key=lambda r: r["validation"], reverse=not lower)
    best = scored[0] if scored else None
    report = {"source": detection.source, "detected": asdict(detection), "choices": the_plan.choices,
              "candidates": [asdict(c) for c in the_plan.candidates], "metric": metric, "budget_seconds": budget,
              "seconds": seconds, "leaderboard": scored + [r for r in rows if r not in scored], "best": best,
              "out": str(out), "problem": None if best else _nothing_finished(rows)}  # fmt: skip
    (out / "auto.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    if best:
        config_text = (Path(best["run"]) / "config.yaml").read_text(encoding="utf-8")
        (out / "best.yaml").write_text(f"# Best of {out}: {best['name']}, validation {metric} "
                                       f"{best['validation']:.4f}\n" + config_text, encoding="utf-8")  # fmt: skip
    (out / "auto.md").write_text(markdown(report), encoding="utf-8")
    if best:
        log(f"Best: {best['name']} ({best['run']}): validation {metric} {best['validation']:.4f}, test "
            f"{_number(best.get('test'))} [{_number(best.get('test_low'))}, {_number(best.get('test_high'))}]")  # fmt: skip
    if not best:
        log(report["problem"])
    return report


def _nothing_finished(rows: list[dict]) -> str:
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed and len(failed) == len(rows):
        return f"every candidate failed; the first, {failed[0]['name']}: {failed[0]['status'][len('failed: ') :]}"
    return "no run finished within the time budget: give a larger --time-budget"


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def markdown(report: dict[str, Any]) -> str:
    """auto.md: what was detected and chosen, and the leaderboard."""
    detected = report["detected"]
    lines = [f"# tunesmith auto: {report['source']}\n", "## Detected\n",
             *(f"- {note}" for note in detected["notes"]), "", "## Chosen\n",
             *(f"- {choice}" for choice in report["choices"]), "", "## Candidates\n",
             *(f"- **{c['name']}**: {c['reason']}" for c in report["candidates"]), "",
             f"## Leaderboard (by validation {report['metric']})\n",
             "| run | strategy | learning rate | status | validation | test | test interval | seconds |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in report["leaderboard"]:
        rate, seconds = row.get("learning_rate"), row.get("seconds")
        lines.append(f"| {row['name']} | {row.get('strategy', '')} | {'' if rate is None else f'{rate:.2g}'} | "
                     f"{row['status']} | {_number(row.get('validation'))} | {_number(row.get('test'))} | "
                     f"{_number(row.get('test_low'))} – {_number(row.get('test_high'))} | "
                     f"{'' if seconds is None else f'{seconds:.0f}'} |")  # fmt: skip
    best = report["best"]
    lines += ["", f"Budget {report['budget_seconds']:.0f} s, used {report['seconds']:.0f} s."]
    if best:
        lines.append(f"Best: **{best['name']}**, `{best['run']}` (its config: best.yaml).")
    else:
        lines.append(f"No best run: {report['problem']}.")
    return "\n".join(lines) + "\n"
