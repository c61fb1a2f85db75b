"""A small BPE tokenizer for the embedded SoLU / GELU twins, trained on their corpus.

    from polysdk.data.tokenizer import train_tokenizer, tokenizer_from_json
    tok = train_tokenizer(docs, vocab_size=2048)     # a transformers PreTrainedTokenizerFast
    batch = tok(texts, padding=True, return_tensors="pt")   # input_ids, attention_mask
    tok.convert_ids_to_tokens(batch["input_ids"][0])        # ['<bos>', 'real', '▁::', ...]
    again = tokenizer_from_json(tok.backend_tokenizer.to_str())   # the same tokenizer

What it is: Hugging Face ``tokenizers`` BPE over Unicode characters (accents stay one
character, so Spanish tokens are readable), with line breaks split off as tokens
of their own (Fortran's layout survives) and SentencePiece's ``Metaspace``: a space
becomes ``▁`` at the start of the word that follows (no ``▁`` is prepended to a text
or a line). Decoding gives the text back exactly. The alphabet is every character of the training corpus
plus printable ASCII, so the concept sets have no ``<unk>``. Special tokens: ``<pad>``
(0), ``<bos>`` (1, prepended to every text, as TransformerLens prepends one), ``<unk>``
(2). Padding is on the right. Training is deterministic for a given corpus and size
(the study stores the JSON with the trained model anyway).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

__all__ = ["train_tokenizer", "tokenizer_from_json", "PAD", "BOS", "UNK"]

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"


def _wrap(core: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, pad_token=PAD,
                                  unk_token=UNK, padding_side="right")
    tok.model_max_length = 10 ** 9   # the model's n_ctx decides (the study truncates)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Any:
    """Train the BPE tokenizer (see the module docstring) on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = list(texts)
    alphabet = sorted((set("".join(texts)) | set(string.printable) | {"▁"}) - set(" \x0b\x0c\r"))
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")])
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=[PAD, BOS, UNK],
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet),
                                  show_progress=False)
    core.train_from_iterator(texts, trainer)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, core.token_to_id(BOS))])
    return _wrap(core)


def tokenizer_from_json(text: str) -> Any:
    """The tokenizer saved as ``tok.backend_tokenizer.to_str()``."""
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_str(text))
