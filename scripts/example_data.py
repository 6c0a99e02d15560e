"""Regenerates examples/data/fashion_mnist: the small Fashion-MNIST excerpt that
examples/fashion_mnist.yaml runs on from a fresh clone (source and licence in
examples/data/README.md). The other examples read Hugging Face Hub datasets, which are fetched
when a run first needs them, not shipped.

    .venv/bin/python scripts/example_data.py [--fashion-mnist /usr/share/datasets/fashion-mnist]
        [--out examples/data]

Deterministic: the images are drawn per class with fixed numpy seeds from the Debian package
dataset-fashion-mnist (``apt-get install dataset-fashion-mnist``) and written as
``<label>/<n>.png`` (n: the image's index in the IDX file) with the label names and per-class
sampling of benchmarks/fashion_mnist.py, so the excerpt has the layout of the benchmark's
folders. The folder is written beside --out's and then swapped in whole, so --out's README.md is
never touched.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"fashion_train_per_class": 30, "fashion_test_per_class": 10}


def _benchmark():
    """benchmarks/fashion_mnist.py, for its label names and per-class sampling (benchmarks/ is
    not a package)."""
    spec = importlib.util.spec_from_file_location("fashion_mnist_benchmark", ROOT / "benchmarks" / "fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replace(folder: Path, write: Callable[[Path], None]) -> None:
    """Writes a dataset's folder beside ``folder``, then swaps it in whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def fashion_mnist(source: Path, out: Path) -> None:
    """30 images per class from the training set and 10 per class from the test set, as PNGs."""
    from PIL import Image

    benchmark = _benchmark()
    for split, stem, count, seed in (("train", "train", SIZES["fashion_train_per_class"], 0),
                                     ("test", "t10k", SIZES["fashion_test_per_class"], 1)):  # fmt: skip
        images = np.frombuffer(gzip.open(source / f"{stem}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
        labels = np.frombuffer(gzip.open(source / f"{stem}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        images = images.reshape(-1, 28, 28)
        for i in benchmark.per_class(labels, count, seed=seed):
            folder = out / split / benchmark.NAMES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], "L").save(folder / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion-mnist", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "data")
    args = parser.parse_args()
    if not (args.fashion_mnist / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"{args.fashion_mnist} has no Fashion-MNIST: apt-get install dataset-fashion-mnist")
    _replace(args.out / "fashion_mnist", lambda o: fashion_mnist(args.fashion_mnist, o))
    files = [p for p in (args.out / "fashion_mnist").rglob("*") if p.is_file()]
    print(f"fashion_mnist: {len(files)} files, {sum(p.stat().st_size for p in files):,} bytes")


if __name__ == "__main__":
    main()
