"""Text corpora built from installed packages (no download): concept sets and training text.

    from polysdk.data.corpora import concept_sets, training_corpus, TOPICS
    cs = concept_sets("seed-run-2")          # Fortran, Spanish, medical, gibberish: 10 texts each
    cs.sets["fortran"][0][:40], cs.sources["medical"]
    cs1 = concept_sets("seed-run-1")         # 9 topics x 5 sentences (the seed's first run)
    docs = training_corpus(chars_per_topic=200_000, exclude=cs)   # for the SoLU/GELU twins

Where each topic comes from (``SOURCES``):

* ``fortran``: the 85 ``.f``/``.f90`` files numpy ships under ``numpy/f2py/tests/src``;
  a text is the first whole lines (up to ``max_chars``) of one file of at least 300
  bytes. Files used for the concept sets are left out of the training corpus.
* ``spanish``: "poetry" from faker's ``es_ES`` lorem provider (999 Spanish words):
  capitalised lines of 4-8 words, stanzas of four lines, a comma or a full stop at the
  line ends. Word salad in verse form, not real poems: say so when citing it.
* ``medical``: scikit-learn's bundled dataset descriptions that are medical, the breast
  cancer (Wisconsin diagnostic: cell nuclei of fine needle aspirates) and diabetes
  DESCRs: their prose sentences, the attribute descriptions as sentences, and case
  reports written from rows of the two bundled tables (``load_breast_cancer``,
  ``load_diabetes(scaled=False)``). The other DESCRs (iris, wine, digits, housing...)
  are not medical and are not used here.
* ``gibberish``: generated: lowercase letters in "words" of 2-9 letters, spaces and
  line breaks only (no punctuation, no digits).
* the seed's first run also gets ``c_code`` (numpy's ``.c`` sources), ``python_code``
  (the standard library's ``.py`` modules), ``french`` / ``german`` (faker ``fr_FR`` /
  ``de_DE`` lorem sentences) and ``legal`` (the ``LICENSE`` files in the installed
  packages' ``.dist-info`` folders).

Every text is deterministic given ``seed``; the concept-set texts and the training
corpus use different random streams (and, for Fortran, different files), except the
medical DESCR prose, which is too short to split and appears in both.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from polysdk.errors import ConfigError

__all__ = ["ConceptCorpus", "concept_sets", "training_corpus", "topic_texts", "TOPICS",
           "SOURCES", "PRESET_TOPICS"]

#: where each topic's texts come from (the report prints this)
SOURCES: dict[str, str] = {
    "fortran": "numpy/f2py/tests/src (*.f, *.f90), first lines of a file",
    "spanish": "faker es_ES lorem words as verse (4-line stanzas)",
    "medical": "scikit-learn DESCRs breast_cancer + diabetes (prose, attribute "
               "descriptions, case reports from the bundled tables)",
    "gibberish": "generated: random lowercase letter 'words', spaces, line breaks",
    "c_code": "numpy *.c sources",
    "python_code": "Python standard library *.py modules",
    "french": "faker fr_FR lorem sentences",
    "german": "faker de_DE lorem sentences",
    "legal": "LICENSE files of the installed packages (*.dist-info)",
}

#: the concept sets of each preset: seed-run-2 = the seed's second run (4 sets x 10
#: texts), seed-run-1 = its first run (9 topics x 5 sentences; the seed does not list
#: its topics, these are the ones installed packages offer)
PRESET_TOPICS: dict[str, tuple[str, ...]] = {
    "seed-run-2": ("fortran", "spanish", "medical", "gibberish"),
    "seed-run-1": ("fortran", "c_code", "python_code", "spanish", "french", "german",
                   "medical", "legal", "gibberish"),
}
PRESET_SHAPE = {"seed-run-2": (10, 400), "seed-run-1": (5, 200)}   # texts, max chars

_SETS, _TRAIN = 0, 1   # random streams: concept sets vs training corpus


def _site_packages() -> Path:
    return Path(np.__file__).resolve().parents[1]


def _clip_lines(text: str, max_chars: int) -> str:
    """The first whole lines of ``text`` that fit ``max_chars`` (at least one line,
    cut at a space when that line alone is longer)."""
    out, n = [], 0
    for line in text.splitlines():
        if n + len(line) + 1 > max_chars and out:
            break
        out.append(line)
        n += len(line) + 1
    text = "\n".join(out).strip("\n")
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0]
    return text


# ----------------------------------------------------------------------------- Fortran
@lru_cache(maxsize=1)
def _fortran_files() -> tuple[Path, ...]:
    root = _site_packages() / "numpy" / "f2py" / "tests" / "src"
    files = sorted(p for p in root.rglob("*") if p.suffix in (".f", ".f90", ".f77"))
    if not files:
        raise ConfigError(f"no Fortran sources under {root}; numpy's f2py test sources are "
                          "needed for the 'fortran' set (reinstall numpy).")
    return tuple(files)


def _fortran(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
    big = [p for p in _fortran_files() if p.stat().st_size >= 300]
    rng_sets = np.random.default_rng(0)   # the set files are the same for every seed
    set_files = [big[i] for i in sorted(rng_sets.permutation(len(big))[:10])]
    if split == _SETS:
        pool = set_files + [p for p in big if p not in set_files]
        pick = pool[:n] if n <= len(pool) else [pool[i % len(pool)] for i in range(n)]
        return [_clip_lines(p.read_text(errors="replace"), max_chars) for p in pick]
    heads = {p.read_text(errors="replace")[:200] for p in set_files}   # and their copies
    pool = [p for p in _fortran_files() if p.read_text(errors="replace")[:200] not in heads]
    order = rng.permutation(len(pool))
    return [pool[i].read_text(errors="replace") for i in order[:n]] if n else \
        [pool[i].read_text(errors="replace") for i in order]


# ----------------------------------------------------------------------------- faker
def _faker(locale: str, seed: int):
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


def _spanish(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
    fake = _faker("es_ES", int(rng.integers(2 ** 31)))
    texts = []
    for _ in range(n):
        lines: list[str] = []
        while sum(len(x) + 1 for x in lines) < max_chars:
            words = fake.words(nb=int(rng.integers(4, 9)))
            line = " ".join(words).capitalize()
            end = "." if len(lines) % 4 == 3 else ("," if rng.random() < 0.5 else "")
            lines.append(line + end)
            if len(lines) % 4 == 0:
                lines.append("")
        texts.append(_clip_lines("\n".join(lines), max_chars))
    return texts


def _lorem(locale: str) -> Callable[..., list[str]]:
    def make(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
        fake = _faker(locale, int(rng.integers(2 ** 31)))
        out = []
        for _ in range(n):
            text = fake.sentence(nb_words=int(rng.integers(6, 14)))
            while True:   # whole sentences only
                nxt = fake.sentence(nb_words=int(rng.integers(6, 14)))
                if len(text) + 1 + len(nxt) > max_chars:
                    break
                text += " " + nxt
            out.append(_clip_lines(text, max_chars))
        return out
    return make


# ----------------------------------------------------------------------------- medical
def _descr(name: str) -> str:
    root = _site_packages() / "sklearn" / "datasets" / "descr"
    return (root / f"{name}.rst").read_text()


def _prose_sentences(text: str) -> list[str]:
    """Sentences of the plain paragraphs of an RST description (no tables, fields,
    headings, links or references)."""
    paras, keep = [], []
    for block in re.split(r"\n\s*\n", text):
        b = block.strip()
        if (not b or b.startswith((":", "..", "=", "-", "**", "http", "ftp", "cd ", "[",
                                   "The actual", "Source", "(http", "For more")) or
                re.match(r"^[A-Z].*\n[-=]+$", b) or "dropdown" in b):
            continue
        paras.append(" ".join(b.split()))
    for p in paras:
        p = re.sub(r"\[[^\]]*\]", "", p)
        keep += [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", p)
                 if len(s.split()) >= 6 and not s.rstrip().endswith(":")]
    return keep


@lru_cache(maxsize=1)
def _medical_material() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(prose sentences, attribute sentences, case reports) from the two DESCRs/tables."""
    from sklearn.datasets import load_breast_cancer, load_diabetes

    prose = _prose_sentences(_descr("breast_cancer")) + _prose_sentences(_descr("diabetes"))
    attrs = []
    for line in _descr("breast_cancer").splitlines():
        m = re.match(r"\s+- ([a-z ]+) \((.+)\)$", line)
        if m:
            attrs.append(f"The {m.group(1)} of a cell nucleus is the {m.group(2)}.")
    for line in _descr("diabetes").splitlines():
        m = re.match(r"\s+- (\w+)\s+(\w.+)$", line)
        if m:
            attrs.append(f"The variable {m.group(1)} records the {m.group(2).split(', ')[-1]}"
                         " of the patient.")
    cases = []
    bc = load_breast_cancer()
    names = list(bc.feature_names)
    for row, target in zip(bc.data, bc.target):
        diag = bc.target_names[target]
        cases.append(
            f"A fine needle aspirate of a breast mass showed cell nuclei with a mean radius "
            f"of {row[names.index('mean radius')]:.2f}, a mean texture of "
            f"{row[names.index('mean texture')]:.2f} and a mean concavity of "
            f"{row[names.index('mean concavity')]:.3f}. The tumour was diagnosed as {diag}.")
    db = load_diabetes(scaled=False)
    for row, target in zip(db.data, db.target):
        sex = "a man" if row[1] > 1.5 else "a woman"
        cases.append(
            f"The patient, {sex} of {int(row[0])} years, had a body mass index of "
            f"{row[2]:.1f}, an average blood pressure of {row[3]:.0f} and a blood sugar "
            f"level of {row[9]:.0f}. Disease progression after one year was {target:.0f}.")
    return tuple(prose), tuple(attrs), tuple(cases)


