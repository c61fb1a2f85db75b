"""Named-entity data for the relearning study (seed 004): generated or CoNLL-style.

    from polysdk.data.ner import make_faker_ner, load_ner_dataset, encode_split, batches
    data = make_faker_ner(n_train=600, n_val=200, n_test=200, seed=0)   # offline
    data = load_ner_dataset("path/to/conll2003")      # datasets: save_to_disk folder,
                                                      # json/csv/parquet files, or a hub name
    data["train"].words[0], data["train"].tags[0]     # words and their BIO tags
    enc = encode_split(data["validation"], tokenizer, data.label_names)
    for batch in batches(enc, 16):                     # dynamically padded dicts
        model(**batch)                                 # input_ids, attention_mask, labels

:func:`make_faker_ner` writes English sentences from about forty templates filled
with ``faker`` names, places, companies and dates of several locales (people,
locations, organisations, dates: tags ``PER``, ``LOC``, ``ORG``, ``DATE``). The
templates make a model read context: the same city is ``LOC`` in "flew to Valladolid"
and ``ORG`` in "Valladolid beat Zerbst 2 - 1" (a sports team, as CoNLL-2003 tags it);
a surname is ``PER`` alone and part of an ``ORG`` in "Lachmann Group"; "University of
Zerbst" is an organisation. Tags are BIO over words; :func:`encode_split` aligns them
to word pieces (the first piece of a word carries its tag, the others ``-100``) and
keeps each text's ``word_ids`` for word-level readings. The split is fixed by the seed
(and the ``faker`` version, recorded in :attr:`NerData.source`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polysdk.errors import ConfigError

__all__ = ["NerSplit", "NerData", "DEFAULT_LOCALES", "CONCEPT_TAGS", "concept_tag",
           "make_faker_ner", "load_ner_dataset", "encode_split", "batches", "word_types"]

DEFAULT_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train", "training"),
                  "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing")}
#: concept names the study takes -> entity types (tag suffixes)
CONCEPT_TAGS = {"location": "LOC", "person": "PER", "organisation": "ORG",
                "organization": "ORG", "date": "DATE", "misc": "MISC"}


def concept_tag(concept: str, label_names: Sequence[str] | None = None) -> str:
    """The entity type of ``concept`` ("location" -> "LOC"; "LOC" itself is accepted).

    >>> concept_tag("location"), concept_tag("PER")
    ('LOC', 'PER')
    """
    key = str(concept).strip()
    tag = CONCEPT_TAGS.get(key.lower(), key.upper())
    if label_names is not None:
        types = entity_types(label_names)
        if tag not in types:
            known = [c for c, t in CONCEPT_TAGS.items() if t in types]
            raise ConfigError(
                f"concept={concept!r} (entity type {tag!r}) has no tag in this data: its "
                f"entity types are {types}; choose one of {known or types}.")
    return tag


def entity_types(label_names: Sequence[str]) -> list[str]:
    """Entity types of a BIO label list, in first-appearance order."""
    out: list[str] = []
    for name in label_names:
        if name != "O" and "-" in name:
            t = name.split("-", 1)[1]
            if t not in out:
                out.append(t)
    return out


def word_types(tags: Sequence[str]) -> list[str]:
    """Each word's entity type (``"O"`` outside entities).

    >>> word_types(["B-PER", "I-PER", "O", "B-LOC"])
    ['PER', 'PER', 'O', 'LOC']
    """
    return [t.split("-", 1)[1] if "-" in t else "O" for t in tags]


@dataclass(frozen=True)
class NerSplit:
    """One split: ``words`` (list of word lists) and their BIO ``tags``."""

    words: list[list[str]]
    tags: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.words) != len(self.tags):
            raise ConfigError(f"{len(self.words)} texts but {len(self.tags)} tag lists.")
        for i, (w, t) in enumerate(zip(self.words, self.tags)):
            if len(w) != len(t):
                raise ConfigError(f"text {i} has {len(w)} words but {len(t)} tags: "
                                  f"{w[:8]} / {t[:8]}.")

    def __len__(self) -> int:
        return len(self.words)

    @property
    def n_words(self) -> int:
        return sum(len(w) for w in self.words)

    def count(self, entity_type: str) -> int:
        """Words of ``entity_type`` in the split."""
        return sum(t == entity_type for tags in self.tags for t in word_types(tags))


@dataclass(frozen=True)
class NerData:
    """Splits ``train``/``validation``/``test``, the BIO ``label_names`` ("O" first) and
    where the data came from (``source``, JSON-able)."""

    splits: dict[str, NerSplit]
    label_names: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> NerSplit:
        if split not in self.splits:
            raise ConfigError(f"no split {split!r}; the data has {list(self.splits)}.")
        return self.splits[split]

    @property
    def entity_types(self) -> list[str]:
        return entity_types(self.label_names)

    def save(self, folder: str | Path) -> Path:
        """Write ``<split>.jsonl`` (``{"tokens": [...], "ner_tags": [...]}`` per line)
        and ``labels.json``; :func:`load_ner_dataset` reads the folder back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, split in self.splits.items():
            lines = (json.dumps({"tokens": w, "ner_tags": t}, ensure_ascii=False)
                     for w, t in zip(split.words, split.tags))
            (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / "labels.json").write_text(json.dumps(
            {"label_names": list(self.label_names), "source": self.source}, indent=1))
        return folder


