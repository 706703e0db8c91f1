"""A tiny random BERT checkpoint folder made offline: for tests, the demo and quick trials of a recipe.

The vocabulary is the most frequent lower-cased words of the given texts plus BERT's special tokens, so
the WordPiece tokenizer covers the data; the model is ``BertForSequenceClassification`` with a small
random config. Everything ``transformers.AutoModel*.from_pretrained`` needs is written to the folder.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_checkpoint(folder, texts, vocab_size: int = 1000, hidden_size: int = 64, layers: int = 2, heads: int = 4,
                         intermediate_size: int = 128, num_labels: int = 2, seed: int = 0, dropout: float = 0.1) -> Path:
    """``dropout`` sets BERT's hidden and attention-probability dropout (0: training is a deterministic
    function of the batches, e.g. to compare a data-parallel run with a single-process one)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = Counter(w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = SPECIAL_TOKENS + [w for w, _ in words.most_common(vocab_size - len(SPECIAL_TOKENS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate_size, max_position_embeddings=256, num_labels=num_labels,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder
