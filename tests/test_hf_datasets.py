"""Hugging Face datasets as data: save_to_disk folders (Dataset, DatasetDict and its splits),
.arrow files, hf: Hub ids (offline), and Dataset/DataFrame objects given to the Python API."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from tests.conftest import sentiment_rows, tiny_config
from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.data.load import read_table
from tunesmith.errors import TunesmithError

NAMES = ["negative", "positive"]
FEATURES = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
FAST = {"train": {"num_epochs": 1, "max_steps": 2}, "evaluation": {"bootstrap_samples": 0}}
"""Two steps; no bootstrap. Each run scores only a validation split (plots cost seconds per split)."""
NO_TEST = {"test_fraction": 0.0}


def _dataset(count: int, seed: int = 0) -> datasets.Dataset:
    """Sentiment rows with the label as a ClassLabel id, as Hub datasets store it."""
    rows = sentiment_rows(count, seed=seed)
    return datasets.Dataset.from_dict(
        {"text": [r["text"] for r in rows], "label": [NAMES.index(r["label"]) for r in rows]}, features=FEATURES
    )


def _files_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A save_to_disk DatasetDict with train, dev (validation's alias) and test, a saved Dataset,
    and a datasets .arrow file."""
    root = tmp_path_factory.mktemp("hf")
    datasets.DatasetDict(train=_dataset(48), dev=_dataset(16, seed=1), test=_dataset(16, seed=2)).save_to_disk(
        root / "dd"
    )
    _dataset(24, seed=3).save_to_disk(root / "one")
    (root / "train.arrow").write_bytes((root / "dd" / "train" / "data-00000-of-00001.arrow").read_bytes())
    return root


