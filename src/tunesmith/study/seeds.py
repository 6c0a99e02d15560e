"""``tunesmith train CONFIG --seeds N``: the same config trained with N seeds, and the spread of
its scores. Bootstrap intervals show how much a score moves with the test rows; this shows how
much it moves with the seed (initialisation of the head, data order, dropout)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config import Config, config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.study.cv import summarize


def run_seeds(config: Config, out: Path, seeds: int, *, train: Callable, console=None) -> dict[str, Any]:
    """Runs ``seeds`` trainings into ``out/seed-S`` (S = runtime.seed, +1, ...) and writes
    ``out/seeds.json`` and ``out/seeds.md`` with the mean, std and per-seed test metrics
    (validation metrics when there is no test split).

    Args:
        train: the function that runs one training (``tunesmith.api.train``).
    """
    out = Path(out)
    if out.exists():
        raise TunesmithError(f"{out} already exists; choose a new runtime.output_dir")
    out.mkdir(parents=True)
    base = config.model_dump(mode="json")
    runs, scores = [], []
    for offset in range(seeds):
        seed = config.runtime.seed + offset
        tree = json.loads(json.dumps(base))
        tree["runtime"].update(seed=seed, output_dir=str(out / f"seed-{seed}"))
        result = train(config_from_dict(tree, f"seed {seed}"), console=console)
        split = "test" if "test" in result.metrics else "validation"
        runs.append({"seed": seed, "run": str(result.run_dir), "split": split})
        scores.append({k: v for k, v in result.metrics.get(split, {}).items() if k != "confidence_intervals"})
    report = {"seeds": [r["seed"] for r in runs], "split": runs[0]["split"], "summary": summarize(scores), "runs": runs}
    (out / "seeds.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = [
        f"# {seeds} seeds ({report['split']} split)",
        "",
        "| metric | mean | std | per seed |",
        "|---|---|---|---|",
    ]
    for name, values in report["summary"].items():
        lines.append(f"| {name} | {values['mean']:.4f} | {values['std']:.4f} | "
                     + ", ".join(f"{v:.4f}" for v in values["folds"] if v is not None) + " |")  # fmt: skip
    (out / "seeds.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