# ----------------------------------------------------------------------------- faker
_WORD = re.compile(r"[^\W_]+(?:['’.\-&][^\W_]+)*\.?|&|[^\w\s]", re.UNICODE)
_JOBS = ["engineer", "teacher", "lawyer", "nurse", "chef", "pilot", "architect",
         "accountant", "journalist", "designer", "chemist", "banker"]
_NOUNS = ["meeting", "report", "project", "festival", "match", "strike", "election"]

#: templates: {PER} person, {LAST} surname alone (PER), {LOC} place, {ORG} company,
#: {TEAM} a city as a sports team (ORG), {UNI} "University of <city>" (ORG),
#: {FIRM} "<surname> Group" (ORG), {DATE} a date, {JOB}/{NOUN} plain words (O)
TEMPLATES = [
    "{PER} was born in {LOC} on {DATE} .",
    "{PER} moved from {LOC} to {LOC} in {DATE} .",
    "{PER} works for {ORG} in {LOC} .",
    "{ORG} opened a new office in {LOC} on {DATE} .",
    "{ORG} hired {PER} as its new {JOB} .",
    "Shares of {ORG} fell after {PER} resigned on {DATE} .",
    "The mayor of {LOC} , {PER} , met executives from {ORG} .",
    "According to {PER} , the weather in {LOC} was terrible .",
    "{LOC} is the home of {ORG} .",
    "Flights between {LOC} and {LOC} were cancelled on {DATE} .",
    "{PER} said that {ORG} would invest in {LOC} .",
    "{PER} and {PER} visited {LOC} last week .",
    "We met {PER} at the {ORG} conference .",
    "On {DATE} , {ORG} announced record profits .",
    "{PER} , a {JOB} from {LOC} , joined {ORG} .",
    "The team travelled to {LOC} .",
    "Nothing unusual happened on {DATE} .",
    "I spoke to {LAST} yesterday about the {NOUN} .",
    "{LAST} told reporters in {LOC} that the {NOUN} was over .",
    "{FIRM} signed a deal with {ORG} on {DATE} .",
    "{LAST} founded {FIRM} in {LOC} .",
    "She bought a ticket to {LOC} for {DATE} .",
    "The {JOB} from {LOC} spoke about {ORG} .",
    "The {NOUN} was postponed again .",
    "Prices rose sharply this year .",
    "{TEAM} beat {TEAM} 2 - 1 on {DATE} .",
    "{TEAM} lost at home to {TEAM} .",
    "Fans of {TEAM} celebrated in {LOC} .",
    "{PER} scored twice for {TEAM} .",
    "{PER} studied at the {UNI} before moving to {LOC} .",
    "The {UNI} and {ORG} will build a lab in {LOC} .",
    "Researchers at the {UNI} published the report on {DATE} .",
    "{PER} left {LOC} for good .",
    "Police in {LOC} questioned {PER} on {DATE} .",
    "{ORG} denied that {PER} had been fired .",
    "A {NOUN} in {LOC} drew thousands on {DATE} .",
    "Talks between {ORG} and {ORG} broke down .",
    "{PER} , who runs {ORG} , lives near {LOC} .",
    "The {NOUN} in {LOC} ended on {DATE} .",
    "Dr. {LAST} will speak in {LOC} .",
    "In {DATE} {PER} took over {FIRM} .",
    "Visitors to {LOC} rarely see {PER} .",
]


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


