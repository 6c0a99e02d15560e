"""Hugging Face ``datasets`` as data sources: ``save_to_disk`` folders (a Dataset or a
DatasetDict), ``.arrow`` files, Hub ids (``hf:``), and the DataFrame/Dataset/DatasetDict objects
that the Python API takes in place of files.

Everything is read through ``datasets`` (``load_from_disk``, ``Dataset.from_file``,
``load_dataset``). The one exception is an Arrow IPC *file* (the random-access format that
``pyarrow.ipc.new_file`` and ``DataFrame.to_feather`` write): ``datasets`` reads only the IPC
stream format, so that file is opened with pyarrow and wrapped in a Dataset. ``datasets`` is
imported inside the functions because it takes over a second to import and most runs read CSV.

Spec grammar (also in config.DataConfig.train and the README):

- ``PATH`` or ``PATH:SPLIT``: a ``save_to_disk`` folder; SPLIT picks a DatasetDict's split. A path
  that exists is always read whole, so a folder whose name holds a colon still works.
- ``hf:ID``, ``hf:ID:SPLIT`` or ``hf:ID:CONFIG:SPLIT``: a Hub dataset (``hf:stanfordnlp/imdb:test``,
  ``hf:nyu-mll/glue:sst2:validation``). ``ID@REVISION`` reads a branch, tag or commit: a commit
  pins the data, and ``@refs/convert/parquet`` reads the Hub's own Parquet conversion of a dataset
  that is published with a loading script, which ``datasets`` 4 and later no longer run
  (``hf:eriktks/conll2003@refs/convert/parquet:train``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tunesmith.config import DATASET_SPLITS
from tunesmith.errors import TunesmithError
from tunesmith.runs import sha256_file

SPLIT_NAME = re.compile(r"[A-Za-z0-9_][\w.-]*")
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?(@[\w.-]+(/[\w.-]+)*)?")
"""A Hub dataset id, optionally with ``@REVISION`` (a branch, tag or commit; refs/convert/parquet)."""
HUB_GRAMMAR = "hf:ID, hf:ID:SPLIT or hf:ID:CONFIG:SPLIT (e.g. hf:stanfordnlp/imdb:train; ID@REVISION for a revision)"
SCRIPT_REFUSED = "Dataset scripts are no longer supported"
"""What ``datasets`` 4 and later raise (a RuntimeError) for a Hub dataset with a loading script."""
MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
"""Files ``save_to_disk`` writes: dataset_dict.json for a DatasetDict, the others for a Dataset."""


@dataclass
class DatasetTable:
    """A table read from a ``datasets`` source."""

    frame: pd.DataFrame
    source: str
    """How errors name it: the path, ``PATH:SPLIT`` or the ``hf:`` spec."""
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)
    """For the data manifest: the format, the split and its siblings, ClassLabel names used."""


def _datasets():
    try:
        import datasets
    except ImportError:  # a dependency, but say what to do if an environment lacks it
        raise TunesmithError("reading Hugging Face datasets needs the datasets package: pip install datasets") from None
    return datasets


def saved_kind(folder: Path) -> Literal["dataset_dict", "dataset"] | None:
    """What ``save_to_disk`` left in ``folder``: a DatasetDict, a Dataset, or None (not its output)."""
    if (folder / "dataset_dict.json").is_file():
        return "dataset_dict"
    if any((folder / name).is_file() for name in MARKERS[1:]):
        return "dataset"
    return None


def pick_split(dataset_dict: Mapping, split: str | None, where: str) -> tuple[Any, str]:
    """The split of a DatasetDict a spec asks for (the only one when it names none).

    Raises:
        TunesmithError: no such split, or several and none named; lists the splits there are.
    """
    names = list(dataset_dict)
    if split is None and len(names) == 1:
        split = names[0]
    if split is None:
        raise TunesmithError(f"{where} is a DatasetDict with the splits {names}: name one as {where}:SPLIT")
    if split not in dataset_dict:
        raise TunesmithError(f"{where}: the DatasetDict has no split {split!r}; its splits are {names} "
                             f"(choose one as {where}:SPLIT)")  # fmt: skip
    return dataset_dict[split], split


def dataset_frame(dataset) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """A Dataset as a DataFrame, with ClassLabel ids (also in lists, for multi-label) turned into
    their names, so the run learns ``neg``/``pos`` rather than 0/1. An id of -1 (datasets' "no
    label", e.g. GLUE's test splits) becomes a missing label, which cleaning drops and counts.

    Returns:
        The frame and, per column turned into names, the names.
    """
    datasets = _datasets()
    frame = dataset.to_pandas()
    named = {}
    for column, feature in dataset.features.items():
        inner = feature.feature if isinstance(feature, (datasets.List, datasets.LargeList)) else None
        label = inner if isinstance(inner, datasets.ClassLabel) else feature
        if not isinstance(label, datasets.ClassLabel):
            continue

        def name(value, label=label):
            return None if value is None or pd.isna(value) or int(value) < 0 else label.int2str(int(value))

        frame[column] = [
            (None if value is None else [name(v) for v in value]) if inner is not None else name(value)
            for value in frame[column]
        ]
        named[column] = list(label.names)
    return frame, named


def _sha256(dataset, root: Path | None) -> str:
    """SHA-256 of the Arrow files a Dataset reads, in order, each with its name (relative to
    ``root`` when given), so the same data saved the same way hashes the same. ``state.json`` is
    left out: it holds a fingerprint that can differ between two saves of the same rows. A
    Dataset held in memory hashes its table in the Arrow stream format."""
    digest = hashlib.sha256()
    files = [Path(entry["filename"]) for entry in dataset.cache_files]
    for file in files:
        name = file.relative_to(root).as_posix() if root is not None and file.is_relative_to(root) else file.name
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    if not files:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        table = dataset.data.table
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def _table(dataset, source: str, root: Path | None, details: dict[str, Any]) -> DatasetTable:
    frame, named = dataset_frame(dataset)
    if named:
        details["class_label_names"] = named
    return DatasetTable(frame, source, _sha256(dataset, root), details)


def read_saved(folder: Path, split: str | None) -> DatasetTable:
    """A ``save_to_disk`` folder: a Dataset, or one split of a DatasetDict.

    Raises:
        TunesmithError: a split named for a Dataset, a missing split, an unreadable folder.
    """
    datasets = _datasets()
    kind = saved_kind(folder)
    if kind is None:
        raise TunesmithError(f"{folder}:{split}: {folder} is not a folder written by datasets' save_to_disk "
                             "(no dataset_dict.json); a :SPLIT suffix is for a saved DatasetDict")  # fmt: skip
    if kind == "dataset" and split is not None:
        raise TunesmithError(f"{folder}:{split}: {folder} is a saved Dataset, which has no splits; "
                             f"remove :{split}")  # fmt: skip
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError) as error:  # a half-copied folder, a newer format
        raise TunesmithError(f"{folder}: could not be read as a datasets save_to_disk folder: {error}") from None
    if kind == "dataset":
        return _table(loaded, str(folder), folder, {"format": "datasets save_to_disk Dataset"})
    dataset, split = pick_split(loaded, split, str(folder))
    details = {"format": "datasets save_to_disk DatasetDict", "split": split, "splits": list(loaded)}
    return _table(dataset, f"{folder}:{split}", folder, details)


def read_arrow(path: Path) -> DatasetTable:
    """An ``.arrow`` file: datasets' own (Arrow IPC stream) format, or an Arrow IPC file.

    Raises:
        TunesmithError: the file is neither.
    """
    datasets = _datasets()
    import pyarrow as pa

    try:
        with path.open("rb") as handle:
            is_ipc_file = handle.read(6) == b"ARROW1"  # the IPC file format's magic; a stream has none
        if is_ipc_file:
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
            dataset = datasets.Dataset(datasets.table.InMemoryTable(table))
            return DatasetTable(dataset_frame(dataset)[0], str(path), sha256_file(path),
                                {"format": "Arrow IPC file"})  # fmt: skip
        dataset = datasets.Dataset.from_file(str(path))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise TunesmithError(
            f"{path}: could not be read as Arrow (a datasets .arrow file or an Arrow IPC file): {error}"
        ) from None
    return _table(dataset, str(path), path.parent, {"format": "Arrow stream (datasets)"})


def parse_hub(spec: str) -> tuple[str, str | None, str | None]:
    """(dataset id, config or None, split or None) of a ``hf:`` spec.

    Raises:
        TunesmithError: the spec does not follow the grammar.
    """
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) > 3 or not HUB_ID.fullmatch(parts[0]):
        raise TunesmithError(f"{spec!r} is not a Hub dataset spec; write {HUB_GRAMMAR}")
    name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1] if len(parts) > 1 else None
    for what, value in (("config", config), ("split", split)):
        if value and not SPLIT_NAME.fullmatch(value):
            raise TunesmithError(f"{spec!r}: {value!r} is not a {what} name; write {HUB_GRAMMAR}")
    return name, config or None, split or None


def read_hub(spec: str) -> DatasetTable:
    """A dataset of the Hugging Face Hub, through ``datasets.load_dataset`` (its cache first).

    Raises:
        TunesmithError: a bad spec; the dataset is neither cached nor reachable (offline mode or
            no network), does not exist, is published with a loading script, or has no such
            config or split.
    """
    datasets = _datasets()
    name, config, split = parse_hub(spec)
    repo, _, revision = name.partition("@")
    try:
        loaded = datasets.load_dataset(repo, config, split=split, revision=revision or None)
    except ConnectionError as error:  # datasets' own, raised both offline and without network
        local = repo.rsplit("/", 1)[-1]
        arguments = ", ".join([repr(repo), *([repr(config)] if config else []),
                               *([f"revision={revision!r}"] if revision else [])])  # fmt: skip
        why = ("offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)" if datasets.config.HF_HUB_OFFLINE
               else f"the Hub could not be reached: {error}")  # fmt: skip
        raise TunesmithError(
            f"{spec}: the Hub dataset {repo!r} is not in the local datasets cache and cannot be downloaded: {why}. "
            f"It needs network access once, or a local copy: where there is network, run "
            f'python -c "import datasets; datasets.load_dataset({arguments}).save_to_disk({local!r})", '
            f"bring the folder here and point the data at it (e.g. data.train: {local}:train)"
        ) from None
    except FileNotFoundError as error:  # DatasetNotFoundError: no such (or a private) dataset
        raise TunesmithError(f"{spec}: no dataset {repo!r} on the Hub that this machine may read ({error})") from None
    except ValueError as error:  # an unknown config or split
        raise TunesmithError(f"{spec}: {error}") from None
    except RuntimeError as error:
        if SCRIPT_REFUSED not in str(error):
            raise
        rest = spec.removeprefix(f"hf:{name}")
        raise TunesmithError(
            f"{spec}: the Hub dataset {repo!r} is published with a loading script, which datasets "
            f"{datasets.__version__} does not run ({error}); the Hub's Parquet conversion of it reads as "
            f"hf:{repo}@refs/convert/parquet{rest}"
        ) from None
    if split is None:
        loaded, split = pick_split(loaded, None, spec)
    details = {"format": "Hugging Face Hub", "id": repo, "config": config, "split": split}
    if revision:
        details["revision"] = revision
    return _table(loaded, spec, None, details)


def write_tables(tables: Any, folder: Path) -> dict[str, str]:
    """Writes the Python API's tables as ``folder/ROLE.parquet``, for the data stage to read
    like any file; the objects themselves are not changed.

    Args:
        tables: {"train" | "validation" | "test": DataFrame, Dataset or DatasetDict}, or one
            DatasetDict for every role it has a split for. A DatasetDict gives a role its split
            by config.DATASET_SPLITS (validation: "validation", "valid" or "dev").

    Returns:
        ROLE -> the file's path.

    Raises:
        TunesmithError: an unknown role, no train table, an object of another kind, a
            DatasetDict without the role's split, a table that Parquet cannot hold.
    """
    datasets = _datasets()
    whole = isinstance(tables, datasets.DatasetDict)
    if whole:
        tables = {role: tables for role, names in DATASET_SPLITS.items() if any(n in tables for n in names)}
    if not isinstance(tables, Mapping) or set(tables) - set(DATASET_SPLITS) or "train" not in tables:
        keys = sorted(map(str, tables)) if isinstance(tables, Mapping) else type(tables).__name__
        raise TunesmithError(f"data={keys}: give {{'train': ..., 'validation': ..., 'test': ...}} (train "
                             "required) or a DatasetDict with a train split")  # fmt: skip
    written = {}
    for role, table in tables.items():
        where = f"data[{role!r}]"
        if isinstance(table, datasets.DatasetDict):
            names = DATASET_SPLITS[role]
            table, _ = pick_split(table, next((n for n in names if n in table), names[0]), f"{where} (DatasetDict)")
        if isinstance(table, datasets.Dataset):
            table = dataset_frame(table)[0]
        if not isinstance(table, pd.DataFrame):
            raise TunesmithError(f"{where} is a {type(table).__name__}: give a pandas DataFrame, a datasets "
                                 "Dataset or DatasetDict, or put a file's path in the config's data section")  # fmt: skip
        import pyarrow as pa

        path = folder / f"{role}.parquet"
        frame = table.reset_index(drop=True)  # a new frame: the caller's keeps its index and names
        frame.columns = [str(c) for c in frame.columns]
        try:
            frame.to_parquet(path, index=False)
        except (pa.ArrowException, ValueError, TypeError) as error:  # e.g. a column of numbers and texts
            raise TunesmithError(f"{where}: cannot be stored as Parquet ({error}); give each column one type") from None
        written[role] = str(path)
    return written


def relocate(value: Any, old: str, new: str) -> Any:
    """``value`` (nested dicts and lists) with ``old`` replaced by ``new`` in every string: the
    data manifest and changelog name the staged tables by where they are kept."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {relocate(k, old, new): relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    return value
