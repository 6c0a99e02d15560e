"""The README documents every config key, and its two set-up commands stay what CI runs."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tunesmith.config import TASK_MODELS, Config

ROOT = Path(__file__).parent.parent


def _keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation)
        elif name == "task":  # a union of one section per task kind
            keys += sorted({key for section in TASK_MODELS.values() for key in _keys(section)})
    return keys


def test_config_reference_mentions_every_key():
    readme = (ROOT / "README.md").read_text()
    reference = readme[readme.index("## Config reference") :]
    missing = [key for key in _keys(Config) if f"`{key}`" not in reference and f"**{key}**" not in reference]
    assert not missing


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh && .venv/bin/tunesmith train\n" in readme
