"""Reading labelled data from files, folders, installed packages and Hugging Face datasets
(data/hf_datasets.py) into a DataFrame."""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tunesmith.data.hf_datasets import SPLIT_NAME, DatasetTable, read_arrow, read_hub, read_saved, saved_kind
from tunesmith.errors import TunesmithError

TABLE_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".arrow"}
LABEL_NAMES = ("label", "labels", "target", "class", "category", "y", "score")
TEXT_NAMES = ("text", "sentence", "content", "document", "review", "sms", "message", "body")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""C0 control characters and DEL, except tab, newline and carriage return: never text."""
JSON_ESCAPE = re.compile(r"\\u00(?:[01][0-9a-f]|7f)", re.IGNORECASE)  # may decode to a control character
NUL_HINT = (
    "NUL bytes are never text, and a CSV reader silently cuts a text at the first one: "
    "remove them, e.g. tr -d '\\000' < FILE > FIXED"
)
JSON_NUL_HINT = "NUL characters are never text: remove the \\u0000 escapes from the JSON strings"


@dataclass
class LoadedTable:
    """A table read from one source, with what was noticed on the way."""

    frame: pd.DataFrame
    source: str
    sha256: str
    replaced_characters: int = 0
    control_characters: int = 0
    """Control characters (other than tab, newline and CR) replaced by spaces."""
    notes: list[str] = field(default_factory=list)
    """What a person should hear about, e.g. where control characters were replaced."""
    dataset: dict[str, Any] | None = None
    """For a Hugging Face datasets source: its format, split and ClassLabel names (hf_datasets.py)."""

    def manifest_fields(self) -> dict[str, Any]:
        """What reading changed, for the source's data manifest entry: bytes that were not UTF-8
        and, when there were any, control characters and the notes naming their rows; for a
        datasets source, what it was (``dataset``)."""
        fields: dict[str, Any] = {"replaced_characters": self.replaced_characters}
        if self.control_characters:
            fields["control_characters"] = self.control_characters
        if self.notes:
            fields["notes"] = self.notes
        if self.dataset:
            fields["dataset"] = self.dataset
        return fields


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows (write null for a missing value)")


def parse_json(text: str, where: str, *, problem: str = "not valid JSON") -> Any:
    """``json.loads`` that accepts control characters inside strings (they are reported and
    replaced later, with their row) and refuses NaN/Infinity, which are not JSON.

    Raises:
        TunesmithError: not JSON, naming ``where`` (and the line within the text when it has
            several lines).
    """
    try:
        return json.loads(text, strict=False, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        at = f", line {error.lineno}" if "\n" in text.strip() else ""
        raise TunesmithError(f"{where}{at}: {problem} ({error.msg})") from None
    except ValueError as error:
        raise TunesmithError(f"{where}: {error}") from None


def refuse_nul(text: str, where: str) -> None:
    """Raises TunesmithError naming the line of the first NUL in ``text``, if it holds one."""
    first = text.find("\0")
    if first < 0:
        return
    line = 1 + text.count("\n", 0, first)
    total = text.count("\0")
    more = f" ({total} NUL bytes in all)" if total > 1 else ""
    utf16 = " The file is probably UTF-16: re-save it as UTF-8." if total * 4 > len(text) else ""
    raise TunesmithError(f"{where}, line {line}: holds a NUL byte (\\x00){more}. {NUL_HINT}.{utf16}")


def scrub(value: Any) -> tuple[Any, Counter]:
    """``value`` with the control characters of every string in it (nested lists and dicts
    too) replaced by spaces, and a count per character (NUL included; callers refuse it)."""
    if isinstance(value, str):
        found = CONTROL_CHARACTERS.findall(value)
        return (CONTROL_CHARACTERS.sub(" ", value), Counter(found)) if found else (value, Counter())
    counts: Counter = Counter()
    if isinstance(value, list):
        out = []
        for item in value:
            item, found = scrub(item)
            out.append(item)
            counts += found
        return out, counts
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out[key], found = scrub(item)
            counts += found
        return out, counts
    return value, counts


def describe_characters(counts: Counter) -> str:
    """Counts per control character as text, e.g. ``\\x01 x2, \\x1b``."""
    return ", ".join(f"\\x{ord(c):02x}" + (f" x{n}" if n > 1 else "") for c, n in sorted(counts.items()))


def control_character_error(where: str, character: str, hint: str = NUL_HINT) -> TunesmithError:
    """The error for a control character a reader refuses: a NUL in any reader, and every one
    in a reader where a space would change the data (CoNLL columns are split on whitespace).

    Args:
        where: the file and the place in it (line, row and column, or question).
        character: the character found.
        hint: how to fix it; the default says how to remove NUL bytes.
    """
    name = "a NUL character (\\x00)" if character == "\0" else f"the control character \\x{ord(character):02x}"
    return TunesmithError(f"{where}: holds {name}. {hint.rstrip('.')}.")


def control_character_note(
    source: str, counts: Counter, places: list, unit: str = "data rows"
) -> tuple[int, list[str]]:
    """How many control characters a reader replaced by spaces, and the note (log, data manifest)
    that names them per character and where they were; ``(0, [])`` when there were none.

    Every reader that replaces control characters reports them through this one function, so a
    note reads the same for a CSV row, a JSONL line and a SQuAD question.

    Args:
        source: the file (or folder) read.
        counts: count per control character replaced.
        places: where they were, in file order (row or line numbers, or question names); the
            first ten are shown.
        unit: what ``places`` are ("data rows", "lines"; "" when each place names itself).
    """
    total = sum(counts.values())
    if not total:
        return 0, []
    shown = ", ".join(map(str, places[:10])) + (f" and {len(places) - 10} more" if len(places) > 10 else "")
    unit = unit if len(places) > 1 else unit.removesuffix("s")
    where = " in " + " ".join(part for part in (unit, shown) if part) if places else ""
    what = f"{total} control character{'s' if total > 1 else ''} ({describe_characters(counts)})"
    return total, [f"{source}: {what}{where} {'were' if total > 1 else 'was'} replaced by spaces"]


def jsonl_records(path: Path, *, counts: Counter | None = None, lines: list[int] | None = None):
    """Yields ("FILE, line N", parsed value) for every non-empty line of a JSONL file. Control
    characters in strings are replaced by spaces (counted per character in ``counts`` and their
    line numbers appended to ``lines``, when given); a NUL is refused with its line.

    Raises:
        TunesmithError: the file is not UTF-8, or a line is not JSON or holds a NUL (naming the
            file and line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TunesmithError(f"{path}: not UTF-8 text (offset {error.start})") from None
    refuse_nul(text, str(path))
    # split, not splitlines: JSON strings may hold U+2028 or a form feed, which splitlines breaks on.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        record, found = scrub(parse_json(line, where, problem="not JSON"))
        if found.get("\0"):
            raise control_character_error(where, "\0", JSON_NUL_HINT)  # raw NUL bytes were refused above
        if counts is not None:
            counts += found
        if found and lines is not None:
            lines.append(number)
        yield where, record


def record_error(where: str, value: Any, example: str = '{"text": "...", "label": "..."}') -> TunesmithError:
    """The error for a JSON value that should have been a record (an object); ``example`` shows
    a record of the task's kind."""
    shown = json.dumps(value, ensure_ascii=False)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    kinds = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"), (list, "a list"))
    kind = next((name for t, name in kinds if isinstance(value, t)), "null")
    return TunesmithError(
        f"{where} holds {shown} ({kind}), not a record {{...}}: each record must be a JSON object such as {example}"
    )


def resolve_source(spec: str) -> Path:
    """Turns a data spec into a path: a plain path, or ``package:NAME/sub/path`` inside an
    installed Python package.

    Raises:
        TunesmithError: the package is not installed, the path leaves the package or does not exist.
    """
    if spec.startswith("package:"):
        package, _, rest = spec.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise TunesmithError(
                f"Data source {spec!r}: Python package {package!r} is not installed (pip install {package})"
            )
        folder = Path(next(iter(found.submodule_search_locations))).resolve()
        path = (folder / rest).resolve()
        # A rest such as "/tmp/x.csv" or "../../x" would name a file outside the package.
        if Path(rest).is_absolute() or not path.is_relative_to(folder):
            raise TunesmithError(f"Data source {spec!r}: the path after the package name must lie inside {folder}")
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise TunesmithError(f"Data file not found: {path}")
    return path


def locate_source(spec: str) -> tuple[Path, str | None]:
    """A local data spec as (path, split): ``PATH:SPLIT`` names a split of a save_to_disk
    DatasetDict folder. A path that exists is read whole, so a name holding a colon still works.

    Raises:
        TunesmithError: the path does not exist (with or without a ``:SPLIT`` suffix).
    """
    try:
        return resolve_source(spec), None
    except TunesmithError:
        head, colon, split = spec.rpartition(":")
        if not (colon and head and SPLIT_NAME.fullmatch(split)):
            raise
        try:
            folder = resolve_source(head)
        except TunesmithError:
            raise TunesmithError(f"Data file not found: {Path(spec).expanduser()}") from None
    if not folder.is_dir():
        raise TunesmithError(f"{spec}: :{split} names a split, but {folder} is a file, not a datasets "
                             f"save_to_disk DatasetDict folder; remove :{split}")  # fmt: skip
    return folder, split


def reads_through_datasets(spec: str) -> bool:
    """Whether ``read_table`` reads ``spec`` through Hugging Face ``datasets``: a ``hf:`` id, a
    save_to_disk folder (or ``FOLDER:SPLIT``) or an ``.arrow`` file. The kinds that parse their
    own file formats (CoNLL, SQuAD JSON) read these as tables instead; a spec that does not
    exist is theirs to report."""
    if spec.startswith("hf:"):
        return True
    try:
        path, split = locate_source(spec)
    except TunesmithError:
        return False
    return (path.is_dir() and (split is not None or saved_kind(path) is not None)) or path.suffix.lower() == ".arrow"


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


def _read_folder(path: Path, errors: str, *, refuse: bool) -> LoadedTable:
    """Reads a folder of ``<label>/<anything>.txt`` files, one example per file."""
    rows, digest, replaced = [], hashlib.sha256(), 0
    label_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for label_dir in label_dirs:
        for file in sorted(label_dir.glob("*.txt")):
            raw = file.read_bytes()
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + raw)
            text, bad = _decode(raw, file, errors)
            if refuse:
                refuse_nul(text, str(file))
            replaced += bad
            rows.append({"text": text, "label": label_dir.name})
    if not rows:
        tables = sorted({p.suffix for p in path.iterdir() if p.suffix in (".arrow", ".parquet", ".csv", ".jsonl")})
        hint = (f" It holds {', '.join(tables)} files but no dataset_info.json, state.json or dataset_dict.json "
                "(what datasets' save_to_disk writes): point the data at one file instead." if tables else "")  # fmt: skip
        raise TunesmithError(
            f"{path}: a data folder must hold one sub-folder per label with .txt files in it, or be a folder "
            f"written by datasets' save_to_disk; neither was found.{hint}"
        )
    return LoadedTable(pd.DataFrame(rows), str(path), digest.hexdigest(), replaced)