class _Filler:
    """Entity strings from one seeded Faker per locale, chosen by a NumPy generator."""

    def __init__(self, locales: Sequence[str], seed: int) -> None:
        from faker import Faker

        self.rng = np.random.default_rng(seed)
        self.fakers = []
        for i, loc in enumerate(locales):
            try:
                f = Faker(loc)
            except AttributeError as err:
                raise ConfigError(f"faker has no locale {loc!r}; use e.g. "
                                  f"{list(DEFAULT_LOCALES)}.") from err
            f.seed_instance(int(seed) * 1000 + i)
            for provider in f.providers:
                # faker's it_IT builds its city list from a set: its order (and so the
                # city a seed gives) changed with PYTHONHASHSEED; sorted, it does not
                cities = getattr(provider, "cities", None)
                if isinstance(cities, list):
                    provider.cities = sorted(cities)
            self.fakers.append(f)

    def fake(self) -> Any:
        return self.fakers[int(self.rng.integers(len(self.fakers)))]

    def pick(self, items: Sequence[str]) -> str:
        return items[int(self.rng.integers(len(items)))]

    def entity(self, slot: str) -> tuple[str, str]:
        f = self.fake()
        r = self.rng.random()
        if slot == "PER":
            text = f.last_name() if r < 0.1 else f"{f.first_name()} {f.last_name()}"
            return text, "PER"
        if slot == "LAST":
            return f.last_name(), "PER"
        if slot == "LOC":
            if r < 0.6:
                return f.city(), "LOC"
            if r < 0.85 or not hasattr(f, "state"):
                return f.country(), "LOC"
            return f.state(), "LOC"
        if slot == "ORG":
            return f.company(), "ORG"
        if slot == "TEAM":
            return f.city(), "ORG"
        if slot == "UNI":
            return f"University of {f.city()}", "ORG"
        if slot == "FIRM":
            return f"{f.last_name()} {self.pick(['Group', 'Holdings', 'Partners'])}", "ORG"
        if slot == "DATE":
            d = f.date_object()
            month = f.month_name()
            kinds = [f"{d.day} {month} {d.year}", f"{month} {d.day} , {d.year}",
                     f"{month} {d.year}", str(d.year), f.day_of_week()]
            return kinds[int(self.rng.integers(len(kinds)))], "DATE"
        if slot == "JOB":
            return self.pick(_JOBS), "O"
        if slot == "NOUN":
            return self.pick(_NOUNS), "O"
        raise ConfigError(f"unknown template slot {{{slot}}}")


_SLOT = re.compile(r"^\{([A-Z]+)\}$")


def _sentence(filler: _Filler, template: str) -> tuple[list[str], list[str]]:
    words: list[str] = []
    tags: list[str] = []
    for piece in template.split():
        m = _SLOT.match(piece)
        if m is None:
            words.append(piece)
            tags.append("O")
            continue
        text, etype = filler.entity(m.group(1))
        ws = _words(text) or [text]
        words += ws
        tags += ["O"] * len(ws) if etype == "O" else \
            [f"B-{etype}"] + [f"I-{etype}"] * (len(ws) - 1)
    return words, tags


