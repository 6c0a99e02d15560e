"""Leakage detection: test rows planted in the SST-2 training file, verbatim and lightly edited.

    .venv/bin/python benchmarks/leakage.py

Copies --copies rows of ../shared/data/sst2/test.tsv verbatim into train.tsv and --copies more
with light edits (case changed, punctuation changed, and one word replaced), each seeded, at
random places; then runs `tunesmith inspect` on (planted train, test) with the label-error step
off, and counts how many planted rows it reports as exact and as near leaks. The whole inspect
run is timed (it is also the 60,614-row timing for issue 5).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def edit(text: str, rng: np.random.Generator, vocabulary: list[str]) -> str:
    """Case, punctuation and one word: what a copy-paste with small changes looks like."""
    words = text.split()
    content = [i for i, w in enumerate(words) if any(c.isalpha() for c in w)]
    position = int(rng.choice(content)) if content else 0
    replacement = str(rng.choice(vocabulary))
    while replacement == words[position]:
        replacement = str(rng.choice(vocabulary))
    words[position] = replacement
    edited = " ".join(w for w in words if w not in {".", ",", "!", "?"})  # punctuation dropped
    return edited.capitalize() + " !" if rng.random() < 0.5 else edited.upper()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "leakage.json")
    args = parser.parse_args()
    if not (SST2 / "train.tsv").is_file():
        sys.exit(f"SST-2 not found under {SST2}: this benchmark needs ../shared/data beside the repository")

    from tunesmith.config import load_config
    from tunesmith.data.inspection import inspect_data

    train = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=3)
    test = pd.read_csv(SST2 / "test.tsv", sep="\t", quoting=3)
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(test), size=2 * args.copies, replace=False)
    verbatim, edited = chosen[: args.copies], chosen[args.copies :]
    vocabulary = sorted({w for s in train["sentence"].head(5000) for w in s.split() if w.isalpha()})
    planted = pd.concat(
        [
            test.iloc[verbatim][["sentence", "label"]],
            pd.DataFrame(
                {
                    "sentence": [edit(test["sentence"].iat[i], rng, vocabulary) for i in edited],
                    "label": test["label"].iloc[edited].to_numpy(),
                }  # fmt: skip
            ),
        ],
        ignore_index=True,
    )
    places = np.sort(rng.choice(len(train) + len(planted), size=len(planted), replace=False))
    combined = np.empty(len(train) + len(planted), dtype=object)
    mask = np.zeros(len(combined), dtype=bool)
    mask[places] = True
    with tempfile.TemporaryDirectory() as scratch:
        merged = pd.DataFrame(index=range(len(combined)), columns=["sentence", "label"])
        order = rng.permutation(len(planted))
        merged.loc[mask] = planted.iloc[order].to_numpy()
        merged.loc[~mask] = train[["sentence", "label"]].to_numpy()
        train_path = Path(scratch) / "train_planted.tsv"
        merged.to_csv(train_path, sep="\t", index=False)
        config = load_config(None, ["inspect.label_errors=off"])
        start = time.perf_counter()
        report = inspect_data(config, [str(train_path), str(SST2 / "test.tsv")], Path(scratch) / "report",
                              progress=True, log=print)  # fmt: skip
        seconds = time.perf_counter() - start
    leaks = report["leakage"]["test"]
    exact_found = {r["row"] - 1 for r in leaks["exact"]}
    near_found = {r["row"] - 1 for r in leaks["near"]}
    result = {
        "train_rows": len(merged), "copies": args.copies, "seed": args.seed, "inspect_seconds": seconds,
        "verbatim_found": len(set(verbatim.tolist()) & exact_found),
        "edited_found": len(set(edited.tolist()) & (near_found | exact_found)),
        "edited_missed": [test["sentence"].iat[i] for i in sorted(set(edited.tolist()) - near_found - exact_found)],
        "other_test_rows_reported": len((exact_found | near_found) - set(chosen.tolist())),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