def _records(loaded: list, path: Path, lines: list[int] | None = None) -> pd.DataFrame:
    """A table from parsed JSON records, refusing any that is not an object."""
    for position, record in enumerate(loaded):
        if not isinstance(record, dict):
            where = f"{path}, line {lines[position]}" if lines else f"{path}, record {position + 1}"
            raise record_error(where, record)
    return pd.DataFrame.from_records(loaded)


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
            # The C parser ends a field at a NUL; the Python one keeps it (for inspect to report).
            engine="python" if "\0" in text else "c",
        )
    if suffix == ".jsonl":
        records, lines = [], []
        # split, not splitlines: JSON strings may hold U+2028 or a form feed, which splitlines breaks on.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                records.append(parse_json(line, f"{path}, line {number}"))
                lines.append(number)
        return _records(records, path, lines)
    loaded = parse_json(text, str(path))
    if isinstance(loaded, dict):
        loaded = loaded.get("data", loaded)
    if not isinstance(loaded, list):
        raise TunesmithError(f"{path}: a .json data file must hold a list of records")
    return _records(loaded, path)


def control_character_cells(frame: pd.DataFrame) -> list[tuple[int, str, Counter]]:
    """(row position, column, count per character) for every cell whose text holds control
    characters (strings nested in lists and dicts included)."""
    found = []
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        values = frame[column].tolist()
        nested = any(isinstance(v, (list, dict)) for v in values)
        if not nested and not CONTROL_CHARACTERS.search("".join(v for v in values if isinstance(v, str))):
            continue  # one search over the whole column rules out the usual case quickly
        for position, value in enumerate(values):
            if isinstance(value, (str, list, dict)):
                counts = scrub(value)[1]
                if counts:
                    found.append((position, str(column), counts))
    return found


def _replace_control_characters(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, int, list[str]]:
    """Control characters replaced by spaces (one for one, so character offsets stay right),
    with their count and a note naming the rows; a NUL is refused with its row."""
    cells = control_character_cells(frame)
    if not cells:
        return frame, 0, []
    total: Counter = Counter()
    for position, column, counts in cells:
        if counts.get("\0"):
            hint = JSON_NUL_HINT if source.lower().endswith((".json", ".jsonl")) else NUL_HINT
            raise control_character_error(f"{source}, row {position + 1}, column {column!r}", "\0", hint)
        frame.iat[position, frame.columns.get_loc(column)] = scrub(frame[column].iat[position])[0]
        total += counts
    count, notes = control_character_note(source, total, sorted({position + 1 for position, _, _ in cells}))
    return frame, count, notes


def read_table(
    spec: str,
    *,
    column_names: list[str] | None = None,
    encoding_errors: str = "strict",
    control_characters: Literal["replace", "keep"] = "replace",
) -> LoadedTable:
    """Reads one data source into a DataFrame.

    Args:
        spec: file path, folder of ``<label>/*.txt``, ``package:NAME/sub/path``, a datasets
            save_to_disk folder (``FOLDER:SPLIT`` for a DatasetDict's split), an ``.arrow`` file,
            or ``hf:ID[:CONFIG]:SPLIT`` (grammar in data/hf_datasets.py).
        column_names: names for a header-less CSV/TSV (implies there is no header row).
        encoding_errors: "strict" raises on bytes that are not UTF-8; "replace" substitutes.
        control_characters: "replace": a NUL is refused with its line, other control characters
            (not tab, newline or CR) become spaces, counted with their rows in the result;
            "keep": every character is kept as read (for ``inspect``, which reports them).

    Raises:
        TunesmithError: missing, unreadable, malformed or empty input, naming file and line.
    """
    if spec.startswith("hf:"):
        return _dataset_table(read_hub(spec), control_characters)
    path, split = locate_source(spec)
    if path.is_dir() and (split is not None or saved_kind(path)):
        return _dataset_table(read_saved(path, split), control_characters)
    if path.suffix.lower() == ".arrow":
        return _dataset_table(read_arrow(path), control_characters)
    if path.is_dir():
        table = _read_folder(path, encoding_errors, refuse=control_characters == "replace")
        if control_characters == "replace":
            table.frame, table.control_characters, table.notes = _replace_control_characters(table.frame, table.source)
        return table
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise TunesmithError(
            f"{path}: unsupported file type {suffix or '(none)'}; "
            f"use one of {', '.join(sorted(TABLE_SUFFIXES))} or a folder of <label>/*.txt"
        )
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    replaced, scan = 0, True
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(io.BytesIO(raw))
        else:
            text, replaced = _decode(raw, path, encoding_errors)
            if control_characters == "replace":
                refuse_nul(text, str(path))
            frame = _read_text_table(text, path, suffix, column_names)
            # Scanning every cell is slow; one search of the text says whether any could hold one.
            scan = bool(CONTROL_CHARACTERS.search(text) or (suffix in (".json", ".jsonl") and JSON_ESCAPE.search(text)))
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
    if control_characters == "keep" or not scan:
        return LoadedTable(frame, str(path), digest, replaced)
    frame, control, notes = _replace_control_characters(frame, str(path))
    return LoadedTable(frame, str(path), digest, replaced, control, notes)


def _dataset_table(read: DatasetTable, control_characters: Literal["replace", "keep"]) -> LoadedTable:
    """A table read through ``datasets``, checked as every other reader's: rows, column names,
    control characters (strings from Arrow are already text: no bytes to decode)."""
    if read.frame.empty:
        raise TunesmithError(f"{read.source}: the dataset holds no rows")
    frame = read.frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    table = LoadedTable(frame, read.source, read.sha256, dataset=read.details)
    if control_characters == "replace":
        table.frame, table.control_characters, table.notes = _replace_control_characters(frame, read.source)
    return table


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
