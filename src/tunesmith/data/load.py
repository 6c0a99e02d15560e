"""Reading labelled data from files, folders and installed packages into a DataFrame."""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunesmith.errors import TunesmithError

TABLE_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet"}
LABEL_NAMES = ("label", "labels", "target", "class", "category", "y", "score")
TEXT_NAMES = ("text", "sentence", "content", "document", "review", "sms", "message", "body")


@dataclass
class LoadedTable:
    """A table read from one source, with what was noticed on the way."""

    frame: pd.DataFrame
    source: str
    sha256: str
    replaced_characters: int = 0
    notes: list[str] = field(default_factory=list)


def jsonl_records(path: Path):
    """Yields ("FILE, line N", parsed value) for every non-empty line of a JSONL file.

    Raises:
        TunesmithError: the file is not UTF-8, or a line is not JSON (naming the file and line).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise TunesmithError(f"{path}: not UTF-8 text (offset {error.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:
            raise TunesmithError(f"{where}: not JSON ({error.msg})") from None


def resolve_source(spec: str) -> Path:
    """Turns a data spec into a path: a plain path, or ``package:NAME/sub/path`` inside an
    installed Python package.

    Raises:
        TunesmithError: the package is not installed or the path does not exist.
    """
    if spec.startswith("package:"):
        package, _, rest = spec.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise TunesmithError(
                f"Data source {spec!r}: Python package {package!r} is not installed (pip install {package})"
            )
        path = Path(next(iter(found.submodule_search_locations))) / rest
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise TunesmithError(f"Data file not found: {path}")
    return path


def _decode(raw: bytes, path: Path, errors: str) -> tuple[str, int]:
    try:
        return raw.decode("utf-8-sig"), 0
    except UnicodeDecodeError as error:
        if errors == "strict":
            start = error.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
            line = raw[:start].count(b"\n") + 1
            raise TunesmithError(
                f"{path}: not UTF-8 text (byte 0x{raw[start]:02x} at line {line}, "
                f"offset {start}). Re-save the file as UTF-8, or set "
                "data.encoding_errors=replace to load it with U+FFFD for bad bytes."
            ) from None
    text = raw.decode("utf-8-sig", errors="replace")
    return text, text.count("\ufffd")


def _read_folder(path: Path, errors: str) -> LoadedTable:
    """Reads a folder of ``<label>/<anything>.txt`` files, one example per file."""
    rows, digest, replaced = [], hashlib.sha256(), 0
    label_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for label_dir in label_dirs:
        for file in sorted(label_dir.glob("*.txt")):
            raw = file.read_bytes()
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + raw)
            text, bad = _decode(raw, file, errors)
            replaced += bad
            rows.append({"text": text, "label": label_dir.name})
    if not rows:
        raise TunesmithError(
            f"{path}: a data folder must hold one sub-folder per label with .txt files in it; none were found"
        )
    return LoadedTable(pd.DataFrame(rows), str(path), digest.hexdigest(), replaced)


def _read_text_table(text: str, path: Path, suffix: str, column_names: list[str] | None) -> pd.DataFrame:
    if suffix in (".csv", ".tsv"):
        header = None if column_names else "infer"
        return pd.read_csv(
            io.StringIO(text),
            sep="\t" if suffix == ".tsv" else ",",
            header=header,
            names=column_names,
            quoting=3 if suffix == ".tsv" else 0,  # TSV: quotes are text, not delimiters
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise TunesmithError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        return pd.DataFrame.from_records(records)
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        raise TunesmithError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if isinstance(loaded, dict):
        loaded = loaded.get("data", loaded)
    if not isinstance(loaded, list):
        raise TunesmithError(f"{path}: a .json data file must hold a list of records")
    return pd.DataFrame.from_records(loaded)


def read_table(spec: str, *, column_names: list[str] | None = None, encoding_errors: str = "strict") -> LoadedTable:
    """Reads one data source into a DataFrame.

    Args:
        spec: file path, folder of ``<label>/*.txt``, or ``package:NAME/sub/path``.
        column_names: names for a header-less CSV/TSV (implies there is no header row).
        encoding_errors: "strict" raises on bytes that are not UTF-8; "replace" substitutes.

    Raises:
        TunesmithError: missing, unreadable, malformed or empty input, naming file and line.
    """
    path = resolve_source(spec)
    if path.is_dir():
        return _read_folder(path, encoding_errors)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise TunesmithError(
            f"{path}: unsupported file type {suffix or '(none)'}; "
            f"use one of {', '.join(sorted(TABLE_SUFFIXES))} or a folder of <label>/*.txt"
        )
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    replaced = 0
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(io.BytesIO(raw))
        else:
            text, replaced = _decode(raw, path, encoding_errors)
            frame = _read_text_table(text, path, suffix, column_names)
    except TunesmithError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as error:
        raise TunesmithError(f"{path}: could not be read as {suffix[1:].upper()}: {error}") from None
    if frame.empty:
        raise TunesmithError(f"{path}: the file holds no rows")
    # Rows are numbered by position: a Parquet file saved with its index brings that index back.
    named_index = any(name is not None for name in frame.index.names)
    frame = frame.reset_index(drop=not named_index)
    frame.columns = [str(c) for c in frame.columns]
    return LoadedTable(frame, str(path), digest, replaced)


def detect_columns(
    frame: pd.DataFrame, text_column: str | None, label_column: str | None, source: str
) -> tuple[str, str]:
    """Picks the text and label columns, given or detected, and checks they exist.

    Raises:
        TunesmithError: a named column is missing, or the choice is ambiguous.
    """
    columns = list(frame.columns)
    for role, name in (("text", text_column), ("label", label_column)):
        if name is not None and name not in columns:
            raise TunesmithError(f"{source}: no column {name!r} (data.{role}_column); the columns are {columns}")
    lowered = {c.lower(): c for c in columns}
    if label_column is None:
        label_column = next((lowered[n] for n in LABEL_NAMES if n in lowered and lowered[n] != text_column), None)
    if text_column is None:
        text_column = next((lowered[n] for n in TEXT_NAMES if n in lowered and lowered[n] != label_column), None)
    if text_column is None:
        others = [c for c in columns if c != label_column and frame[c].dtype == object]
        if len(others) == 1:
            text_column = others[0]
    if label_column is None:
        others = [c for c in columns if c != text_column]
        if len(others) == 1:
            label_column = others[0]
    if text_column is None or label_column is None:
        raise TunesmithError(
            f"{source}: cannot tell which columns hold the text and the label among {columns}; "
            "set data.text_column and data.label_column"
        )
    return text_column, label_column