def make_faker_ner(n_train: int = 2000, n_val: int = 300, n_test: int = 300, seed: int = 0,
                   locales: Sequence[str] = DEFAULT_LOCALES) -> NerData:
    """Generated NER sentences (see the module docstring), split train/validation/test.

    >>> data = make_faker_ner(8, 2, 2, seed=1)
    >>> len(data["train"]), data.label_names[:3], data.entity_types
    (8, ('O', 'B-PER', 'I-PER'), ['PER', 'LOC', 'ORG', 'DATE'])
    """
    import faker

    sizes = {"train": int(n_train), "validation": int(n_val), "test": int(n_test)}
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        raise ConfigError(f"every split needs at least one sentence; got {bad}.")
    if not locales:
        raise ConfigError("locales= is empty; give at least one faker locale, e.g. 'en_US'.")
    filler = _Filler(list(locales), seed)
    # each template equally often, in a seeded order; then a seeded split
    total = sum(sizes.values())
    order = np.resize(np.arange(len(TEMPLATES)), total)
    filler.rng.shuffle(order)
    texts = [_sentence(filler, TEMPLATES[int(i)]) for i in order]
    splits, start = {}, 0
    for name, n in sizes.items():
        part = texts[start:start + n]
        start += n
        splits[name] = NerSplit([w for w, _ in part], [t for _, t in part])
    labels = ("O",) + tuple(f"{p}-{t}" for t in ("PER", "LOC", "ORG", "DATE") for p in "BI")
    return NerData(splits, labels, {"kind": "faker", "seed": int(seed),
                                    "locales": list(locales), "faker": faker.VERSION,
                                    "sizes": sizes, "templates": len(TEMPLATES)})


# ----------------------------------------------------------------------------- datasets
def _find_split(available: Sequence[str], name: str) -> str | None:
    for alias in _SPLIT_ALIASES[name]:
        if alias in available:
            return alias
    return None


def _open_datasets(source: str) -> Any:
    import datasets

    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        by_ext: dict[str, dict[str, str]] = {}
        for p in files:
            ext = {".jsonl": "json", ".json": "json", ".csv": "csv",
                   ".parquet": "parquet"}.get(p.suffix)
            if ext is None:
                continue
            stem = p.stem.lower()
            for name, aliases in _SPLIT_ALIASES.items():
                if stem in aliases:
                    by_ext.setdefault(ext, {})[name] = str(p)
        if not by_ext:
            raise ConfigError(
                f"{source!r} holds no train/validation/test .jsonl/.json/.csv/.parquet files "
                "and no datasets save_to_disk folder; write e.g. train.jsonl, "
                "validation.jsonl, test.jsonl with 'tokens' and 'ner_tags' columns.")
        ext, data_files = max(by_ext.items(), key=lambda kv: len(kv[1]))
        return datasets.load_dataset(ext, data_files=data_files)
    try:
        return datasets.load_dataset(source)
    except Exception as err:   # network, unknown name
        raise ConfigError(f"could not load the dataset {source!r} ({type(err).__name__}: "
                          f"{err}); pass a local folder (datasets save_to_disk, or "
                          "train/validation/test files) or a reachable hub name.") from err


