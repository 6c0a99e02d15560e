"""Reading a prediction input file a piece at a time, so that predicting over a file holds one
chunk of it in memory however large it is: Parquet by record batches (pyarrow), CSV and TSV by
pandas' chunked reader, JSONL and .txt line by line. Cells are read as ``read_table`` reads them
(text, an empty cell missing); a malformed line is named with its file and line.

Written here rather than taken whole from a library: pyarrow and pandas do the reading; what is
ours is one iterator over the four formats with the project's error messages and row numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunesmith.data.load import parse_json
from tunesmith.errors import TunesmithError

STREAMED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet", ".txt")
"""The input files that are read in chunks (others are read whole)."""


@dataclass
class Chunk:
    """Consecutive rows of a file: ``frame`` (a .txt file's lines as a ``text`` column) and the
    1-based number of its first row (data row: after a CSV's header)."""

    frame: pd.DataFrame
    first_row: int

    @property
    def where(self) -> str:
        return f"rows {self.first_row}-{self.first_row + len(self.frame) - 1}"


def count_rows(path: Path) -> int | None:
    """The rows of a Parquet file from its footer; None for the other formats (not known
    without reading the file through)."""
    if path.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def chunks(path: Path, rows: int) -> Iterator[Chunk]:
    """The rows of ``path`` in chunks of at most ``rows``.

    Raises:
        TunesmithError: a missing file, another format, bytes that are not UTF-8, a line that is
            not a JSON object, or a file with no rows (each naming the file and line).
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise TunesmithError(f"Input file not found: {path}")
    if suffix not in STREAMED_SUFFIXES:
        raise TunesmithError(f"{path}: cannot stream a {suffix or 'suffix-less'} file; use one of "
                             f"{', '.join(STREAMED_SUFFIXES)}")  # fmt: skip
    reader = {".parquet": _parquet, ".jsonl": _jsonl, ".txt": _lines}.get(suffix, _delimited)
    empty = True
    try:
        for chunk in reader(path, rows):
            if len(chunk.frame):
                empty = False
                yield chunk
    except UnicodeDecodeError as error:
        raise TunesmithError(f"{path}: not UTF-8 text (byte {error.start} of a chunk)") from None
    except (pd.errors.ParserError, ValueError) as error:
        raise TunesmithError(f"{path}: could not be read as {suffix[1:].upper()}: {error}") from None
    if empty:
        raise TunesmithError(f"{path}: the file holds no rows")


def _parquet(path: Path, rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    first = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        frame = batch.to_pandas()
        frame.columns = [str(c) for c in frame.columns]
        yield Chunk(frame.reset_index(drop=True), first)
        first += len(frame)


def _delimited(path: Path, rows: int) -> Iterator[Chunk]:
    tsv = path.suffix.lower() == ".tsv"
    first = 1
    with pd.read_csv(path, sep="\t" if tsv else ",", quoting=3 if tsv else 0, dtype=str, keep_default_na=False,
                     na_values=[""], chunksize=rows, encoding="utf-8") as reader:  # fmt: skip
        for frame in reader:
            frame.columns = [str(c) for c in frame.columns]
            yield Chunk(frame.reset_index(drop=True), first)
            first += len(frame)


def _jsonl(path: Path, rows: int) -> Iterator[Chunk]:
    records: list = []
    first = 1
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = parse_json(line, f"{path}, line {number}")
            if not isinstance(record, dict):
                raise TunesmithError(f"{path}, line {number}: a record is a JSON object, not {json.dumps(record)[:60]}")
            records.append(record)
            if len(records) == rows:
                yield Chunk(pd.DataFrame.from_records(records), first)
                first, records = first + rows, []
    if records:
        yield Chunk(pd.DataFrame.from_records(records), first)


def _lines(path: Path, rows: int) -> Iterator[Chunk]:
    texts: list[str] = []
    first = 1
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.strip():
                texts.append(line)
            if len(texts) == rows:
                yield Chunk(pd.DataFrame({"text": texts}), first)
                first, texts = first + rows, []
    if texts:
        yield Chunk(pd.DataFrame({"text": texts}), first)
