"""Token types for ruling out shallow causes (seed 003): punctuation, digits, whitespace.

    from polysdk.detect.token_types import token_type, normalise, attribute, SHALLOW
    token_type("▁.")       # 'punctuation'       token_type("3.14") -> 'digits'
    token_type("\\n")       # 'whitespace'        token_type("##la") -> 'content'
    shares = attribute(values, types, text, n_texts)   # each type's share of the mass

A token's type comes from its string alone, with the word-start / continuation marks
of the common tokenizers removed (SentencePiece ``▁``, GPT-2 ``Ġ``/``Ċ``, WordPiece
``##``): ``special`` (``<bos>``, ``[CLS]``...), ``whitespace`` (nothing left),
``punctuation`` (only punctuation or symbols), ``digits`` (digits with at most
punctuation: ``3.14``, ``10``), else ``content``. A content token becomes ``shared``
for a pair of sets when its normalised form (marks removed, lower case) occurs in the
texts of both (the seed's "tokens in the Fortran code that were also base words in
Spanish"); the rest stay ``content``. ``SHALLOW`` are the types that carry no concept.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["token_type", "normalise", "token_types", "attribute", "fragments", "TYPES",
           "SHALLOW", "SPECIAL_TOKENS"]

TYPES = ("punctuation", "digits", "whitespace", "special", "shared", "content")
SHALLOW = ("punctuation", "digits", "whitespace", "special")
SPECIAL_TOKENS = frozenset({"<bos>", "<pad>", "<unk>", "<s>", "</s>", "<|endoftext|>",
                            "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"})
_MARKS = ("▁", "Ġ", "Ċ", "##")


def normalise(token: str) -> str:
    """The token without word marks and surrounding whitespace, in lower case."""
    t = str(token)
    if t.startswith("##"):
        t = t[2:]
    for m in ("▁", "Ġ", "Ċ"):
        t = t.replace(m, " ")
    return t.strip().lower()


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def token_type(token: str) -> str:
    """``special``, ``whitespace``, ``punctuation``, ``digits`` or ``content``."""
    if str(token) in SPECIAL_TOKENS:
        return "special"
    t = normalise(token)
    if not t or t.isspace():
        return "whitespace"
    t = "".join(t.split())
    if all(_is_punct(c) for c in t):
        return "punctuation"
    if any(c.isdigit() for c in t) and all(c.isdigit() or _is_punct(c) for c in t):
        return "digits"
    return "content"


def token_types(tokens: Sequence[str], set_of_token: Sequence[str] | None = None,
                pair: Iterable[str] | None = None) -> np.ndarray:
    """Type of every token; with ``set_of_token`` and a ``pair`` of set names, content
    tokens whose normalised form occurs in both sets of the pair are ``shared``."""
    types = np.array([token_type(t) for t in tokens], dtype=object)
    if pair is not None and set_of_token is not None:
        a, b = list(pair)
        sets = np.asarray(set_of_token)
        norm = np.array([normalise(t) for t in tokens], dtype=object)
        content = types == "content"
        in_a = set(norm[content & (sets == a)])
        in_b = set(norm[content & (sets == b)])
        both = in_a & in_b
        types[content & np.isin(norm, list(both))] = "shared"
    return types.astype(str)


def attribute(values: np.ndarray, types: Sequence[str], text: np.ndarray,
              types_order: Sequence[str] = TYPES) -> dict[str, float]:
    """Each type's share of the positive activation mass over a set's texts.

    ``values``/``types``/``text``: per token of the set (``text`` = its text index).
    Each text weighs the same (a token's weight is 1 / its text's length, as in the
    per-text mean). Shares of the types sum to 1 (all 0 when no token is positive).
    """
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    text = np.asarray(text)
    _, inv, counts = np.unique(text, return_inverse=True, return_counts=True)
    w = values / counts[inv.reshape(-1)]
    types = np.asarray(types)
    mass = {t: float(w[types == t].sum()) for t in types_order}
    total = sum(mass.values())
    return {t: (m / total if total > 0 else 0.0) for t, m in mass.items()}


def fragments(tokens: Sequence[str], position: Sequence[int]) -> np.ndarray:
    """True where a content token continues a word. WordPiece (any ``##`` token in
    ``tokens``): the ``##x`` tokens. Otherwise (SentencePiece / GPT-2 marks): a token
    with no word-start mark (``▁``/``Ġ``) right after a content token of its text."""
    toks = [str(t) for t in tokens]
    types = [token_type(t) for t in toks]
    if any(t.startswith("##") for t in toks):
        return np.array([t.startswith("##") and k == "content" for t, k in zip(toks, types)])
    out = np.zeros(len(toks), dtype=bool)
    for i, (t, k, pos) in enumerate(zip(toks, types, position)):
        after_content = i > 0 and int(pos) > 0 and types[i - 1] == "content"
        out[i] = k == "content" and after_content and not t.startswith(("▁", "Ġ"))
    return out
