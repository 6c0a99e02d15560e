"""The config: defaults, shipped examples, readable validation errors, and --set overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

import pytest
import yaml
from pydantic import Field

from tunesmith.config import (
    BBC_NEWS,
    DEFAULT_CAUSAL_LM,
    DEFAULT_IMAGE,
    DEFAULT_MODEL,
    DEFAULT_SEQ2SEQ,
    TASK_MODELS,
    TASK_TYPES,
    Config,
    SingleLabelTaskConfig,
    TaskConfig,
    TaskSection,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)
from tunesmith.data.hf_datasets import parse_hub
from tunesmith.data.load import resolve_source
from tunesmith.errors import TunesmithError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "benchmarks").glob("*.yaml"))


def _contained(expected, actual) -> bool:
    """Every key/value of the YAML tree `expected` is present, equal, in `actual`."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _contained(v, actual[k]) for k, v in expected.items())
    return expected == actual


def _error(tree: dict | None = None, overrides: list[str] | None = None, path: Path | None = None) -> str:
    with pytest.raises(TunesmithError) as caught:
        if tree is not None:
            config_from_dict(tree)
        else:
            load_config(path, overrides)
    return str(caught.value)


# -- defaults and examples --------------------------------------------------------------


def test_no_config_file_means_the_embedded_bbc_demo():
    config = load_config()
    assert config == load_config(Path(__file__).parent.parent / "examples" / "bbc_news.yaml")
    # The demo differs from the bare defaults only where the BBC corpus and the time budget need it.
    defaults = Config()
    assert config.model_copy(update={"data": defaults.data, "train": defaults.train}) == defaults
    assert config.train.model_copy(update={"num_epochs": defaults.train.num_epochs}) == defaults.train
    assert config.data.encoding_errors == "replace" and Config().data.encoding_errors == "strict"
    assert config.data.train == BBC_NEWS
    assert config.model.name == DEFAULT_MODEL
    assert config.task.type == "single_label"
    assert config.data.val_fraction + config.data.test_fraction < 0.9


