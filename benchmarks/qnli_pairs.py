"""Sentence-pair classification on QNLI-style pairs built from SQuAD v1.1: a fine-tuned MiniLM
against a frozen-encoder baseline (only the new head trains), on held-out paragraphs.

    .venv/bin/python benchmarks/qnli_pairs.py [--epochs 3] [--out benchmarks/out/qnli]

Pairs are built the way GLUE's QNLI was built from SQuAD: for each question, the sentence of
its paragraph that holds the answer (label ``entailment``) and another sentence of the same
paragraph chosen with a seeded draw (``not_entailment``); paragraphs of one sentence give no
negative and are skipped. Sentences come from a plain punctuation split (QNLI used a parser);
a question whose answer straddles two sentences is dropped. Every paragraph of
../shared/data/squad (train-v1.1.json and dev-v1.1.json) goes, whole, to one split (seeded:
70% train, 10% validation, 20% test), so no context straddles train and test.

Both runs are ordinary ``tunesmith train`` runs of ``task.type: pair_classification`` on the
same files and seed; the baseline sets ``model.strategy=freeze`` with
``model.freeze.trainable_layers=0``. Writes qnli_pairs.json and prints test accuracy and
macro-F1 with their 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQUAD = ROOT.parent / "shared" / "data" / "squad"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences_with_offsets(context: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of a paragraph."""
    spans, start = [], 0
    for match in SENTENCE_END.finditer(context):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(context)))
    return [(a, b) for a, b in spans if context[a:b].strip()]


def build_pairs(seed: int) -> tuple[dict[str, list[dict]], dict]:
    """The pairs of every split, and counts for the record."""
    rng = random.Random(seed)
    paragraphs = []
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        document = json.loads((SQUAD / name).read_text(encoding="utf-8"))
        paragraphs += [p for article in document["data"] for p in article["paragraphs"]]
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    cut_train, cut_val = round(0.7 * len(order)), round(0.8 * len(order))
    split_of = {p: "train" if i < cut_train else "validation" if i < cut_val else "test" for i, p in enumerate(order)}
    pairs: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    dropped = {"one_sentence_paragraph": 0, "answer_across_sentences": 0}
    for index, paragraph in enumerate(paragraphs):
        context, spans = paragraph["context"], sentences_with_offsets(paragraph["context"])
        for qa in paragraph["qas"]:
            if len(spans) < 2:
                dropped["one_sentence_paragraph"] += 1
                continue
            answer = qa["answers"][0]
            begin, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
            holding = [i for i, (a, b) in enumerate(spans) if a <= begin and end <= b]
            if not holding:
                dropped["answer_across_sentences"] += 1
                continue
            other = rng.choice([i for i in range(len(spans)) if i != holding[0]])
            for sentence, label in ((holding[0], "entailment"), (other, "not_entailment")):
                a, b = spans[sentence]
                pairs[split_of[index]].append({"question": qa["question"], "sentence": context[a:b].strip(),
                                               "label": label, "paragraph": index})  # fmt: skip
    counts = {"paragraphs": len(paragraphs), "pairs": {k: len(v) for k, v in pairs.items()}, "dropped": dropped}
    return pairs, counts


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "sentence", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run(out: Path, files: dict[str, Path], epochs: float, strategy: list[str], name: str) -> dict:
    from tunesmith import api

    overrides = [
        "task.type=pair_classification", "task.first_column=question", "task.second_column=sentence",
        f"data.train={files['train']}", f"data.validation={files['validation']}", f"data.test={files['test']}",
        f"train.num_epochs={epochs}", "train.batch_size=16", "train.learning_rate=5e-5", "model.max_length=128",
        "train.metric=accuracy", f"runtime.output_dir={out / name}", "runtime.progress=false", *strategy,
    ]  # fmt: skip
    started = time.perf_counter()
    result = api.train(None, overrides=overrides)
    seconds = time.perf_counter() - started
    test = result.metrics["test"]
    intervals = test.get("confidence_intervals", {})
    return {"seconds": round(seconds, 1), "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "accuracy_interval": intervals.get("accuracy"), "macro_f1_interval": intervals.get("macro_f1"),
            "overrides": overrides}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "qnli")
    args = parser.parse_args()
    if not SQUAD.is_dir():
        raise SystemExit(f"{SQUAD} is missing: this benchmark needs ../shared/data/squad")
    args.out.mkdir(parents=True, exist_ok=False)
    pairs, counts = build_pairs(args.seed)
    files = {name: args.out / f"{name}.csv" for name in pairs}
    for name, rows in pairs.items():
        write_csv(files[name], rows)
    print(json.dumps(counts))
    load = os.getloadavg()
    results = {
        "fine_tuned": run(args.out, files, args.epochs, [], "fine_tuned"),
        "frozen_encoder": run(
            args.out,
            files,
            args.epochs,
            ["model.strategy=freeze", "model.freeze.trainable_layers=0", "train.learning_rate=1e-3"],
            "frozen_encoder",
        ),  # fmt: skip
    }
    record = {"data": counts, "epochs": args.epochs, "seed": args.seed, "load_average_before": load,
              "load_average_after": os.getloadavg(), "results": results}  # fmt: skip
    (args.out / "qnli_pairs.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    for name, found in results.items():
        print(f"{name}: test accuracy {found['accuracy']:.4f} {found['accuracy_interval']}, "
              f"macro-F1 {found['macro_f1']:.4f} {found['macro_f1_interval']} ({found['seconds']} s)")  # fmt: skip


if __name__ == "__main__":
    main()
