"""Extractive QA on SQuAD v1.1: MiniLM before and after fine-tuning, on held-out dev paragraphs.

    .venv/bin/python benchmarks/squad_qa.py [--epochs 3]

Training data: every question of ../shared/data/squad/train-v1.1.json plus the questions on the
first 70% of the paragraphs of dev-v1.1.json (in file order); the last 30% of dev paragraphs are
held out as the test file. Both are written as SQuAD JSON under the output directory and the
run is an ordinary `tunesmith train` of examples/squad.yaml pointed at them (validation: 10% of
the training paragraphs). "Before" is the same encoder with its new, untrained QA head, scored
by the same post-processing on the same held-out questions. Writes squad_qa.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQUAD = ROOT.parent / "shared" / "data" / "squad"


def write_files(out: Path, held_share: float) -> tuple[Path, Path, dict]:
    train = json.loads((SQUAD / "train-v1.1.json").read_text(encoding="utf-8"))
    dev = json.loads((SQUAD / "dev-v1.1.json").read_text(encoding="utf-8"))
    paragraphs = [(a, p) for a, article in enumerate(dev["data"]) for p in range(len(article["paragraphs"]))]
    cut = round(len(paragraphs) * (1 - held_share))
    first, last = set(paragraphs[:cut]), set(paragraphs[cut:])

    def keep(chosen):
        return {"version": "1.1", "data": [
            {"title": article["title"], "paragraphs": [p for i, p in enumerate(article["paragraphs"]) if (a, i) in chosen]}
            for a, article in enumerate(dev["data"])]}  # fmt: skip

    head = keep(first)
    combined = {"version": "1.1", "data": train["data"] + head["data"]}
    held = keep(last)
    out.mkdir(parents=True, exist_ok=True)
    train_path, held_path = out / "train.json", out / "heldout.json"
    train_path.write_text(json.dumps(combined), encoding="utf-8")
    held_path.write_text(json.dumps(held), encoding="utf-8")

    def count(document):
        return (sum(len(p["paragraphs"]) for p in document["data"]),
                sum(len(q["qas"]) for p in document["data"] for q in p["paragraphs"]))  # fmt: skip

    sizes = {"train_paragraphs_questions": count(combined), "dev_paragraphs_used_for_training": cut,
             "heldout_paragraphs_questions": count(held)}  # fmt: skip
    return train_path, held_path, sizes


def before(config_path: Path, held: Path) -> dict:
    """The untuned encoder with a new QA head, scored like the tuned model."""
    import torch

    from tunesmith.config import load_config
    from tunesmith.models.load import pad_token_id, quiet_transformers, resolve_model
    from tunesmith.tasks import build_task

    quiet_transformers()
    config = load_config(config_path)
    torch.manual_seed(config.runtime.seed)
    task = build_task(config)
    frame, _ = task.read(str(held), config.data)
    task.fit(frame)
    resolved = resolve_model(config.model.name)
    tokenizer = task.load_processor(resolved)
    model, _ = task.load_model(resolved, None)
    features = task.encode(tokenizer, {"test": frame}).features["test"]
    return task.evaluate(model, features, batch_size=32, pad_token_id=pad_token_id(tokenizer), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--held-share", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "squad_qa")
    args = parser.parse_args()
    if (args.out / "run").exists():
        sys.exit(f"{args.out / 'run'} exists; remove it or pass --out")
    train_path, held_path, sizes = write_files(args.out, args.held_share)
    print(json.dumps(sizes))
    overrides = [f"data.train={train_path}", f"data.test={held_path}", f"train.num_epochs={args.epochs}",
                 f"runtime.output_dir={args.out / 'run'}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", "examples/squad.yaml",
                           *[x for o in overrides for x in ("--set", o)]], cwd=ROOT)  # fmt: skip
    if done.returncode:
        sys.exit("training failed")
    seconds = time.perf_counter() - start
    after = json.loads((args.out / "run" / "metrics.json").read_text())
    base = before(args.out / "run" / "config.yaml", held_path)
    result = {**sizes, "epochs": args.epochs, "train_seconds": round(seconds, 1),
              "before": {k: base[k] for k in ("exact_match", "f1", "count")},
              "after": {k: after["test"][k] for k in ("exact_match", "f1", "count")},
              "validation_after": {k: after["validation"][k] for k in ("exact_match", "f1", "count")}}  # fmt: skip
    (args.out / "squad_qa.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
