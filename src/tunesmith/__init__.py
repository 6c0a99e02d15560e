"""tunesmith: supervised fine-tuning of pretrained models, measured, documented and deployable.

Public API (imports are lazy so that ``import tunesmith`` and the CLI start fast):
    train, resume, evaluate, predict, load_config, Config, TextClassifier, TunesmithError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The subpackages tunesmith.train and tunesmith.evaluate share their names with API functions.
# Importing them here, before the functions below are bound, keeps ``tunesmith.train`` the
# function: a later ``import tunesmith.train.loop`` then no longer rebinds the package attribute.
import tunesmith.evaluate
import tunesmith.train  # noqa: F401
from tunesmith.errors import TunesmithError

__version__ = "0.1.0"
__all__ = ["train", "resume", "evaluate", "predict", "load_config", "Config", "TextClassifier", "TunesmithError"]

if TYPE_CHECKING:
    from tunesmith.config import Config, load_config
    from tunesmith.estimator import TextClassifier

_LAZY = {"load_config": "tunesmith.config", "Config": "tunesmith.config", "TextClassifier": "tunesmith.estimator"}


def train(config=None, **options):
    """Runs the whole pipeline; see tunesmith.api.train."""
    from tunesmith import api

    return api.train(config, **options)


def resume(run_dir, **options):
    """Continues an interrupted run; see tunesmith.api.resume."""
    from tunesmith import api

    return api.resume(run_dir, **options)


def evaluate(run_dir, data):
    """Scores a finished run on a labelled file; see tunesmith.api.evaluate."""
    from tunesmith import api

    return api.evaluate(run_dir, data)


def predict(run_dir, texts):
    """Predictions (or generations) for texts; see tunesmith.api.predict."""
    from tunesmith import api

    return api.predict(run_dir, texts)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
