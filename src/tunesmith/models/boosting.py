"""A gradient-boosting model on a table's columns (LightGBM), the baseline beside a tabular
run's fine-tuned score: numbers with their missing cells marked and filled with the training
median, categories one-hot with unseen values ignored, each text as TF-IDF of words. Every
transform is scikit-learn's, fitted on the training rows only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METHOD = "LightGBM on the same columns (numbers as they are, categories one-hot, texts as TF-IDF)"


def _features(text: list[str], numeric: list[str], categorical: list[str]):
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    parts = [(f"text:{name}", TfidfVectorizer(max_features=2000, ngram_range=(1, 2), min_df=1), name) for name in text]
    if numeric:
        parts.append(("numeric", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                      numeric))  # fmt: skip
    if categorical:
        parts.append(("categorical", OneHotEncoder(handle_unknown="ignore", min_frequency=1), categorical))
    return ColumnTransformer(parts, sparse_threshold=1.0)


def _cells(table: pd.DataFrame, text: list[str], numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """The cells as the transforms take them: missing texts empty, missing categories one value."""
    out = pd.DataFrame(index=table.index)
    for name in text:
        out[name] = table[name].map(lambda v: "" if v is None else v)
    for name in numeric:
        out[name] = table[name].astype(float)
    for name in categorical:
        out[name] = table[name].map(lambda v: "(missing)" if v is None else v)
    return out


def boosted_outputs(train: pd.DataFrame, targets: np.ndarray, held_out: list[pd.DataFrame], *, text: list[str],
                    numeric: list[str], categorical: list[str], regression: bool, num_classes: int,
                    seed: int) -> list[np.ndarray]:  # fmt: skip
    """Outputs of a LightGBM model fitted on ``train`` for each table of ``held_out``, shaped as
    a model's logits: per-class log-probabilities (a class the training rows lack gets -30), or
    the predicted value in one column.

    Args:
        train, held_out: tables as data/table.py's ``read_cells`` returns them.
        targets: class ids, or numbers for a regression.
    """
    from lightgbm import LGBMClassifier, LGBMRegressor

    columns = {"text": text, "numeric": numeric, "categorical": categorical}
    transform = _features(**columns)
    matrix = transform.fit_transform(_cells(train, **columns)).astype(np.float32)
    held = [transform.transform(_cells(t, **columns)).astype(np.float32) for t in held_out]
    options = {"random_state": seed, "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31,
               "min_child_samples": min(20, max(2, len(train) // 10)), "verbose": -1, "n_jobs": 1}  # fmt: skip
    if regression:
        model = LGBMRegressor(**options).fit(matrix, targets.astype(float))
        return [model.predict(m).reshape(-1, 1).astype(np.float32) for m in held]
    found = []
    if len(np.unique(targets)) < 2:  # one class among the training rows: that class is all it can say
        for m in held:
            logits = np.full((m.shape[0], num_classes), -30.0, dtype=np.float32)
            logits[:, int(targets[0])] = 0.0
            found.append(logits)
        return found
    model = LGBMClassifier(**options).fit(matrix, targets.astype(int))
    for m in held:
        logits = np.full((m.shape[0], num_classes), -30.0, dtype=np.float32)
        logits[:, model.classes_] = np.maximum(np.log(np.clip(model.predict_proba(m), 1e-13, 1.0)), -30.0)
        found.append(logits)
    return found
