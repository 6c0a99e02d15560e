"""The tasks: one module per task kind; ``build_task`` picks the one a config asks for."""

from tunesmith.tasks.build import build_task

__all__ = ["build_task"]
