"""What the data stage did, as lines for the user: sources, cleaning, splits, overlap,
augmentation, balance, and a class-imbalance hint."""

from __future__ import annotations

from tunesmith.data.overlap import overlap_warnings
from tunesmith.data.prepare import PreparedData


def data_lines(data: PreparedData, *, suggest_balance: bool = True) -> list[str]:
    """The lines ``tunesmith train`` prints after the data stage (from ``data.manifest`` and
    ``data.changes``); with ``suggest_balance`` (the task kind allows data.balance), a hint to
    balance a skewed training split."""
    manifest = data.manifest
    lines = []
    for name, entry in manifest["sources"].items():
        lines.append(f"Loaded {name} from {entry['source']}: cleaning {entry['cleaning']}")
        if entry["replaced_characters"]:
            lines.append(f"  {entry['replaced_characters']} bytes that were not UTF-8 were replaced by U+FFFD")
        lines += [f"  warning: {note}" for note in entry.get("notes", [])]  # control characters, I- starts
    if manifest.get("changes"):
        lines.append(f"Data changes (each row in data_changelog.jsonl): {manifest['changes']}")
    skipped = [c for c in data.changes if c.get("change") == "skipped_unreadable_image"]
    lines += [f"  skipped unreadable image {c['path']}: {c['reason']}" for c in skipped[:10]]
    if len(skipped) > 10:
        lines.append(f"  ... and {len(skipped) - 10} more (data_changelog.jsonl lists them)")
    lines.append("Splits: " + ", ".join(f"{n} {info['rows']}" for n, info in manifest["splits"].items()))
    lines += overlap_warnings(manifest.get("overlap", {}))
    augmented = manifest.get("augment")
    if augmented:
        lines.append(f"Augmented train: {augmented['rows_before']} -> {augmented['rows_after']} rows "
                     f"{augmented['by_operation']}")  # fmt: skip
    balance = manifest.get("balance")
    if balance:
        lines.append(f"Balanced train by {balance['method']}: {balance['rows_before']} -> {balance['rows_after']} "
                     f"rows, per class {balance['labels_after']}")  # fmt: skip
    labels = manifest["splits"]["train"].get("labels")
    if suggest_balance and isinstance(labels, dict) and labels and all(isinstance(v, int) for v in labels.values()):
        ratio = max(labels.values()) / max(min(labels.values()), 1)
        if ratio >= 3 and manifest.get("balance_method", "none") == "none":
            lines.append(f"Class imbalance {ratio:.1f}:1 in train {labels}: consider "
                         "data.balance.method=class_weights (or oversample)")  # fmt: skip
    return lines
