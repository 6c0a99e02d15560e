"""Text augmentation: each operation by hand, seeding, label preservation, train split only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import sentiment_rows, tiny_config
from tunesmith.data.augment import augment_frame, augment_text, embedding_neighbours

NEIGHBOURS = {"film": ["movie"], "good": ["fine"], "plot": ["story"]}
TEXT = "the film had a good plot and a long ending"


def _variant(operation, seed=0, **kwargs):
    options = {"word_share": 0.1, "char_share": 0.05, "neighbours": NEIGHBOURS} | kwargs
    return augment_text(TEXT, operation, rng=np.random.default_rng(seed), **options)


def test_synonym_replaces_words_with_neighbours():
    words, variant = TEXT.split(), _variant("synonym").split()
    assert len(variant) == len(words)
    changed = [(a, b) for a, b in zip(words, variant) if a != b]
    assert len(changed) == 1 and changed[0][1] == NEIGHBOURS[changed[0][0]][0]  # round(0.1 * 10) = 1 word


def test_insert_adds_a_synonym_and_keeps_the_rest_in_order():
    variant = _variant("insert", word_share=0.2).split()
    assert len(variant) == 12
    inserted = list(variant)
    for word in TEXT.split():
        inserted.remove(word)
    assert sorted(inserted) and set(inserted) <= {"movie", "fine", "story"}


def test_swap_keeps_the_words_and_delete_keeps_an_ordered_subset():
    swapped = _variant("swap", word_share=0.2).split()
    assert sorted(swapped) == sorted(TEXT.split()) and swapped != TEXT.split()
    deleted = _variant("delete", seed=3, word_share=0.3).split()
    assert 0 < len(deleted) < 10
    it = iter(TEXT.split())
    assert all(word in it for word in deleted)  # a subsequence


def test_char_noise_touches_a_few_characters():
    import difflib

    variant = _variant("char_noise", char_share=0.05)
    assert variant != TEXT
    assert difflib.SequenceMatcher(None, variant, TEXT).ratio() > 0.85


def test_operations_without_synonyms_return_the_text():
    assert _variant("synonym", neighbours={}) == TEXT
    assert augment_text("word", "swap", word_share=0.5, char_share=0.1, neighbours={},
                        rng=np.random.default_rng(0)) == "word"  # fmt: skip


def test_augment_frame_is_seeded_and_keeps_labels():
    frame = pd.DataFrame(sentiment_rows(40, seed=2)).assign(row=range(1, 41))
    neighbours = {"good": ["great"], "bad": ["awful"], "river": ["stream"], "table": ["desk"]}
    options = {"ratio": 1.5, "operations": ["synonym", "swap", "delete", "char_noise"], "word_share": 0.2,
               "char_share": 0.05, "neighbours": neighbours}  # fmt: skip
    first, counts = augment_frame(frame, seed=1, **options)
    again, _ = augment_frame(frame, seed=1, **options)
    other, _ = augment_frame(frame, seed=2, **options)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    added = first[first["augmented"] != ""]
    assert len(added) == counts["rows_added"] and 0 < len(added) <= 60
    assert sum(counts["by_operation"].get(op, 0) for op in options["operations"]) == len(added)
    assert counts["rows_added"] + counts["by_operation"].get("unchanged (not added)", 0) == 60
    source = frame.set_index("row")
    assert (added["label"].to_numpy() == source.loc[added["row"], "label"].to_numpy()).all()
    assert (added["text"].to_numpy() != source.loc[added["row"], "text"].to_numpy()).all()
    pd.testing.assert_frame_equal(first.iloc[:40].drop(columns="augmented"), frame)


def test_embedding_neighbours_come_from_the_vocabulary(tiny_model_dir):
    found = embedding_neighbours(str(tiny_model_dir), {"good", "movie", "the", "notaword"}, k=3)
    assert set(found) == {"good", "movie"}  # a stop word and an unknown word get none
    assert all(len(v) == 3 and "good" not in v for k, v in found.items() if k == "good")


def test_training_augments_the_train_split_only(tmp_path, tiny_model_dir):
    from tunesmith.api import train

    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(100, seed=4)).to_csv(data, index=False)
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", train={"num_epochs": 1},
                         data={"augment": {"ratio": 1.0, "operations": ["swap", "delete", "synonym"]}})  # fmt: skip
    result = train(config)
    manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
    augment = manifest["augment"]
    saved = {n: pd.read_parquet(result.run_dir / "data" / f"{n}.parquet") for n in ("train", "validation", "test")}
    assert augment["rows_after"] == augment["rows_before"] + augment["rows_added"] == len(saved["train"])
    assert augment["rows_added"] > 0.5 * augment["rows_before"]
    assert manifest["splits"]["train"]["rows"] == len(saved["train"])
    assert "augmented" not in saved["validation"] and "augmented" not in saved["test"]
    assert len(saved["validation"]) == len(saved["test"]) == 20


def test_augmenting_generative_data_is_refused():
    from tunesmith.config import load_config
    from tunesmith.errors import TunesmithError

    with pytest.raises(TunesmithError, match="data.augment"):
        load_config(None, ["task.type=causal_lm", "data.augment.ratio=1"])
