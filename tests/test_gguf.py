"""``tunesmith export --format gguf``: a tuned tiny Llama written as GGUF with the ``gguf`` package,
read back by transformers' GGUF loader (the parity check) and by ``gguf.GGUFReader`` (the
metadata llama.cpp reads), with its Ollama Modelfile; refusals leave nothing behind.

The tiny model has a tiny byte-level BPE tokenizer of its own (a few hundred tokens, shaped like
SmolLM2's: GPT-2 byte-level split, ChatML special tokens and template): reading a 49,152-token
vocabulary back from GGUF takes transformers several seconds per load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, TokenType

from tests.makers import DATA_FILE, alpaca_rows, tiny_task_config, write_examples
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.ship import gguf as gguf_export
from tunesmith.ship.gguf import export_gguf, pre_tokenizer_name
from tunesmith.ship.modelfile import go_template, turn_forms

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
UNUSED_IDS = 3
"""Embedding rows past the tokenizer's last token (models round their vocabulary up)."""


@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32, 4 query and 2 key/value heads) with a byte-level BPE tokenizer
    trained on the test records, ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [f"{r['instruction']} {r['output']}" for r in alpaca_rows(50)] + ["system user assistant helpful"]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")  # fmt: skip
    tokenizer.chat_template = CHATML
    path = tmp_path_factory.mktemp("tiny-chat")
    config = LlamaConfig(
        vocab_size=len(tokenizer) + UNUSED_IDS, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharp attention, so rotary positions matter (at init every score is ~0)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_run(tiny_chat_dir, tmp_path_factory) -> Path:
    """A tiny causal LM tuned for one epoch on 24 records (5 held out for test)."""
    root = tmp_path_factory.mktemp("gguf-run")
    config = tiny_task_config("causal_lm", tiny_chat_dir, write_examples("causal_lm", root / DATA_FILE["causal_lm"], 24),
                              root / "run")  # fmt: skip
    config["train"].update(num_epochs=1)
    config["generation"].update(max_examples=1)
    return api.train(config).run_dir


def test_an_f32_gguf_predicts_as_the_run_and_carries_what_llama_cpp_reads(chat_run, tiny_chat_dir, tmp_path):
    report = export_gguf(chat_run, tmp_path / "out", dtype="f32", log=lambda message: None)
    figures = report["models"]["model.gguf"]
    assert figures["rows"] == 5 and report["split"] == "test"  # 24 records: 14 train, 5 validation, 5 test
    assert figures["top1_agreement"] == 1.0 and figures["max_logit_difference"] < 1e-4
    assert figures["tokenizer_agreement"] == 1.0 and report["warnings"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Modelfile", "model.gguf", "parity.json"]
    assert json.loads((tmp_path / "out" / "parity.json").read_text()) == report

    reader = GGUFReader(tmp_path / "out" / "model.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    assert (field("general.architecture"), field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == (
        "llama", "gpt2", "gpt-2")  # fmt: skip
    assert (field("llama.block_count"), field("llama.attention.head_count"), field("llama.attention.head_count_kv"),
            field("llama.embedding_length"), field("llama.context_length")) == (2, 4, 2, 32, 256)  # fmt: skip
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert len(tokens) == len(tokenizer) + UNUSED_IDS == field("llama.vocab_size")
    assert types[-UNUSED_IDS:] == [TokenType.UNUSED] * UNUSED_IDS and tokens[-1] == f"[PAD{len(tokens) - 1}]"
    assert tokens[tokenizer.eos_token_id] == "<|im_end|>" and types[tokenizer.eos_token_id] == TokenType.CONTROL
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field("tokenizer.ggml.add_bos_token") is False  # the template writes its own special tokens
    assert field("tokenizer.chat_template") == CHATML
    names = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in names  # tied to token_embd, as in the model
    assert names["blk.0.attn_q.weight"] == GGMLQuantizationType.F32

    # Read back independently: greedy continuations of a held-out-like prompt are the same.
    from transformers import AutoModelForCausalLM

    run_model = AutoModelForCausalLM.from_pretrained(chat_run / "model").eval()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", gguf_file="model.gguf", dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Item 3: repeat the word amber."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    options = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    assert torch.equal(run_model.generate(**prompt, **options), loaded.generate(**prompt, **options))

    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    template = (
        '{{ if not (and .Messages (eq (index .Messages 0).Role "system")) }}<|im_start|>system\n'
        "You are a helpful assistant.<|im_end|>\n{{ end }}{{ range .Messages }}"
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
        "{{ end }}{{ end }}<|im_start|>assistant\n"
    )
    assert "\nFROM ./model.gguf\n" in modelfile and f'\nTEMPLATE """{template}"""\n' in modelfile
    assert modelfile.endswith('PARAMETER stop "<|im_end|>"\nPARAMETER temperature 0\nPARAMETER num_predict 4\n')


def test_f16_from_the_command_line_keeps_norms_in_f32(chat_run, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["export", str(chat_run), "--format", "gguf", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["dtype"] == "f16" and report["models"]["model.gguf"]["top1_agreement"] >= 0.98
    types = {t.name: t.tensor_type for t in GGUFReader(tmp_path / "out" / "model.gguf").tensors}
    assert types["blk.1.ffn_down.weight"] == types["token_embd.weight"] == GGMLQuantizationType.F16
    assert types["blk.1.attn_norm.weight"] == types["output_norm.weight"] == GGMLQuantizationType.F32


def test_without_the_rotary_permutation_parity_fails_and_nothing_is_left(chat_run, tmp_path, monkeypatch):
    """The Q/K permutation is what transformers (and llama.cpp) expect: leaving it out changes
    the model, and the export is refused."""
    monkeypatch.setattr(gguf_export, "rotary_permute", lambda weights, heads: weights)
    with pytest.raises(TunesmithError, match=r"GGUF export refused, parity failed: .*logits differ by up to"):
        export_gguf(chat_run, tmp_path / "out", dtype="f32", log=lambda message: None)
    assert list(tmp_path.iterdir()) == []  # neither out nor its temporary directory


def test_a_run_that_does_not_chat_is_refused_before_its_model_loads(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task:\n  type: single_label\n", encoding="utf-8")
    (run / "task.json").write_text(json.dumps({"type": "single_label", "label_names": ["neg", "pos"]}))
    with pytest.raises(TunesmithError, match=r"--format gguf exports language models that chat \(causal_lm runs\); "
                                             r"this is a single_label run: use --format hf or onnx"):  # fmt: skip
        export_gguf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    from typer.testing import CliRunner

    from tunesmith.cli import app

    mixed = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--gguf-type", "f32", "--out",
                                     str(tmp_path / "out")])  # fmt: skip
    assert mixed.exit_code == 2 and "--gguf-type to --format gguf" in mixed.output


def test_the_go_template_renders_as_the_jinja_one_and_odd_templates_are_refused():
    from jinja2 import Template

    def render(template):
        return lambda messages, generation: Template(template).render(messages=messages,
                                                                      add_generation_prompt=generation)  # fmt: skip

    forms = turn_forms(render(CHATML))
    conversation = [{"role": "system", "content": "Be {{ brief }}."}, {"role": "user", "content": "Hi"}]
    assert forms.render(conversation) == render(CHATML)(conversation, True)
    braces = turn_forms(render("{% for m in messages %}{{ '{{' }}{{ m['content'] }}\n{% endfor %}"))
    assert go_template(braces).startswith('{{ range .Messages }}{{ if eq .Role "system" }}{{ "{{" }}{{ .Content }}')
    with pytest.raises(ValueError, match="first user message differently"):  # numbers its turns
        turn_forms(render("{% for m in messages %}{{ loop.index }}:{{ m['content'] }}\n{% endfor %}"))
    with pytest.raises(ValueError, match="one prefix and suffix per role"):  # marks turns after the third
        turn_forms(
            render("{% for m in messages %}{% if loop.index > 3 %}late {% endif %}{{ m['content'] }}\n{% endfor %}")
        )
    with pytest.raises(ValueError, match="around the content as given"):
        turn_forms(render("{% for m in messages %}{{ m['content'] | trim }}\n{% endfor %}"))
    with pytest.raises(ValueError, match="content exactly once"):
        turn_forms(render("{% for m in messages %}{{ m['content'] }}={{ m['content'] }}\n{% endfor %}"))


def test_only_tokenizers_llama_cpp_splits_alike_are_written():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bpe = {"model": {"type": "BPE", "byte_fallback": False}, "decoder": {"type": "ByteLevel"}, "normalizer": None}
    assert pre_tokenizer_name(bpe | {"pre_tokenizer": byte_level}) == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_tokenizer_name(bpe | {"pre_tokenizer": digits}) == "smollm"
    with pytest.raises(TunesmithError, match="cannot name this tokenizer's pre-tokenizer"):
        pre_tokenizer_name(bpe | {"pre_tokenizer": {"type": "Whitespace"}})
    with pytest.raises(TunesmithError, match="writes byte-level BPE tokenizers"):
        pre_tokenizer_name({"model": {"type": "Unigram"}, "decoder": {"type": "Metaspace"}})