def test_dumped_config_loads_back_identically(tmp_path):
    config = load_config(overrides=["train.learning_rate=3e-5", "model.strategy=lora", "data.max_rows=50"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    assert load_config(path) == config


def test_examples_folder_is_not_empty():
    assert EXAMPLES, "examples/*.yaml must hold at least one shipped config"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_loads(path):
    config = load_config(path)
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    # Every value the example writes is what the validated config holds (no silent coercion).
    assert _contained(written, config.model_dump(mode="json")), f"{path.name} does not round-trip"
    # An example's data ships with it (examples/data, or an installed package) or is a Hub dataset
    # that names its split (tests/test_examples.py checks both offline); a benchmark config names
    # the full data in ../shared/data, which its benchmark checks.
    for spec in (config.data.train, config.data.validation, config.data.test):
        if spec is None:
            continue
        if spec.startswith("package:"):
            assert resolve_source(spec).exists(), spec
        elif path.parent.name == "examples" and spec.startswith("hf:"):
            assert parse_hub(spec)[2] is not None, f"{path.name}: {spec}"
        elif path.parent.name == "examples":
            assert spec.startswith("examples/data/") and (ROOT / spec).exists(), f"{path.name}: {spec}"
        else:
            assert spec.startswith("../shared/data/"), f"{path.name}: {spec}"


# -- unknown keys and bad values ----------------------------------------------------------


def test_unknown_key_names_the_full_dotted_key():
    message = _error(overrides=["train.learnig_rate=1e-4"])
    assert "train.learnig_rate" in message
    assert "unknown key" in message


def test_unknown_nested_key_in_a_yaml_file_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  lora:\n    rnak: 4\n", encoding="utf-8")
    message = _error(path=path)
    assert "model.lora.rnak" in message
    assert "unknown key" in message
    assert str(path) in message


def test_unknown_section_is_an_error():
    message = _error({"trainer": {"learning_rate": 1e-4}})
    assert "trainer" in message and "unknown key" in message


def test_negative_learning_rate_is_rejected():
    message = _error(overrides=["train.learning_rate=-0.001"])
    assert "train.learning_rate" in message
    assert "greater than 0" in message
    assert "-0.001" in message


def test_unknown_strategy_names_the_allowed_values():
    message = _error(overrides=["model.strategy=foo"])
    assert "model.strategy" in message
    assert "'foo'" in message
    for allowed in ("full", "freeze", "gradual_unfreeze", "lora"):
        assert f"'{allowed}'" in message


def test_fractions_that_leave_too_little_training_data_are_rejected():
    message = _error({"data": {"val_fraction": 0.5, "test_fraction": 0.45}})
    assert "data.val_fraction" in message and "data.test_fraction" in message
    # Just under the limit is fine.
    config = config_from_dict({"data": {"val_fraction": 0.45, "test_fraction": 0.44}})
    assert config.data.val_fraction == 0.45


def test_fraction_out_of_range_is_rejected():
    message = _error(overrides=["data.val_fraction=1.5"])
    assert "data.val_fraction" in message and "1.5" in message


def test_balancing_needs_a_single_label_task():
    message = _error({"data": {"balance": {"method": "oversample"}}, "task": {"type": "multi_label"}})
    assert "data.balance.method" in message and "single_label" in message


def test_all_errors_are_reported_at_once():
    message = _error(overrides=["train.batch_size=0", "runtime.device=tpu"])
    assert "train.batch_size" in message
    assert "runtime.device" in message


def test_assignment_is_validated():
    config = Config()
    with pytest.raises(ValueError):
        config.train.learning_rate = -1.0


def test_class_weights_accept_numeric_labels():
    config = load_config(overrides=["data.balance.method=class_weights", "data.balance.class_weights={0: 1.0, 1: 3.0}"])
    assert config.data.balance.class_weights == {"0": 1.0, "1": 3.0}


# -- files ----------------------------------------------------------------------------------


def test_missing_config_file(tmp_path):
    message = _error(path=tmp_path / "nope.yaml")
    assert "not found" in message and "nope.yaml" in message


def test_config_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {learning_rate: [1e-4\n", encoding="utf-8")
    message = _error(path=path)
    assert "broken.yaml" in message and "not valid YAML" in message


def test_config_file_whose_top_level_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- data\n", encoding="utf-8")
    message = _error(path=path)
    assert "list.yaml" in message and "mapping" in message


def test_empty_config_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path) == Config()


# -- overrides ------------------------------------------------------------------------------


def test_overrides_parse_values_as_yaml():
    tree = apply_overrides(
        {},
        [
            "train.num_epochs=2",
            "train.learning_rate=0.5",
            "runtime.progress=false",
            "train.max_grad_norm=null",
            "model.lora.target_modules=[query, key]",
            "model.name=my-model",
            "data.train=a=b.csv",
        ],
    )
    assert tree == {
        "train": {"num_epochs": 2, "learning_rate": 0.5, "max_grad_norm": None},
        "runtime": {"progress": False},
        "model": {"name": "my-model", "lora": {"target_modules": ["query", "key"]}},
        "data": {"train": "a=b.csv"},
    }
    assert isinstance(tree["train"]["num_epochs"], int)


def test_overrides_validate_into_typed_values():
    config = load_config(
        overrides=[
            "train.learning_rate=3e-5",  # YAML reads this as a string; the float field accepts it
            "runtime.progress=false",
            "train.max_grad_norm=null",
            "model.lora.target_modules=all-linear",
            "train.early_stopping.patience=3",
        ]
    )
    assert config.train.learning_rate == pytest.approx(3e-5)
    assert config.runtime.progress is False
    assert config.train.max_grad_norm is None
    assert config.model.lora.target_modules == "all-linear"
    assert config.train.early_stopping.patience == 3


def test_overrides_apply_on_top_of_the_file_and_keep_the_rest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n  batch_size: 4\n", encoding="utf-8")
    config = load_config(path, ["train.learning_rate=0.2"])
    assert config.train.learning_rate == 0.2
    assert config.train.batch_size == 4


@pytest.mark.parametrize("item", ["train.learning_rate", "=5", " =5"])
def test_malformed_override(item):
    message = _error(overrides=[item])
    assert repr(item) in message
    assert "key=value" in message


def test_override_below_a_value_is_an_error():
    message = _error(overrides=["train=1", "train.learning_rate=1"])
    assert "'train' is a value, not a section" in message


# -- the task section: one model per task.type ----------------------------------------------

NON_DEFAULT_OPTION = {"multi_label": {"threshold": 0.3}, "causal_lm": {"loss_on": "all"},
                      "seq2seq": {"source_prefix": "summarize: "}, "token_classification": {"tag_scheme": "bioes"},
                      "question_answering": {"n_best": 5}}  # fmt: skip


def test_task_types_are_the_union_members_in_order():
    assert TASK_TYPES[0] == "single_label" and len(set(TASK_TYPES)) == len(TASK_TYPES) >= 9
    assert [TASK_MODELS[kind] for kind in TASK_TYPES] == list(get_args(get_args(TaskConfig)[0]))
    assert all(TASK_MODELS[kind]().type == kind for kind in TASK_TYPES)


@pytest.mark.parametrize("task", [None, {}, {"type": "single_label"}])
def test_no_task_type_means_single_label(task):
    config = config_from_dict({} if task is None else {"task": task})
    assert config.task == SingleLabelTaskConfig()
    assert config == Config()


def test_a_key_of_another_kind_names_the_key_and_its_kind():
    message = _error({"task": {"type": "single_label", "tag_scheme": "bioes"}})
    assert (
        "task.tag_scheme does not apply to task.type=single_label; it is an option of token_classification" in message
    )
    assert "unknown key" not in message and "Extra inputs" not in message
    # Without a type the section is single_label, so a multi_label option says where it belongs.
    message = _error({"task": {"threshold": 0.3}})
    assert "task.threshold does not apply to task.type=single_label; it is an option of multi_label" in message


def test_a_key_of_another_kind_from_set_overrides_is_reported_with_the_other_errors():
    message = _error(overrides=["task.type=regression", "task.doc_stride=64", "train.batch_size=0"])
    assert "task.doc_stride does not apply to task.type=regression; it is an option of question_answering" in message
    assert "train.batch_size" in message


def test_a_misspelled_task_key_is_an_unknown_key_without_the_kind_in_its_name():
    message = _error({"task": {"type": "multi_label", "thresold": 0.3, "threshold": 2}})
    assert "task.thresold: unknown key" in message
    assert "task.threshold: Input should be less than 1 (got 2)" in message
    assert "multi_label.thres" not in message


@pytest.mark.parametrize("given", ["classification", None, 5])
def test_an_unknown_task_type_lists_the_kinds(given):
    message = _error({"task": {"type": given}})
    assert "task.type: Input should be 'single_label', 'multi_label'" in message and f"(got {given!r})" in message
    assert all(f"'{kind}'" in message for kind in TASK_TYPES)


@pytest.mark.parametrize("kind", TASK_TYPES)
def test_each_kind_dumps_only_its_own_options_and_loads_back(kind, tmp_path):
    config = config_from_dict({"task": {"type": kind, **NON_DEFAULT_OPTION.get(kind, {})}})
    assert config.task.type == kind and isinstance(config.task, TASK_MODELS[kind])
    saved = yaml.safe_load(dump_config(config))["task"]
    assert set(saved) == set(TASK_MODELS[kind].model_fields) and saved["type"] == kind
    assert _contained(NON_DEFAULT_OPTION.get(kind, {}), saved)
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    assert load_config(path) == config


def test_set_task_type_keeps_the_options_of_the_new_kind_only():
    config = load_config(overrides=["task.type=token_classification", "task.label_all_subwords=true"])
    assert config.task.label_all_subwords is True
    message = _error(path=ROOT / "examples" / "conll2003.yaml", overrides=["task.type=multi_label"])
    assert "task.tag_scheme does not apply to task.type=multi_label; it is an option of token_classification" in message


def test_a_config_saved_with_every_kinds_task_options_still_loads():
    """A run directory written before the per-kind sections holds every kind's options in task."""
    flat = {"type": "question_answering", "threshold": 0.5, "label_separator": "|", "source_prefix": "",
            "loss_on": "completion", "tag_scheme": "iob2", "label_all_subwords": False, "invalid_tags": "convert",
            "doc_stride": 100, "max_answer_length": 30, "n_best": 20, "no_answer_threshold": 0.0}  # fmt: skip
    assert config_from_dict({"task": flat}).task.doc_stride == 100
    # Only that exact shape is read leniently: one stray option of another kind is still an error.
    assert "task.threshold does not apply" in _error({"task": {"type": "question_answering", "threshold": 0.5}})


@pytest.mark.parametrize(
    "kind, name, max_length, strategy, targets, grouped",
    [
        ("single_label", DEFAULT_MODEL, 128, "full", None, True),
        ("multi_label", DEFAULT_MODEL, 128, "full", None, True),
        ("regression", DEFAULT_MODEL, 128, "full", None, True),
        ("causal_lm", DEFAULT_CAUSAL_LM, 512, "lora", "all-linear", False),
        ("seq2seq", DEFAULT_SEQ2SEQ, 128, "full", None, True),
        ("token_classification", DEFAULT_MODEL, 128, "full", None, True),
        ("question_answering", DEFAULT_MODEL, 384, "full", None, True),
        ("image_classification", DEFAULT_IMAGE, 128, "full", None, False),
    ],
)
def test_each_kind_fills_its_model_and_train_defaults(kind, name, max_length, strategy, targets, grouped):
    config = config_from_dict({"task": {"type": kind}})
    assert (config.model.name, config.model.max_length, config.model.strategy) == (name, max_length, strategy)
    assert (config.model.lora.target_modules, config.train.group_by_length) == (targets, grouped)


def test_a_new_kind_like_single_label_needs_only_its_model():
    class NewKindTaskConfig(TaskSection):
        type: Literal["new_kind"] = "new_kind"

    class WiderConfig(Config):
        task: Annotated[get_args(TaskConfig)[0] | NewKindTaskConfig, Field(discriminator="type")] = (
            SingleLabelTaskConfig()
        )

    config = WiderConfig.model_validate({"task": {"type": "new_kind"}})
    assert config.model == Config().model and config.train == Config().train


@pytest.mark.parametrize(
    "tree, fragment",
    [
        ({"task": {"type": "regression"}, "train": {"packing": True}}, "train.packing needs task.type=causal_lm"),
        ({"task": {"type": "multi_label"}, "data": {"balance": {"method": "oversample"}}},
         "data.balance.method='oversample' needs task.type=single_label"),
        ({"task": {"type": "image_classification"}, "data": {"augment": {"ratio": 1}}}, "images are augmented by"),
        ({"task": {"type": "seq2seq"}, "data": {"augment": {"ratio": 1}}}, "not task.type=seq2seq"),
        ({"task": {"type": "token_classification"}, "forgetting": {"rehearsal": "r.csv"}},
         "forgetting.rehearsal mixes labelled rows into training: it covers task.type=single_label or "
         "multi_label or regression, not token_classification"),
        ({"task": {"type": "image_classification"}, "forgetting": {"retain": "r.csv"}},
         "forgetting.retain: the forgetting check covers task.type=single_label or multi_label or regression or "
         "causal_lm or seq2seq or token_classification or question_answering or pair_classification, "
         "not image_classification"),
        ({"task": {"type": "question_answering", "doc_stride": 189}}, "task.doc_stride=189 must be below 189"),
    ],
)  # fmt: skip
def test_each_kind_refuses_what_it_does_not_support(tree, fragment):
    assert fragment in _error(tree)