def load_ner_dataset(source: str | Path, *, tokens_column: str = "tokens",
                     tags_column: str = "ner_tags",
                     label_names: Sequence[str] | None = None) -> NerData:
    """CoNLL-style data through ``datasets``: a ``save_to_disk`` folder, a folder of
    ``train``/``validation``/``test`` json(l)/csv/parquet files, or a hub name such as
    ``"conll2003"`` (network). Tags may be strings, or integers with a ``ClassLabel``
    feature (CoNLL-2003 on the hub) or with ``label_names``.

    Raises ConfigError naming the missing columns or splits, and what is there.
    """
    dd = _open_datasets(str(source))
    available = list(dd.keys())
    names = {s: _find_split(available, s) for s in SPLITS}
    missing = [s for s, n in names.items() if n is None]
    if missing:
        raise ConfigError(f"the dataset {str(source)!r} lacks the split(s) {missing}; it has "
                          f"{available} (accepted names: "
                          f"{ {s: list(_SPLIT_ALIASES[s]) for s in missing} }).")
    names_from_feature: list[str] | None = None
    raw: dict[str, tuple[list, list]] = {}
    for split, key in names.items():
        ds = dd[key]
        cols = list(ds.column_names)
        lack = [c for c in (tokens_column, tags_column) if c not in cols]
        if lack:
            raise ConfigError(
                f"the {key!r} split of {str(source)!r} has no column(s) {lack}; its columns "
                f"are {cols}. Name yours with tokens_column= / tags_column= (the study's "
                "data_tokens_column / data_tags_column).")
        feat = ds.features.get(tags_column)
        inner = getattr(feat, "feature", None)
        if names_from_feature is None and hasattr(inner, "names"):
            names_from_feature = list(inner.names)
        raw[split] = (list(ds[tokens_column]), list(ds[tags_column]))
    label_list = list(label_names) if label_names is not None else names_from_feature
    splits = {}
    for split, (words, tags) in raw.items():
        str_tags = []
        for i, t in enumerate(tags):
            if t and not isinstance(t[0], str):
                if label_list is None:
                    raise ConfigError(
                        f"column {tags_column!r} holds integers with no ClassLabel names; "
                        "pass label_names=[...] (e.g. CoNLL-2003's ['O', 'B-PER', 'I-PER', "
                        "'B-ORG', 'I-ORG', 'B-LOC', 'I-LOC', 'B-MISC', 'I-MISC']).")
                try:
                    t = [label_list[int(x)] for x in t]
                except IndexError:
                    raise ConfigError(f"text {i} of {split!r} has tag ids {list(t)} beyond the "
                                      f"{len(label_list)} label names {label_list}.") from None
            str_tags.append([str(x) for x in t])
        splits[split] = NerSplit([[str(w) for w in ws] for ws in words], str_tags)
    if label_list is None:
        seen = sorted({t for s in splits.values() for tags in s.tags for t in tags} - {"O"},
                      key=lambda t: (t.split("-", 1)[-1], t))
        label_list = ["O", *seen]
    bad = sorted({t for s in splits.values() for tags in s.tags for t in tags}
                 - set(label_list))
    if bad:
        raise ConfigError(f"tags {bad} are not among the label names {label_list}.")
    return NerData(splits, tuple(label_list), {"kind": "datasets", "source": str(source),
                                               "tokens_column": tokens_column,
                                               "tags_column": tags_column})


# ----------------------------------------------------------------------------- encoding
def encode_split(split: NerSplit, tokenizer: Any, label_names: Sequence[str],
                 max_length: int = 128) -> list[dict[str, Any]]:
    """Tokenise each text's words; the first piece of a word carries its tag id, the
    other pieces and the special tokens ``-100``. Each item: ``input_ids``, ``labels``,
    ``word_ids`` (per piece; -1 for special tokens) and ``n_words``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; word pieces "
                          "are mapped to words through word_ids(), which needs one "
                          "(AutoTokenizer.from_pretrained(..., use_fast=True)).")
    index = {n: i for i, n in enumerate(label_names)}
    enc = tokenizer(split.words, is_split_into_words=True, truncation=True,
                    max_length=int(max_length))
    out = []
    for i, tags in enumerate(split.tags):
        wids = enc.word_ids(i)
        labels, prev = [], None
        for w in wids:
            labels.append(-100 if w is None or w == prev else index[tags[w]])
            prev = w
        out.append({"input_ids": list(enc["input_ids"][i]), "labels": labels,
                    "word_ids": [-1 if w is None else int(w) for w in wids],
                    "n_words": len(tags)})
    return out


def batches(encoded: Sequence[Mapping[str, Any]], batch_size: int, *, pad_id: int = 0,
            rng: np.random.Generator | None = None, with_labels: bool = True
            ) -> Iterator[dict[str, Any]]:
    """Dynamically padded batches (each to its own longest text) of ``encode_split``
    items, shuffled by ``rng`` when given: dicts of ``input_ids``, ``attention_mask``
    and ``labels`` tensors."""
    import torch

    order = np.arange(len(encoded))
    if rng is not None:
        rng.shuffle(order)
    for s in range(0, len(order), int(batch_size)):
        items = [encoded[int(i)] for i in order[s:s + int(batch_size)]]
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        for j, it in enumerate(items):
            k = len(it["input_ids"])
            ids[j, :k] = torch.as_tensor(it["input_ids"])
            mask[j, :k] = 1
            labels[j, :k] = torch.as_tensor(it["labels"])
        batch = {"input_ids": ids, "attention_mask": mask}
        if with_labels:
            batch["labels"] = labels
        yield batch