def _medical(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
    prose, attrs, cases = _medical_material()
    half = len(cases) // 2   # case reports: sets draw from one half, training the other
    idx = rng.permutation(half) + (0 if split == _SETS else half)
    texts, k = [], 0
    if max_chars < 300:   # "sentences" (the seed's first run): one item each
        items = [x for trio in zip(prose, attrs, [cases[j] for j in idx]) for x in trio]
        return [_clip_lines(items[i % len(items)], max_chars) for i in range(n)]
    for i in range(n):
        parts = [prose[i % len(prose)], attrs[(3 * i) % len(attrs)]]
        while True:   # whole sentences only
            case = cases[idx[k % len(idx)]]
            if sum(len(p) + 1 for p in parts) + len(case) > max_chars:
                break
            parts.append(case)
            k += 1
        texts.append(_clip_lines(" ".join(parts), max_chars))
    return texts


# ----------------------------------------------------------------------------- the rest
def _gibberish(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for _ in range(n):
        words, length = [], 0
        while length < max_chars:
            w = "".join(rng.choice(letters, size=int(rng.integers(2, 10))))
            words.append(w + ("\n" if rng.random() < 0.08 else " "))
            length += len(w) + 1
        out.append(_clip_lines("".join(words).strip(), max_chars))
    return out


def _files_texts(files: Sequence[Path], n: int, rng: np.random.Generator, max_chars: int,
                 split: int, start: str | None = None) -> list[str]:
    """Chunks of text files: sets from the even-numbered files, training from the odd."""
    files = [f for i, f in enumerate(files) if i % 2 == split] or list(files)
    out: list[str] = []
    order = rng.permutation(len(files))
    for i in range(max(n, 1) * 4):
        if len(out) >= n:
            break
        text = files[order[i % len(files)]].read_text(errors="replace")
        lines = text.splitlines()
        begins = [j for j, ln in enumerate(lines) if start is None or ln.startswith(start)]
        if not begins:
            continue
        j = begins[int(rng.integers(len(begins)))]
        chunk = _clip_lines("\n".join(lines[j:j + 80]), max_chars).strip("\n")
        if len(chunk) >= max_chars // 3:
            out.append(chunk)
    return out


def _c_code(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
    files = sorted(p for p in (_site_packages() / "numpy").rglob("*.c") if p.stat().st_size > 500)
    return _files_texts(files, n, rng, max_chars, split)


def _python_code(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
    lib = Path(re.__file__).resolve().parent.parent
    files = sorted(p for p in lib.glob("*.py") if p.stat().st_size > 2000)
    return _files_texts(files, n, rng, max_chars, split, start="def ")


def _legal(n: int, rng: np.random.Generator, max_chars: int, split: int) -> list[str]:
    files = sorted(p for p in _site_packages().glob("*.dist-info/**/LICENSE*")
                   if p.is_file() and p.stat().st_size > 800)
    out = []
    for text in _files_texts(files, n * 3, rng, max_chars * 4, split):
        prose = " ".join(s for s in _prose_sentences(text) if not s.startswith("Copyright"))
        if len(prose) > max_chars // 2:
            out.append(_clip_lines(prose, max_chars))
    return out[:n]


#: topic name -> generator ``(n, rng, max_chars, split) -> texts``
TOPICS: dict[str, Callable[..., list[str]]] = {
    "fortran": _fortran, "spanish": _spanish, "medical": _medical, "gibberish": _gibberish,
    "c_code": _c_code, "python_code": _python_code, "french": _lorem("fr_FR"),
    "german": _lorem("de_DE"), "legal": _legal,
}


def _rng(seed: int, topic: str, split: int) -> np.random.Generator:
    key = sum(ord(c) * 31 ** i for i, c in enumerate(topic)) % 2 ** 31
    return np.random.default_rng([int(seed), key, split])


def topic_texts(topic: str, n: int, max_chars: int = 600, seed: int = 0,
                split: str = "sets") -> list[str]:
    """``n`` texts of ``topic`` (see ``TOPICS``), each at most ``max_chars`` characters;
    ``split="train"`` draws from the training material instead of the sets'."""
    if topic not in TOPICS:
        from polysdk.errors import closest_names

        raise ConfigError(f"unknown topic {topic!r}; closest: "
                          f"{closest_names(topic, list(TOPICS))}. Topics: {list(TOPICS)}.")
    s = _SETS if split == "sets" else _TRAIN
    return TOPICS[topic](int(n), _rng(seed, topic, s), int(max_chars), s)


@dataclass(frozen=True)
class ConceptCorpus:
    """Named concept sets: ``sets`` {name: [text, ...]}, ``sources`` {name: where from}."""

    sets: dict[str, list[str]]
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sets:
            raise ConfigError("a ConceptCorpus needs at least one set {name: [texts]}.")
        for name, texts in self.sets.items():
            if isinstance(texts, str) or not list(texts):
                raise ConfigError(f"concept set {name!r} has no texts; give it a list of at "
                                  "least one text, or drop it.")

    @property
    def names(self) -> list[str]:
        return list(self.sets)

    def flat(self) -> tuple[list[str], list[str]]:
        """(texts, set name of each text), sets in order."""
        texts, labels = [], []
        for name, items in self.sets.items():
            texts += list(items)
            labels += [name] * len(items)
        return texts, labels

    def scaled(self, factor: int) -> ConceptCorpus:
        """Each set repeated ``factor`` times (benchmarks: the corpus at 10x)."""
        return ConceptCorpus({k: list(v) * int(factor) for k, v in self.sets.items()},
                             dict(self.sources))


def concept_sets(preset: str = "seed-run-2", n_texts: int | None = None,
                 max_chars: int | None = None, seed: int = 0,
                 topics: Sequence[str] | None = None) -> ConceptCorpus:
    """The concept sets of a preset (``PRESET_TOPICS``): seed-run-2 gives 10 texts of up
    to 400 characters per set, seed-run-1 gives 5 "sentences" of up to 200."""
    if preset not in PRESET_TOPICS:
        raise ConfigError(f"unknown corpus preset {preset!r}; use one of "
                          f"{list(PRESET_TOPICS)}.")
    n0, c0 = PRESET_SHAPE[preset]
    names = tuple(topics) if topics else PRESET_TOPICS[preset]
    n = n0 if n_texts is None else int(n_texts)
    chars = c0 if max_chars is None else int(max_chars)
    sets = {t: topic_texts(t, n, chars, seed) for t in names}
    return ConceptCorpus(sets, {t: SOURCES[t] for t in names})


def training_corpus(topics: Sequence[str] | None = None, chars_per_topic: int = 200_000,
                    seed: int = 0, doc_chars: int = 1200) -> list[str]:
    """Documents for training the twins: every topic (default: all of ``TOPICS``) up to
    about ``chars_per_topic`` characters, in documents of up to ``doc_chars``,
    interleaved in a seeded order. Drawn from the training split (held out from the
    concept sets, see the module docstring)."""
    topics = list(topics or TOPICS)
    docs: list[str] = []
    for t in topics:
        got, k = [], 0
        while sum(len(d) for d in got) < chars_per_topic and k < 50:
            batch = topic_texts(t, 64, doc_chars, seed * 1000 + k, split="train")
            if t == "fortran":   # whole files, cut into documents
                batch = [_clip_lines(d, doc_chars) for d in batch]
            got += [d for d in batch if d.strip()]
            k += 1
        docs += got
    order = np.random.default_rng([seed, 7]).permutation(len(docs))
    return [docs[i] for i in order]


def _main() -> None:   # python -m polysdk.data.corpora: print a sample of each topic
    for t in TOPICS:
        print(f"== {t}: {SOURCES[t]}\n{topic_texts(t, 1, 200)[0]}\n")


if __name__ == "__main__":  # pragma: no cover
    _main()
    sys.exit(0)
