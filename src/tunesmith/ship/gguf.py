"""``tunesmith export --format gguf``: a causal-LM run as one GGUF file for llama.cpp and the tools
built on it (Ollama, LM Studio), with an Ollama ``Modelfile`` beside it, kept only if the GGUF,
read back, predicts the run's next tokens.

The export directory holds:

- ``model.gguf``: the llama architecture (the run's model/ is the merged model: LoRA adapters are
  folded in when training ends), its hyperparameters, the tokenizer (byte-level BPE, "gpt2" in
  llama.cpp's words: tokens, token types, merges, special token ids, whether a prompt gets BOS
  or EOS, and the chat template the run was trained with) and the tensors in f16 (2-D weights;
  norms stay f32, as llama.cpp keeps them) or f32;
- ``Modelfile``: ``FROM ./model.gguf``, the chat template as an Ollama (Go) template, the end of
  turn as a stop token, and the run's generation defaults;
- ``parity.json``: the GGUF loaded back with transformers' GGUF loader against the run's PyTorch
  model, next-token logits on held-out prompts (the run's test split, else its validation split,
  rendered as in training): top-1 agreement, largest logit difference, and how many prompts the
  GGUF's tokenizer reads as the run's does.

Like ``ship/export.py`` it writes into a temporary directory beside ``--out`` and renames it into
place only when parity holds, so a refused export leaves nothing behind.

Written with the ``gguf`` package (GGUFWriter, the tensor name map, SpecialVocab for merges and
special tokens), the library llama.cpp's own converter uses. That converter is a script in
llama.cpp's source tree, not an installable library, so three of its steps are redone here:
the rotary permutation of the Q and K projections (``rotary_permute``, which transformers'
LlamaTensorProcessor undoes on loading), the token list with its types (``token_list``), and the
pre-tokenizer's name (``pre_tokenizer_name``: the script hashes the tokens of a test string
against a table; here the tokenizer's own pre-tokenizer is matched, so a tokenizer that llama.cpp
would split differently from training is refused rather than guessed). The Modelfile is
ship/modelfile.py's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.models.load import pad_token_id
from tunesmith.runs import RunDir, claim_output
from tunesmith.ship.modelfile import modelfile
from tunesmith.tasks.build import TASK_KINDS, stages_of
from tunesmith.tasks.contract import Chat
from tunesmith.tasks.run import load_run, load_task

DTYPES = {"f32": (np.float32, gguf.LlamaFileType.ALL_F32), "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16)}
F32_MIN_AGREEMENT = 0.999
F32_MAX_LOGIT_DIFFERENCE = 1e-3
MODEL_FILE = "model.gguf"

# llama.cpp's pre-tokenizers (tokenizer.ggml.pre) that split text as these transformers
# pre-tokenizers do: "gpt-2" is GPT-2's byte-level regex, "smollm" splits digits one by one
# first (SmolLM, StarCoder), "llama-bpe" is Llama 3's regex.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name for how a tokenizer splits text before BPE, from its ``tokenizer.json``.

    Raises:
        TunesmithError: not a byte-level BPE tokenizer, or one that splits text in a way this
            export cannot name for llama.cpp (which would then tokenize differently from training).
    """
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise TunesmithError(
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style); this run's tokenizer is a "
            f"{model.get('type')} model with a {decoder.get('type')} decoder. Export it with --format hf"
        )
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]

    def byte_level(step: dict, use_regex: bool) -> bool:
        return (step.get("type") == "ByteLevel" and not step.get("add_prefix_space")
                and bool(step.get("use_regex", True)) == use_regex)  # fmt: skip

    if spec.get("normalizer") is None:
        if len(steps) == 1 and byte_level(steps[0], True):
            return "gpt-2"
        if len(steps) == 2 and steps[0] == {"type": "Digits", "individual_digits": True} and byte_level(steps[1], True):
            return "smollm"
        split = {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
        if len(steps) == 2 and steps[0] == split and byte_level(steps[1], False):
            return "llama-bpe"
    raise TunesmithError(
        f"GGUF export cannot name this tokenizer's pre-tokenizer for llama.cpp ({json.dumps(pre)[:200]}), so "
        "llama.cpp would split text differently from training; it knows GPT-2's byte-level split, SmolLM's "
        "digit split and Llama 3's. Export it with --format hf"
    )


def looks_special(token: str) -> bool:
    """An added token that llama.cpp should treat as a control token though it is not marked
    special (llama.cpp's converter makes the same guess)."""
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def token_list(processor, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every token id's text and llama.cpp token type, as llama.cpp's converter lists them: ids
    the tokenizer does not use (the model's vocabulary is larger) become unused ``[PADn]``."""
    reverse = {index: token for token, index in processor.get_vocab().items()}
    added = processor.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[index]
        if index in added:
            if not added[index].normalized:  # llama.cpp matches added tokens as written
                token = processor.decode(processor.encode(token, add_special_tokens=False))
            special = added[index].special or looks_special(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def rotary_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """A Q or K projection (or its bias) in llama.cpp's rotary layout: within each head, the
    two halves that transformers rotates together are interleaved (llama.cpp's
    ``LlamaModel.permute``; transformers' ``LlamaTensorProcessor`` undoes it)."""
    shape = weights.shape
    return weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def check_architecture(config) -> None:
    """Refuses a model the llama architecture of llama.cpp would compute differently.

    Raises:
        TunesmithError: not a Llama model, another activation, or a rope scaling not written here.
    """
    if config.model_type != "llama":
        raise TunesmithError(f"GGUF export writes the llama architecture (Llama, SmolLM2, ...); this run's "
                             f"model is {config.model_type!r}. Export it with --format hf")  # fmt: skip
    if config.hidden_act != "silu":
        raise TunesmithError(f"GGUF export: the model's activation is {config.hidden_act!r}; llama.cpp's "
                             "llama architecture computes silu")  # fmt: skip
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise TunesmithError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not written by this "
                             "export (only plain rotary embeddings)")  # fmt: skip


def add_hyperparameters(writer: gguf.GGUFWriter, config, file_type: int, name: str) -> None:
    """The llama hyperparameters llama.cpp reads (and transformers' GGUF loader maps back)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tensors(writer: gguf.GGUFWriter, model, dtype: type) -> None:
    """The model's tensors under llama.cpp's names; the output head only when it is not the
    token embedding (without it, llama.cpp and transformers tie the two).

    Raises:
        TunesmithError: a tensor with no llama.cpp name (the model is not plain llama).
    """
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads}
    unnamed = []
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        base, _, suffix = key.rpartition(".")
        name = names.get_name(base)
        if name is None:
            unnamed.append(key)
            continue
        data = tensor.detach().float().cpu().numpy()
        for projection, count in heads.items():
            if base.endswith(projection):
                data = rotary_permute(data, count)
        writer.add_tensor(f"{name}.{suffix}", np.ascontiguousarray(data.astype(dtype if data.ndim > 1 else np.float32)))
    if unnamed:
        raise TunesmithError(f"GGUF export: no llama.cpp name for the tensors {unnamed[:5]}; the model is not a "
                             "plain Llama. Export it with --format hf")  # fmt: skip


def bos_eos_added(task: Chat, processor) -> tuple[bool, bool]:
    """Whether generation's tokenization of a rendered prompt adds BOS and EOS, which llama.cpp
    must then do too (``tokenizer.ggml.add_bos_token``).

    Raises:
        TunesmithError: it adds tokens llama.cpp cannot add.
    """
    plain = processor("Hello", add_special_tokens=False)["input_ids"]
    ids = task.prompt_ids(processor, "Hello")
    add_bos = processor.bos_token_id is not None and ids[:1] == [processor.bos_token_id] != plain[:1]
    add_eos = processor.eos_token_id is not None and ids[-1:] == [processor.eos_token_id] != plain[-1:]
    if ids != [processor.bos_token_id] * add_bos + plain + [processor.eos_token_id] * add_eos:
        raise TunesmithError(f"GGUF export: generation tokenizes 'Hello' as {ids}, which llama.cpp cannot "
                             f"reproduce from {plain} (it can add only BOS and EOS)")  # fmt: skip
    return add_bos, add_eos


def add_tokenizer(writer: gguf.GGUFWriter, task: Chat, processor, model_dir: Path, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it: byte-level BPE, tokens and types, merges, special
    ids, whether a prompt gets BOS/EOS, and the chat template the run was trained with."""
    pre = pre_tokenizer_name(json.loads(processor.backend_tokenizer.to_str()))
    if len(processor) > vocab_size:
        raise TunesmithError(f"GGUF export: the tokenizer has {len(processor)} tokens, more than the model's "
                             f"{vocab_size} embeddings")  # fmt: skip
    tokens, types = token_list(processor, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise TunesmithError(f"GGUF export: no BPE merges in {model_dir / 'tokenizer.json'}")
    ids = {"bos": processor.bos_token_id, "eos": processor.eos_token_id, "unk": processor.unk_token_id,
           "pad": pad_token_id(processor)}  # fmt: skip
    special.special_token_ids = {kind: index for kind, index in ids.items() if index is not None}
    add_bos, add_eos = bos_eos_added(task, processor)
    special.add_special_token = {"bos": add_bos, "eos": add_eos}
    special.chat_template = task.chat_format(processor).template
    special.add_to_gguf(writer, quiet=True)


def write_gguf(path: Path, task: Chat, model, processor, model_dir: Path, *, dtype: str, name: str) -> None:
    """Writes the model, its hyperparameters and its tokenizer as one GGUF file."""
    check_architecture(model.config)
    numpy_type, file_type = DTYPES[dtype]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        add_hyperparameters(writer, model.config, file_type, name)
        add_tokenizer(writer, task, processor, model_dir, model.config.vocab_size)
        add_tensors(writer, model, numpy_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# -- parity -----------------------------------------------------------------------------------
def held_out_prompts(run: RunDir, task: Chat, processor, count: int) -> tuple[list[str], str]:
    """Up to ``count`` prompts of the run's test split (else its validation split), rendered
    as in training and ending where the assistant answers.

    Raises:
        TunesmithError: the run has neither split.
    """
    import pandas as pd

    for split in ("test", "validation"):
        path = run.data_dir / f"{split}.parquet"
        if path.is_file():
            return task.split_prompts(processor, pd.read_parquet(path).iloc[:count]), split
    raise TunesmithError(f"{run.path} has no test or validation split to check the GGUF on")


def next_token_logits(model, inputs: list[list[int]]) -> np.ndarray:
    """The logits of the token after each prompt, one prompt at a time (no padding); the output
    head runs on the last position only."""
    import torch

    with torch.inference_mode():
        return np.stack([model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float().numpy()
                         for ids in inputs])  # fmt: skip


def parity(path: Path, reference: np.ndarray, inputs: list[list[int]], prompts: list[str]) -> dict[str, Any]:
    """The GGUF loaded back with transformers' GGUF loader against the run's model: top-1
    agreement and the largest difference of next-token logits on the same token ids, and the
    share of prompts the GGUF's tokenizer turns into the run's ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    logits = next_token_logits(loaded, inputs)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    read = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    same = [ids == expected for ids, expected in zip(read, inputs)]
    figures = {
        "rows": len(inputs),
        "top1_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        "max_logit_difference": float(np.abs(logits - reference).max()),
        "tokenizer_agreement": float(np.mean(same)),
        "bytes": path.stat().st_size,
    }
    if not all(same):
        first = same.index(False)
        figures["tokenizer_difference"] = {"prompt": prompts[first], "run": inputs[first], "gguf": read[first]}
    return figures


def check_floors(figures: dict[str, Any], dtype: str, min_agreement: float, split: str) -> list[str]:
    """Warnings of a GGUF that passes its floors.

    Raises:
        TunesmithError: top-1 agreement below the floor (f32: all but rounding), or f32 logits
            that differ by more than rounding.
    """
    floor = F32_MIN_AGREEMENT if dtype == "f32" else min_agreement
    failures = []
    if figures["top1_agreement"] < floor:
        failures.append(
            f"top-1 agreement {figures['top1_agreement']:.4f} < {floor} on {figures['rows']} {split} prompts"
        )
    if dtype == "f32" and figures["max_logit_difference"] > F32_MAX_LOGIT_DIFFERENCE:
        failures.append(f"logits differ by up to {figures['max_logit_difference']:.2e} (> {F32_MAX_LOGIT_DIFFERENCE})")
    if failures:
        raise TunesmithError("GGUF export refused, parity failed: " + "; ".join(failures))
    if figures["tokenizer_agreement"] < 1:
        return [f"transformers reads {1 - figures['tokenizer_agreement']:.0%} of the prompts into other tokens "
                f"with the GGUF's tokenizer (see tokenizer_difference); llama.cpp may too"]  # fmt: skip
    return []


def require_chat(task, what: str) -> Chat:
    """The task as a :class:`Chat`, or a refusal naming the kinds GGUF export covers.

    Raises:
        TunesmithError: the run's kind does not generate chat turns.
    """
    if "chat" in task.stages:
        return task
    covered = ", ".join(kind for kind in TASK_KINDS if "chat" in stages_of(kind))
    raise TunesmithError(f"{what}: --format gguf exports language models that chat ({covered} runs); this is a "
                         f"{task.kind} run: use --format hf or onnx")  # fmt: skip


def export_gguf(run_dir: str | Path, out: str | Path, *, dtype: str = "f16", prompts: int = 100,
                min_agreement: float = 0.98, log=print) -> dict[str, Any]:  # fmt: skip
    """Exports a causal-LM run as ``out/model.gguf`` with an Ollama ``out/Modelfile``; returns the
    parity report (also written to ``out/parity.json``).

    Args:
        dtype: "f16" (2-D weights in half precision, what llama.cpp users expect) or "f32".
        prompts: check parity on at most this many held-out prompts.
        min_agreement: the smallest top-1 agreement of an f16 GGUF (an f32 one must agree on all).

    Raises:
        TunesmithError: not a causal-LM run, hashes do not match, a model or tokenizer that the
            GGUF cannot carry, or parity fails; nothing is left at ``out``.
    """
    if dtype not in DTYPES:
        raise TunesmithError(f"--gguf-type {dtype!r}: choose f16 or f32")
    out = claim_output(out, kind="dir", what="--out")
    run, _, task = load_task(run_dir)
    task = require_chat(task, str(run.path))  # before the slow load
    run, _, task, model, processor = load_run(run_dir, verify_hashes=True)
    check_architecture(model.config)  # refusals before the slow work
    pre_tokenizer_name(json.loads(processor.backend_tokenizer.to_str()))
    texts, split = held_out_prompts(run, task, processor, prompts)
    inputs = [task.prompt_ids(processor, text) for text in texts]
    log(f"Checking the GGUF on {len(texts)} prompts of the run's {split} split")
    reference = next_token_logits(model, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # a fresh name: nothing else is removed
    tmp.chmod(out.parent.stat().st_mode & 0o777)  # mkdtemp makes it private; give it its folder's permissions
    try:
        write_gguf(tmp / MODEL_FILE, task, model, processor, run.model_dir, dtype=dtype, name=run.path.name)
        text, warnings = modelfile(task, processor, str(run.path))
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        figures = parity(tmp / MODEL_FILE, reference, inputs, texts)
        log(f"{MODEL_FILE} ({dtype}): top-1 agreement {figures['top1_agreement']:.4f}, max logit difference "
            f"{figures['max_logit_difference']:.2e}, tokenizer agreement {figures['tokenizer_agreement']:.4f} "
            f"on {figures['rows']} prompts")  # fmt: skip
        warnings += check_floors(figures, dtype, min_agreement, split)
        report: dict[str, Any] = {"run": str(run.path), "format": "gguf", "dtype": dtype, "split": split,
                                  "models": {MODEL_FILE: figures}, "warnings": warnings}  # fmt: skip
        (tmp / "parity.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for warning in warnings:
        log(f"WARNING: {warning}")
    return report
