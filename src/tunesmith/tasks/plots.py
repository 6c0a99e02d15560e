"""A classifier's plots: the confusion matrix and the reliability diagram of one split."""

from __future__ import annotations

from pathlib import Path


def plot_confusion_matrix(path: Path, matrix: list[list[int]], label_names: list[str], title: str) -> None:
    """Saves a row-normalised confusion matrix with raw counts in each cell as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(label_names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    axes.set_yticks(range(len(label_names)), label_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if len(label_names) <= 30:
        for i in range(len(label_names)):
            for j in range(len(label_names)):
                colour = "white" if rates[i, j] > 0.5 else "black"
                axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of true class")
    save_figure(figure, path, dpi=120)


def save_figure(figure, path: Path, *, dpi: int = 110) -> None:
    """Lays out ``figure``, writes it to ``path`` as a PNG (through a temporary file, so a
    failed write leaves no half image) and closes it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=dpi)
    plt.close(figure)
    tmp.replace(path)


def plot_reliability(path: Path, table: list[dict], ece: float, title: str, *, after: tuple[float, list[dict]] | None = None) -> None:  # fmt: skip
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.8, 4.4))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    series = [("model", ece, table, "tab:blue")]
    if after is not None:
        series.append(("temperature-scaled", after[0], after[1], "tab:orange"))
    for name, value, bins, colour in series:
        axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=colour,
                  label=f"{name} (ECE {value:.3f})")  # fmt: skip
    axes.set_xlabel("confidence (highest class probability)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
