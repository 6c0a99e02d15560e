"""Prediction over a file of any size (``tunesmith predict RUN_OR_EXPORT --input FILE``): the file
is read a chunk at a time (data/stream.py), each chunk predicted by the run's model or an
export's (an int8 ONNX one runs by default; serve's ``Predictor``, which feeds the model calls of
similar lengths), and each row written as a JSON line as soon as its chunk is done. Memory holds
one chunk and its predictions, not the file; a progress bar counts the rows. With ``--output``
the lines go through ``runs.new_file``: the file takes its name only when every row is done, so
an interrupted run never leaves a partial file under the name asked for.

Kinds whose inputs are not rows of a table (question answering records, images, chat) and
files that cannot be streamed (a folder, a .json list) are read whole, as before.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tunesmith.data.stream import STREAMED_SUFFIXES, chunks, count_rows
from tunesmith.errors import TunesmithError
from tunesmith.ship.predictor import Predictor, backend_source
from tunesmith.tasks.contract import TableInputs

CHUNK_ROWS = 4096
"""Rows read and predicted at a time: large enough for full model calls of similar lengths, small
enough that a chunk's texts and predictions stay a few MB."""


def input_chunks(task, path: Path, rows: int = CHUNK_ROWS) -> Iterator[list]:
    """The prediction inputs of a file, a chunk at a time where the kind and the format allow,
    else all at once (``Task.read_inputs``)."""
    if isinstance(task, TableInputs) and path.suffix.lower() in STREAMED_SUFFIXES and not path.is_dir():
        for chunk in chunks(path, rows):
            yield task.table_inputs(chunk.frame, f"{path}, {chunk.where}")
        return
    inputs = task.read_inputs(path)
    if not inputs:
        raise TunesmithError(f"nothing to predict: {path} holds no inputs")
    yield inputs


def predict_file(source: str | Path, input_file: str | Path, output: str | Path | None = None, *,
                 onnx_file: str | None = None, threads: int | None = None, backend: str = "auto",
                 chunk_rows: int = CHUNK_ROWS,
                 write: Callable[[str], None] | None = None, progress: bool = True, console=None) -> int:  # fmt: skip
    """Predicts every input of ``input_file`` with a run or an export and writes one JSON line per
    input, in the file's order: to ``output`` (a new file), else to ``write`` (stdout).

    Args:
        onnx_file, threads, backend: as for ``serve`` (an ONNX export's model file; CPU threads a
            call; ``onnx``: a run exported to ONNX first, ship.predictor.backend_source).
        chunk_rows: rows read and predicted at a time.

    Returns:
        The number of predictions written.

    Raises:
        TunesmithError: not a run or export, a kind that does not predict, an unreadable input
            (named with its rows), or an input the task refuses. ``output`` is left as it was.
    """
    from tunesmith.runs import claim_output

    path = Path(input_file)
    if output is not None:
        output = claim_output(output, kind="file", what="--output")  # before the model loads
    if not path.exists():
        raise TunesmithError(f"Input file not found: {path}")
    with backend_source(source, backend, lambda message: print(message, file=sys.stderr)) as loaded:
        predictor = Predictor(loaded, onnx_file=onnx_file, threads=threads, stage="predict")
        return _predict_chunks(predictor, path, output, chunk_rows=chunk_rows, write=write,
                               progress=progress, console=console)  # fmt: skip


def _predict_chunks(predictor: Predictor, path: Path, output: Path | None, *, chunk_rows: int, write, progress: bool,
                    console) -> int:  # fmt: skip
    """predict_file() once the model is loaded."""
    from tunesmith.runs import new_file

    bar = _bar(console, count_rows(path) if path.is_file() else None) if progress else None
    try:
        with new_file(output) if output is not None else contextlib.nullcontext() as handle:
            emit = handle.write if handle is not None else (write or sys.stdout.write)
            written = 0
            for inputs in input_chunks(predictor.scorer, path, chunk_rows):
                rows = predictor.predict(inputs)
                emit("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                written += len(rows)
                if bar is not None:
                    bar[0].update(bar[1], advance=len(rows))
    finally:
        if bar is not None:
            bar[0].stop()
    return written


def _bar(console, total: int | None):
    """A rows-predicted progress bar on stderr (its total when the file's footer gives it)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]predict[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                        TimeElapsedColumn(), console=console or Console(stderr=True), transient=False)  # fmt: skip
    progress.start()
    return progress, progress.add_task("predict", total=total)
