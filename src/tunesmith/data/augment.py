"""Text augmentation for the training split: EDA operations and character noise, seeded, offline.

EDA (Wei and Zou, 2019): synonym replacement, random insertion (of a synonym of a word in the
text), random swap and random deletion, each touching a share of the words. Synonyms are the
nearest neighbours of a word in the model's own input-embedding table (cosine similarity among
whole-word vocabulary entries), so nothing is downloaded. Embedding neighbours are not always
synonyms: antonyms such as good/bad can sit close together, which is why the ablation in
benchmarks/ measures whether augmentation helps before you rely on it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

OPERATIONS = ("synonym", "insert", "swap", "delete", "char_noise")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def embedding_neighbours(model_name: str, words: set[str], k: int = 5) -> dict[str, list[str]]:
    """For each word that is one whole-word token of the model's vocabulary (English stop words
    left out): its ``k`` nearest whole-word tokens by cosine similarity of the input embeddings."""
    import torch
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    from transformers import AutoModel

    from tunesmith.models.load import load_tokenizer, resolve_model

    words = {w for w in words if w not in ENGLISH_STOP_WORDS}  # as in EDA: stop words keep their place
    resolved = resolve_model(model_name)
    tokenizer = load_tokenizer(resolved)
    embeddings = AutoModel.from_pretrained(resolved.location).get_input_embeddings().weight.detach()
    vocabulary = tokenizer.get_vocab()
    candidates = sorted((t, i) for t, i in vocabulary.items() if t.isalpha() and len(t) >= 3 and t.islower())
    if not candidates:
        return {}
    names = [t for t, _ in candidates]
    matrix = torch.nn.functional.normalize(embeddings[[i for _, i in candidates]], dim=1)
    position = {t: n for n, t in enumerate(names)}
    queried = sorted(w for w in words if w in position)
    result = {}
    for start in range(0, len(queried), 1024):
        chunk = queried[start : start + 1024]
        scores = matrix[[position[w] for w in chunk]] @ matrix.T
        scores[torch.arange(len(chunk)), torch.tensor([position[w] for w in chunk])] = -2  # not itself
        top = scores.topk(k, dim=1).indices.tolist()
        result |= {w: [names[j] for j in row] for w, row in zip(chunk, top)}
    return result


def _synonym(word: str, neighbours: dict[str, list[str]], rng: np.random.Generator) -> str | None:
    options = neighbours.get(word.lower())
    return str(rng.choice(options)) if options else None


def augment_text(text: str, operation: str, *, word_share: float, char_share: float,
                 neighbours: dict[str, list[str]], rng: np.random.Generator) -> str:  # fmt: skip
    """One augmented variant of ``text`` (it may come back unchanged when nothing applies)."""
    words = text.split()
    if not words:
        return text
    count = max(1, round(word_share * len(words)))
    if operation == "synonym":
        order = rng.permutation(len(words))
        replaced = 0
        for i in order:
            if replaced == count:
                break
            new = _synonym(words[i], neighbours, rng)
            if new is not None:
                words[i] = new
                replaced += 1
    elif operation == "insert":
        for _ in range(count):
            new = next((s for s in (_synonym(w, neighbours, rng) for w in rng.permutation(words)) if s), None)
            if new is None:
                break
            words.insert(int(rng.integers(0, len(words) + 1)), new)
    elif operation == "swap":
        for _ in range(count if len(words) > 1 else 0):
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
    elif operation == "delete":
        kept = [w for w in words if rng.random() >= word_share]
        words = kept or [words[int(rng.integers(0, len(words)))]]
    elif operation == "char_noise":
        chars = list(" ".join(words))
        for _ in range(max(1, round(char_share * len(chars)))):
            i = int(rng.integers(0, len(chars)))
            kind = rng.integers(0, 3)
            if kind == 0 and i + 1 < len(chars):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
            elif kind == 1 and len(chars) > 1:
                del chars[i]
            else:
                chars.insert(i, str(rng.choice(list(LETTERS))))
        return "".join(chars)
    else:
        raise ValueError(operation)
    return " ".join(words)


def augment_frame(frame: pd.DataFrame, *, ratio: float, operations: list[str], word_share: float,
                  char_share: float, neighbours: dict[str, list[str]], seed: int) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Adds ``ratio`` augmented rows per row (round(ratio * n) in all; a ratio of 2 gives every
    row two variants), each made by one operation drawn at random, with the row's label.
    Added rows carry ``augmented`` = the operation; variants equal to their source are not added.

    Returns:
        The table with the added rows after the originals, and counts per operation.
    """
    rng = np.random.default_rng([seed, 7])
    total = round(ratio * len(frame))
    if total == 0:
        return frame.assign(augmented=""), {"rows_added": 0, "by_operation": {}}
    sources = np.concatenate([rng.permutation(len(frame)) for _ in range(-(-total // max(len(frame), 1)))])[:total]
    added, counts = [], Counter()
    texts = frame["text"].tolist()
    for position in sources:
        operation = str(rng.choice(operations))
        variant = augment_text(texts[position], operation, word_share=word_share, char_share=char_share,
                               neighbours=neighbours, rng=rng)  # fmt: skip
        if variant == texts[position]:
            counts["unchanged (not added)"] += 1
            continue
        row = frame.iloc[position].to_dict() | {"text": variant, "augmented": operation}
        added.append(row)
        counts[operation] += 1
    result = frame.assign(augmented="") if "augmented" not in frame else frame
    if added:
        result = pd.concat([result, pd.DataFrame(added)], ignore_index=True)
    return result, {"rows_added": len(added), "by_operation": dict(counts)}
