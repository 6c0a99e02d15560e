"""Raw prediction inputs shared by the text tasks: a file of texts (``tunesmith predict
--input``), and the check that a Python list holds texts."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.load import detect_columns, read_table
from tunesmith.errors import TunesmithError


def read_texts(path: Path) -> list[str]:
    """The texts of a prediction input file: one per line of a .txt file, or the text column of
    a table (its only column, or the one that looks like text)."""
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise TunesmithError(f"Input file not found: {path}")
        try:
            return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as error:
            raise TunesmithError(f"{path}: not UTF-8 text (offset {error.start})") from None
    table = read_table(str(path))
    return table_texts(table.frame, table.source)


def table_texts(frame, source: str) -> list[str]:
    """The texts of a table: its only column, or the one that looks like text (a missing cell
    is an empty text)."""
    columns = list(frame.columns)
    text_column = columns[0] if len(columns) == 1 else detect_columns(frame, None, None, source)[0]
    return frame[text_column].fillna("").astype(str).tolist()


def check_texts(inputs: list, kind: str) -> list[str]:
    """``inputs`` as texts; refuses an item that is not one (a question/context pair, a number),
    naming its position."""
    for number, item in enumerate(inputs, 1):
        if not isinstance(item, str):
            shown = str(item)[:80]
            raise TunesmithError(
                f"input {number}: a {kind} run takes texts, not a {type(item).__name__} ({shown!r}); "
                "--question/--context are for question_answering runs"
            )
    return list(inputs)


def per_token_export_batch(processor, features: list[dict]):
    """Token ids (and token types) padded to the batch's longest row, for an exported model whose
    output is per token (taggers, QA readers): ``row_lengths`` cuts each row's output back out."""
    import numpy as np

    from tunesmith.data.batching import pad_batch
    from tunesmith.models.load import pad_token_id
    from tunesmith.tasks.contract import ExportBatch

    names = [k for k in ("input_ids", "token_type_ids") if k in features[0]]
    batch = pad_batch([{k: f[k] for k in names} for f in features], pad_token_id(processor))
    names.insert(1, "attention_mask")
    return ExportBatch(inputs={k: batch[k].numpy().astype(np.int64) for k in names},
                       dynamic_axes={k: {0: "batch", 1: "sequence"} for k in names},
                       row_lengths=[len(f["input_ids"]) for f in features])  # fmt: skip
