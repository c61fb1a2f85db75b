"""Corpora from installed packages (seed 003's concept sets) and the twins' tokenizer."""

from __future__ import annotations

import pytest

from polysdk.data.corpora import (PRESET_TOPICS, SOURCES, ConceptCorpus, concept_sets,
                                  topic_texts, training_corpus)
from polysdk.data.tokenizer import tokenizer_from_json, train_tokenizer
from polysdk.errors import ConfigError


@pytest.fixture(scope="module")
def run2() -> ConceptCorpus:
    return concept_sets("seed-run-2")


def test_seed_run_2_has_four_sets_of_ten_distinct_texts(run2):
    assert run2.names == ["fortran", "spanish", "medical", "gibberish"]
    for name, texts in run2.sets.items():
        assert len(texts) == 10 and len(set(texts)) == 10, name
        assert all(50 <= len(t) <= 400 for t in texts), (name, [len(t) for t in texts])
        assert run2.sources[name] == SOURCES[name]
    assert any("subroutine" in t or "function" in t for t in run2.sets["fortran"])
    assert any("ñ" in t or "á" in t or "é" in t for t in run2.sets["spanish"])
    assert all(any(w in t for w in ("cell", "patient", "breast", "diabetes"))
               for t in run2.sets["medical"])
    assert all(set(t) <= set("abcdefghijklmnopqrstuvwxyz \n") for t in run2.sets["gibberish"])


def test_seed_run_1_has_nine_topics_of_five_sentences():
    cs = concept_sets("seed-run-1")
    assert cs.names == list(PRESET_TOPICS["seed-run-1"]) and len(cs.names) == 9
    for name, texts in cs.sets.items():
        assert len(texts) == 5 and all(10 <= len(t) <= 200 for t in texts), name


def test_deterministic_and_seeded(run2):
    assert concept_sets("seed-run-2").sets == run2.sets
    other = concept_sets("seed-run-2", seed=1)
    assert other.sets["spanish"] != run2.sets["spanish"]
    assert other.sets["fortran"] == run2.sets["fortran"]   # the same held-out files


def test_training_corpus_holds_out_the_set_texts(run2):
    docs = training_corpus(["fortran", "spanish", "gibberish"], chars_per_topic=5000)
    joined = "\n".join(docs)
    assert sum(map(len, docs)) >= 15000
    for t in run2.sets["fortran"] + run2.sets["spanish"][:2]:
        assert t[:200] not in joined


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="'medical' has no texts"):
        ConceptCorpus({"fortran": ["x"], "medical": []})
    with pytest.raises(ConfigError, match="closest"):
        topic_texts("fortan", 1)
    with pytest.raises(ConfigError, match="seed-run-2"):
        concept_sets("run-3")


def test_tokenizer_round_trips_without_unknowns(run2):
    docs = training_corpus(chars_per_topic=3000)
    tok = train_tokenizer(docs, vocab_size=512)
    texts, _ = run2.flat()
    enc = tok(texts, padding=True, return_tensors="pt")
    assert enc["input_ids"][:, 0].eq(tok.bos_token_id).all()     # BOS first, like TL
    assert not enc["input_ids"].eq(tok.unk_token_id).any()
    ids = enc["input_ids"][5][enc["attention_mask"][5].bool()]
    assert tok.decode(ids, skip_special_tokens=True) == texts[5]
    assert enc["attention_mask"][:, -1].sum() < len(texts)      # right padding
    again = tokenizer_from_json(tok.backend_tokenizer.to_str())
    assert again(texts[:3])["input_ids"] == tok(texts[:3])["input_ids"]
