"""The tasks: one module per task kind; ``build_task`` picks the one a config asks for."""

from tunesmith.tasks.build import Stage, build_task, require_stage, stage_table

__all__ = ["Stage", "build_task", "require_stage", "stage_table"]
