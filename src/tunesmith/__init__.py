"""tunesmith: supervised fine-tuning of pretrained models, measured, documented and deployable.

Public API (imports are lazy so that ``import tunesmith`` and the CLI start fast):
    train, resume, evaluate, predict, load_config, Config, TextClassifier, TunesmithError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunesmith.errors import TunesmithError

__version__ = "0.1.0"
__all__ = ["train", "resume", "evaluate", "predict", "load_config", "Config", "TextClassifier", "TunesmithError"]

if TYPE_CHECKING:
    from tunesmith.api import evaluate, predict, resume, train
    from tunesmith.config import Config, load_config
    from tunesmith.estimator import TextClassifier

_LAZY = {
    "train": "tunesmith.api", "resume": "tunesmith.api", "evaluate": "tunesmith.api", "predict": "tunesmith.api",
    "load_config": "tunesmith.config", "Config": "tunesmith.config", "TextClassifier": "tunesmith.estimator",
}  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