def _run(result) -> tuple[dict, dict, dict]:
    run = Path(result.run_dir)
    manifest = json.loads((run / "data_manifest.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]  # fmt: skip
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert (run / "model" / "config.json").is_file()
    assert json.loads((run / "task.json").read_text())["label_names"] == NAMES  # names, not ClassLabel ids
    return manifest, config, result.metrics


def test_datasetdict_folder_trains_with_each_role_its_split(tiny_model_dir, saved, tmp_path):
    dd, before = saved / "dd", _files_digest(saved / "dd")
    tree = tiny_config(tiny_model_dir, dd, tmp_path / "run", **FAST)
    tree["data"] |= {"validation": str(dd), "test": str(dd)}
    config = config_from_dict(tree)
    assert (config.data.train, config.data.validation, config.data.test) == (f"{dd}:train", f"{dd}:dev", f"{dd}:test")
    config.data.test, config.data.test_fraction = (
        None,
        0.0,
    )  # test's split is chosen above; training scores validation only
    manifest, written, metrics = _run(api.train(config))
    assert written["data"]["validation"] == f"{dd}:dev"  # config.yaml says which split was read
    sources = manifest["sources"]
    assert sources["validation"]["source"] == f"{dd}:dev"
    assert sources["train"]["dataset"]["splits"] == ["train", "dev", "test"]
    arrow = (dd / "train" / "data-00000-of-00001.arrow").read_bytes()
    assert sources["train"]["sha256"] == hashlib.sha256(b"train/data-00000-of-00001.arrow\0" + arrow).hexdigest()
    assert sources["train"]["sha256"] != sources["validation"]["sha256"]
    assert [manifest["splits"][s]["rows"] for s in ("train", "validation")] == [48, 16]
    assert "validation" in metrics
    assert _files_digest(dd) == before  # nothing of the user's was written


def test_arrow_file_trains_end_to_end(tiny_model_dir, saved, tmp_path):
    result = api.train(
        tiny_config(tiny_model_dir, saved / "train.arrow", tmp_path / "run", **FAST)
        | {"data": {"train": str(saved / "train.arrow"), "val_fraction": 0.25, **NO_TEST}}
    )
    manifest, _, _ = _run(result)
    entry = manifest["sources"]["train"]
    assert entry["source"] == str(saved / "train.arrow")
    assert entry["dataset"] == {"format": "Arrow stream (datasets)", "class_label_names": {"label": NAMES}}


def test_dataset_and_dataframe_through_the_python_api(tiny_model_dir, tmp_path):
    train = _dataset(48)
    frame = pd.DataFrame(sentiment_rows(16, seed=4), index=[f"r{i}" for i in range(16)])
    kept = frame.copy()
    result = api.train(tiny_config(tiny_model_dir, "unused.csv", tmp_path / "run", data=NO_TEST, **FAST),
                       data={"train": train, "validation": frame})  # fmt: skip
    manifest, written, _ = _run(result)
    inputs = (Path(result.run_dir) / "inputs").resolve()
    for role in ("train", "validation"):
        kept_file = inputs / f"{role}.parquet"
        assert written["data"][role] == str(kept_file)
        assert manifest["sources"][role]["sha256"] == hashlib.sha256(kept_file.read_bytes()).hexdigest()
    assert "tunesmith-inputs-" not in json.dumps(manifest)  # the staging folder is named nowhere
    assert pd.read_parquet(inputs / "train.parquet")["label"].tolist()[:2] == ["positive", "negative"]
    pd.testing.assert_frame_equal(frame, kept)  # the caller's objects are as they were
    assert train.features["label"] == FEATURES["label"] and train[0]["label"] == 1


def test_split_selection_and_bad_splits(saved, tmp_path):
    dd = saved / "dd"
    assert read_table(f"{dd}:test").source == f"{dd}:test"
    assert len(read_table(f"{dd}:dev").frame) == 16
    with pytest.raises(TunesmithError, match=r"dd: the DatasetDict has no split 'nope'; its splits are \['train', "):
        read_table(f"{dd}:nope")
    with pytest.raises(TunesmithError, match="DatasetDict with the splits .*name one as"):
        read_table(str(dd))  # no role: the caller must say
    only = tmp_path / "only-train"
    datasets.DatasetDict(train=_dataset(4)).save_to_disk(only)
    validation = config_from_dict({"data": {"train": str(only), "validation": str(only)}}).data.validation
    with pytest.raises(TunesmithError, match=r"no split 'validation'; its splits are \['train'\]"):
        read_table(validation)
    one = read_table(str(saved / "one"))
    assert one.frame["label"].isin(NAMES).all() and one.dataset["format"] == "datasets save_to_disk Dataset"
    with pytest.raises(TunesmithError, match="is a saved Dataset, which has no splits; remove :train"):
        read_table(f"{saved / 'one'}:train")
    csv = tmp_path / "plain.csv"
    pd.DataFrame(sentiment_rows(4)).to_csv(csv, index=False)
    with pytest.raises(TunesmithError, match="is a file, not a datasets save_to_disk DatasetDict folder"):
        read_table(f"{csv}:train")


def test_arrow_ipc_file_class_label_none_and_folder_errors(tmp_path):
    table = pa.table({"text": ["a b", "c d", "e f"], "label": [0, -1, 1]})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": FEATURES.to_dict()}})})
    with pa.ipc.new_file(tmp_path / "ipc.arrow", table.schema) as writer:  # the random-access format
        writer.write_table(table)
    read = read_table(str(tmp_path / "ipc.arrow"))
    assert read.frame["label"].tolist() == ["negative", None, "positive"]  # -1: "no label"
    (tmp_path / "junk.arrow").write_text("not arrow")
    with pytest.raises(TunesmithError, match=r"junk\.arrow: could not be read as Arrow"):
        read_table(str(tmp_path / "junk.arrow"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.arrow").write_bytes((tmp_path / "ipc.arrow").read_bytes())
    with pytest.raises(TunesmithError, match=r"written by datasets' save_to_disk.*holds \.arrow files"):
        read_table(str(cache))


def test_hub_ids_offline_say_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub

    # No network in tests, whatever the environment says.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    config = config_from_dict({"data": {"train": "hf:tunesmith-tests/absent", "validation": "hf:owner/name:cfg:",
                                        "test": "hf:owner/name:cfg:test"}}).data  # fmt: skip
    assert (config.train, config.validation, config.test) == (
        "hf:tunesmith-tests/absent:train", "hf:owner/name:cfg:validation", "hf:owner/name:cfg:test")  # fmt: skip
    with pytest.raises(TunesmithError) as error:
        read_table(config.train)
    message = str(error.value)
    assert message.startswith("hf:tunesmith-tests/absent:train: the Hub dataset 'tunesmith-tests/absent'")
    assert "offline mode is on" in message and "network access" in message and "save_to_disk('absent')" in message
    with pytest.raises(TunesmithError, match="is not a Hub dataset spec; write hf:ID"):
        read_table("hf:a:b:c:d")


def test_python_api_refuses_bad_tables(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, "unused.csv", tmp_path / "run")
    with pytest.raises(TunesmithError, match=r"data\['train'\] is a list: give a pandas DataFrame"):
        api.train(config, data={"train": [1, 2]})
    with pytest.raises(TunesmithError, match=r"data\['validation'\] \(DatasetDict\): .*no split 'validation'"):
        api.train(config, data={"train": _dataset(8), "validation": datasets.DatasetDict(train=_dataset(4))})
    with pytest.raises(TunesmithError, match="train required"):
        api.train(config, data={"validation": _dataset(8)})
    assert not (tmp_path / "run").exists()


def test_one_datasetdict_gives_every_role_its_split(saved, tmp_path):
    from tunesmith.data.hf_datasets import write_tables

    written = write_tables(datasets.load_from_disk(str(saved / "dd")), tmp_path)
    assert written == {role: str(tmp_path / f"{role}.parquet") for role in ("train", "validation", "test")}
    assert len(pd.read_parquet(written["validation"])) == 16  # from "dev"


def test_hub_revisions_and_datasets_published_with_a_loading_script(monkeypatch, tmp_path):
    """ID@REVISION reaches load_dataset as its revision; a dataset that only has a loading script
    (which datasets 4+ refuses) gets the spec of the Hub's Parquet conversion; offline, the copy
    command names the config and the revision."""
    import huggingface_hub

    calls = []

    def scripted(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        raise RuntimeError("Dataset scripts are no longer supported, but found conll2003.py")

    monkeypatch.setattr(datasets, "load_dataset", scripted)
    spec = config_from_dict({"data": {"train": "hf:eriktks/conll2003"}}).data.train
    with pytest.raises(TunesmithError) as error:
        read_table(spec)
    assert calls == [("eriktks/conll2003", None, "train", None)]
    assert "is published with a loading script" in str(error.value)
    assert str(error.value).endswith("reads as hf:eriktks/conll2003@refs/convert/parquet:train")
    monkeypatch.undo()
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    with pytest.raises(TunesmithError) as error:
        read_table("hf:owner/name@refs/convert/parquet:cfg:test")
    assert ("datasets.load_dataset('owner/name', 'cfg', revision='refs/convert/parquet').save_to_disk('name')"
            in str(error.value))  # fmt: skip
    with pytest.raises(TunesmithError, match="is not a Hub dataset spec"):
        read_table("hf:owner/name@:train")
