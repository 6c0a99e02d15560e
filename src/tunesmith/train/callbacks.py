"""The loop's only extension point: named events, each a method a callback may override."""

from __future__ import annotations

import time
from typing import Any

from tunesmith.train.checkpoint import LoopState


class Callback:
    """Override any of these; the loop calls them in order on every callback it was given."""

    def on_train_start(self, state: LoopState, total_steps: int) -> None: ...
    def on_step_end(self, state: LoopState, logs: dict[str, Any] | None) -> None: ...
    def on_eval_end(self, state: LoopState, metrics: dict[str, Any]) -> None: ...
    def on_epoch_end(self, state: LoopState) -> None: ...
    def on_train_end(self, state: LoopState) -> None: ...


class Deadline(Callback):
    """Ends training at the first step that finishes after ``deadline`` (a ``time.monotonic()``
    value), the way early stopping does: the last weights are evaluated and checkpointed, the
    best are kept, and the run is finished and scored. ``stopped_at`` is that step (None: the
    run ended on its own). Single-process runs: only rank 0 calls callbacks."""

    def __init__(self, deadline: float):
        self.deadline, self.stopped_at = deadline, None

    def on_step_end(self, state: LoopState, logs: dict[str, Any] | None) -> None:
        if time.monotonic() >= self.deadline and not state.stopped_early:
            state.stopped_early, self.stopped_at = True, state.step


class ProgressBar(Callback):
    """A rich progress bar with loss, throughput and ETA (rank 0 only). When the output is
    not a terminal (a log file, CI), it prints a plain line at every tenth of the run instead."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True, soft_wrap=True)
        self.progress = None

    def on_train_start(self, state: LoopState, total_steps: int) -> None:
        self.total_steps, self.started, self.start_step = total_steps, time.perf_counter(), state.step
        self.line_every = max(1, total_steps // 10)
        if not self.console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} · {task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=state.step, epoch=state.epoch + 1, loss="…", speed="…"
        )

    def on_step_end(self, state: LoopState, logs: dict[str, Any] | None) -> None:
        if logs:
            self.last_logs = logs
        if self.progress is None:
            if state.step % self.line_every == 0 or state.step == self.total_steps:
                self._plain_line(state)
            return
        fields: dict[str, Any] = {"epoch": state.epoch + 1}
        if logs:
            fields["loss"] = f"{logs['loss']:.4f}"
            fields["speed"] = f"{logs['samples_per_second']:.1f} samples/s, {logs['tokens_per_second']:.0f} tok/s"
        self.progress.update(self.task, completed=state.step, **fields)

    def _plain_line(self, state: LoopState) -> None:
        elapsed = time.perf_counter() - self.started
        done = max(state.step - self.start_step, 1)
        eta = elapsed / done * (self.total_steps - state.step)
        logs = getattr(self, "last_logs", None)
        speed = f" loss {logs['loss']:.4f}, {logs['samples_per_second']:.1f} samples/s," if logs else ""
        self.console.print(
            f"train step {state.step}/{self.total_steps} (epoch {state.epoch + 1}){speed} "
            f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s",
            highlight=False,
        )

    def on_eval_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        self.console.print(f"  step {state.step} validation: {shown}", highlight=False)

    def on_train_end(self, state: LoopState) -> None:
        if self.progress is not None:
            self.progress.stop()


class Throughput:
    """Counts examples and non-pad tokens between log points."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.examples, self.tokens = time.perf_counter(), 0, 0

    def add(self, examples: int, tokens: int) -> None:
        self.examples += examples
        self.tokens += tokens

    def rates(self) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.examples / elapsed, self.tokens / elapsed
